"""The `datacoffer` program: the server, the operator's `admin` commands, and the client.

Commands are imported when they run, so that `datacoffer ls` does not pay for loading the
server (SQLAlchemy, Starlette) and `datacoffer serve` not for the client.
"""

from __future__ import annotations

import importlib

import click

from datacoffer import __version__

#: command name -> ("module:attribute", one-line summary), in the order `--help` shows them
COMMANDS = {
    "serve": ("datacoffer.cli.serve:serve", "Run the server."),
    "admin": ("datacoffer.cli.admin:admin",
              "Operator commands on the data directory (accounts, keys, whitelist, status)."),
    "configure": ("datacoffer.cli.configure:configure",
                  "Save an endpoint and API key as a profile."),
    "mb": ("datacoffer.cli.coffers:make_coffer", "Make a coffer."),
    "rb": ("datacoffer.cli.coffers:remove_coffer", "Remove an empty coffer."),
    "ls": ("datacoffer.cli.coffers:list_command", "List coffers, or objects under a prefix."),
    "cp": ("datacoffer.cli.copy:copy",
           "Copy files to a coffer or objects to files (parallel, resumable, verified)."),
    "cat": ("datacoffer.cli.objects:cat", "Write an object to standard output."),
    "stat": ("datacoffer.cli.objects:stat", "Show an object's or a coffer's details."),
    "presign": ("datacoffer.cli.objects:presign",
                "Print a URL that works without credentials until it expires."),
    "uploads": ("datacoffer.cli.uploads:uploads", "List or abort multipart uploads in progress."),
    "policy": ("datacoffer.cli.policy:policy_group",
               "Show, replace or remove a coffer's policy (who else may use it)."),
    "lifecycle": ("datacoffer.cli.lifecycle:lifecycle_group",
                  "Show or set a coffer's lifecycle rule (when its objects expire)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[cmd_name][0].partition(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # the one-line summaries, without importing every command to read its docstring
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_, summary) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="datacoffer")
def cli() -> None:
    """Data Coffer: an immutable, encrypted, multi-region archive (CDCS API).

    \b
    Operators:  datacoffer serve, then datacoffer admin account create --app-id A --uin U
    Users:      datacoffer configure, then mb, ls, cp, cat, stat, presign, uploads, policy,
                lifecycle

    Client commands exit 0 on success, 1 on a server, network or checksum failure, 2 on a
    usage error or a request the server calls malformed, 3 on an authentication or permission
    refusal, 4 when the coffer, object or upload does not exist, 5 on a conflict (the key is
    taken, the coffer is not empty, a lock).
    """


def main() -> None:
    cli()
