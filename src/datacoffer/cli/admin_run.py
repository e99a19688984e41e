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
