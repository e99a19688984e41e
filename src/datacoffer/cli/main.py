"""The `datacoffer` program."""

from __future__ import annotations

import click

from datacoffer import __version__
from datacoffer.cli.admin import admin
from datacoffer.cli.serve import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="datacoffer")
def cli() -> None:
    """Data Coffer: an immutable, encrypted, multi-region archive (CDCS API).

    Start with `datacoffer serve`, then create an account with
    `datacoffer admin account create --app-id A --uin U`.
    """


cli.add_command(serve)
cli.add_command(admin)


def main() -> None:
    cli()
