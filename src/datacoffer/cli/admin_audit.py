"""`datacoffer admin audit …`: checking and exporting the audit log."""

from __future__ import annotations

import json
import sys

import click

from datacoffer.cli.options import data_dir_option, emit, fail, installation
from datacoffer.core import audit as audit_log
from datacoffer.core.clock import iso8601, parse_utc_ms


@click.group()
def audit() -> None:
    """The audit log: every request that reached a coffer and every lifecycle deletion, in
    a hash chain."""


@audit.command("verify")
@data_dir_option
def verify(data_dir: str | None, config_file: str | None) -> None:
    """Check every link of the chain, from the first entry to the head. Prints {"Valid",
    "Entries", "Head", "FirstBroken"}; exits 1 when a link is broken ("FirstBroken" names
    the entry and what is wrong with it).

    \b
    Examples:
      datacoffer admin audit verify
      datacoffer admin audit verify --data-dir /srv/datacoffer
    """
    with installation(data_dir, config_file) as inst:
        verdict = audit_log.verify(inst.db)
    valid = verdict.broken_seq is None
    emit({"Valid": valid, "Entries": verdict.entries,
          "Head": {"Seq": verdict.head_seq, "Hash": verdict.head_hash},
          "FirstBroken": None if valid else {"Seq": verdict.broken_seq,
                                             "Reason": verdict.reason}})
    if not valid:
        sys.exit(1)


@audit.command("export")
@click.option("--since", default=None, metavar="ISO8601",
              help="Only entries from this UTC time on (e.g. 2026-11-01T00:00:00Z).")
@data_dir_option
def export(since: str | None, data_dir: str | None, config_file: str | None) -> None:
    """Print the entries as JSON lines, oldest first: {"Seq", "Time", "RequestId",
    "Identity", "Source", "Operation", "Resource", "Status", "Code", "PrevHash", "Hash"}.
    docs/operations.md says how to check the hashes of an export yourself.

    \b
    Examples:
      datacoffer admin audit export > audit.jsonl
      datacoffer admin audit export --since 2026-11-01T00:00:00Z | jq -c 'select(.Status >= 400)'
    """
    try:
        since_ms = parse_utc_ms(since) if since is not None else None
    except ValueError as exc:
        fail(f"--since: {exc}", 2)
    out = sys.stdout
    with installation(data_dir, config_file) as inst:
        for doc in audit_log.export(inst.db, since_ms):
            doc["Time"] = iso8601(doc["Time"])  # type: ignore[arg-type]
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")
    out.flush()
