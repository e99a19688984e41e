"""`datacoffer lifecycle get|put`: a coffer's lifecycle rule."""

from __future__ import annotations

import click

from datacoffer.cli.remote import Remote, RemoteType
from datacoffer.cli.session import Session, client_command
from datacoffer.core.lifecycle import MAX_DAYS, MIN_DAYS


@click.group("lifecycle")
def lifecycle_group() -> None:
    """Show or set a coffer's lifecycle rule: its objects expire DAYS after their upload.

    The rule is the only way objects ever leave a coffer. Putting a rule replaces the
    previous one; a rule cannot be removed, only replaced.

    \b
    Examples:
      datacoffer lifecycle put dc://reports-1250000000 --days 3650
      datacoffer lifecycle get dc://reports-1250000000
    """


@lifecycle_group.command("get")
@click.argument("coffer", type=RemoteType())
@client_command
def get(session: Session, coffer: Remote) -> None:
    """Show the coffer's rule (exit 4, NoSuchLifecycleConfiguration, when it has none).

    \b
    Example:
      datacoffer lifecycle get dc://reports-1250000000
    """
    name = coffer.only_coffer("lifecycle get")
    days = session.client.get_coffer_lifecycle(name)
    if session.json:
        session.emit({"Coffer": name, "Days": days})
    session.say(f"objects in {coffer} expire {days} days after their upload")


@lifecycle_group.command("put")
@click.argument("coffer", type=RemoteType())
@click.option("--days", required=True, type=click.IntRange(MIN_DAYS, MAX_DAYS),
              help=f"Days after its upload that an object expires ({MIN_DAYS}-{MAX_DAYS}).")
@client_command
def put(session: Session, coffer: Remote, days: int) -> None:
    """Set the coffer's rule, replacing the one it had.

    \b
    Example:
      datacoffer lifecycle put dc://reports-1250000000 --days 3650
    """
    name = coffer.only_coffer("lifecycle put")
    session.client.put_coffer_lifecycle(name, days)
    if session.json:
        session.emit({"Coffer": name, "Days": days})
    session.say(f"objects in {coffer} now expire {days} days after their upload")
