"""`datacoffer policy get|put|delete`: a coffer's policy."""

from __future__ import annotations

import click

from datacoffer.cli.remote import Remote, RemoteType
from datacoffer.cli.session import Session, client_command, usage
from datacoffer.core import policy as language
from datacoffer.errors import CdcsError
from datacoffer.names import split_coffer_name


@click.group("policy")
def policy_group() -> None:
    """Show, replace or remove a coffer's policy (the owner's root identity only).

    A policy grants sub-accounts and other accounts rights on the coffer; without one, only
    the owner's root identity may use it. The language is in docs/access-control.md.

    \b
    Examples:
      datacoffer policy get dc://reports-1250000000 > policy.json
      datacoffer policy put dc://reports-1250000000 policy.json
      datacoffer policy delete dc://reports-1250000000
    """


@policy_group.command("get")
@click.argument("coffer", type=RemoteType())
@client_command
def get(session: Session, coffer: Remote) -> None:
    """Print the coffer's policy (JSON; an empty statement list when none is set).

    \b
    Example:
      datacoffer policy get dc://reports-1250000000 > policy.json
    """
    session.emit(session.client.get_coffer_policy(coffer.only_coffer("policy get")))


@policy_group.command("put")
@click.argument("coffer", type=RemoteType())
@click.argument("file", type=click.File("rb"))
@client_command
def put(session: Session, coffer: Remote, file: click.utils.LazyFile) -> None:
    """Replace the coffer's policy with the JSON document in FILE ('-': standard input).

    The document is checked here first, as the server checks it, so a mistake is reported
    without a request; the server's own reason is printed if it still refuses.

    \b
    Example:
      datacoffer policy put dc://reports-1250000000 policy.json
    """
    name = coffer.only_coffer("policy put")
    raw = file.read()
    try:
        _, app_id = split_coffer_name(name)
    except CdcsError as exc:
        usage(exc.message)
    try:
        language.parse(raw, language.Scope(coffer=name, app_id=app_id))
    except language.PolicyError as exc:
        session.fail_locally("PolicyFormatCheckFailed",
                             f"{file.name}: the policy is not valid: {exc}", name)
    session.client.put_coffer_policy(name, raw)
    if session.json:
        session.emit({"Coffer": name, "Policy": "replaced"})
    session.say(f"replaced the policy of {coffer}")


@policy_group.command("delete")
@click.argument("coffer", type=RemoteType())
@client_command
def delete(session: Session, coffer: Remote) -> None:
    """Remove the coffer's policy: afterwards only the owner's root identity has rights.

    \b
    Example:
      datacoffer policy delete dc://reports-1250000000
    """
    name = coffer.only_coffer("policy delete")
    session.client.delete_coffer_policy(name)
    if session.json:
        session.emit({"Coffer": name, "Policy": "deleted"})
    session.say(f"deleted the policy of {coffer}")
