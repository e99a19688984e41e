"""`datacoffer admin run …`: one pass of a background worker, now."""

from __future__ import annotations

import click

from datacoffer.cli.options import data_dir_option, emit, fail, installation
from datacoffer.core.clock import iso8601, now_ms, parse_utc_ms


@click.group()
def run() -> None:
    """One pass of a background worker (`serve --no-background` runs none)."""


@run.command("lifecycle")
@click.option("--now", "as_of", default=None, metavar="ISO8601",
              help="Expire as of this UTC time (e.g. 2036-01-01T00:00:00Z) instead of the "
                   "clock's.")
@data_dir_option
def lifecycle(as_of: str | None, data_dir: str | None, config_file: str | None) -> None:
    """Expire every object whose coffer's lifecycle rule says its time has come: its files
    leave every region, its key is free again. Prints {"Now", "Expired", "Objects"}.

    \b
    Examples:
      datacoffer admin run lifecycle
      datacoffer admin run lifecycle --now 2036-01-01T00:00:00Z
    """
    try:
        moment = parse_utc_ms(as_of) if as_of is not None else now_ms()
    except ValueError as exc:
        fail(f"--now: {exc}", 2)
    with installation(data_dir, config_file) as inst:
        expired = inst.expiry.sweep(moment)
    emit({"Now": iso8601(moment), "Expired": len(expired),
          "Objects": [{"Coffer": e.coffer, "Key": e.key, "Size": e.size,
                       "Uploaded": iso8601(e.created_ms), "Due": iso8601(e.expired_ms)}
                      for e in expired]})


@run.command("replication")
@data_dir_option
def replication(data_dir: str | None, config_file: str | None) -> None:
    """Copy every object still owed to one of its coffer's regions, now: failed copies are
    tried again whatever their back-off. Prints {"Copied", "Failed", "Pending", "Copies",
    "Failures"}; "Pending" is what the queue still holds after the pass.

    \b
    Examples:
      datacoffer admin run replication
      datacoffer admin run replication --data-dir /srv/datacoffer
    """
    with installation(data_dir, config_file) as inst:
        done = inst.replication.run(due_only=False)
        lag = inst.replication.lag()
    emit({"Copied": len(done.copied), "Failed": len(done.failed), "Pending": lag.pending,
          "Copies": [{"Coffer": c.coffer, "Key": c.key, "Region": c.region, "Bytes": c.bytes}
                     for c in done.copied],
          "Failures": [{"Coffer": f.coffer, "Key": f.key, "Region": f.region,
                        "Error": f.error, "Attempts": f.attempts,
                        "NextAttempt": iso8601(f.retry_ms)} for f in done.failed]})


@run.command("scrub")
@data_dir_option
def scrub(data_dir: str | None, config_file: str | None) -> None:
    """Check every copy of every object against its SHA-256, at `scrub_rate` bytes a
    second, and repair a damaged or missing copy from a good region. Prints {"Objects",
    "Copies", "Bytes", "Skipped", "Findings"}; "Skipped" counts objects whose KMS key could
    not be used.

    \b
    Examples:
      datacoffer admin run scrub
      DATACOFFER_SCRUB_RATE=0 datacoffer admin run scrub    # as fast as the disks go
    """
    with installation(data_dir, config_file) as inst:
        done = inst.scrubber.run()
    emit({"Objects": done.objects, "Copies": done.copies, "Bytes": done.bytes,
          "Skipped": done.skipped,
          "Findings": [{"Coffer": f.coffer, "Key": f.key, "Region": f.region,
                        "Problem": f.problem, "Repaired": f.repaired}
                       for f in done.findings]})
