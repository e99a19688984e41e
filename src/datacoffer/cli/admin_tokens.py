"""`datacoffer admin token …`: temporary credentials."""

from __future__ import annotations

import click

from datacoffer.cli.options import data_dir_option, emit, fail, installation
from datacoffer.core.policy import PolicyError
from datacoffer.core.tokens import DEFAULT_DURATION, MAX_DURATION, MIN_DURATION


@click.group()
def token() -> None:
    """Temporary credentials: a TmpSecretId, TmpSecretKey and Token that expire."""


@token.command("issue")
@click.option("--uin", required=True, help="The identity (account or sub-account) they act as.")
@click.option("--duration", type=click.IntRange(MIN_DURATION, MAX_DURATION),
              default=DEFAULT_DURATION, show_default=True,
              help=f"Seconds until they expire: {MIN_DURATION} (15 minutes) to {MAX_DURATION} "
                   "(36 hours).")
@click.option("--policy", "policy_file", type=click.File("rb"), default=None,
              help="An inline policy (JSON, the coffer policy language; Principal optional) "
                   "that narrows what they may do; '-' reads standard input.")
@data_dir_option
def issue(uin: str, duration: int, policy_file: click.utils.LazyFile | None,
          data_dir: str | None, config_file: str | None) -> None:
    """Issue temporary credentials; print {TmpSecretId, TmpSecretKey, Token, ExpiredTime}.

    Requests made with them carry the Token in the x-cdcs-security-token header (or query
    parameter). ExpiredTime is in Unix seconds. They can only narrow the identity's rights:
    with --policy, a request must be allowed by the inline policy too.

    \b
    Examples:
      datacoffer admin token issue --uin 100000000011 --duration 3600 > tmp.json
      datacoffer configure --profile tmp --credentials-json tmp.json
      datacoffer admin token issue --uin 100000000001 --policy read-only.json
    """
    inline = policy_file.read() if policy_file is not None else None
    with installation(data_dir, config_file) as inst:
        try:
            creds = inst.tokens.issue(uin, duration, inline, tuple(inst.settings.regions))
        except PolicyError as exc:
            fail(f"--policy: the inline policy is not valid: {exc}", 2)
    emit(creds.document())


@token.command("revoke")
@click.option("--tmp-secret-id", default=None, help="Revoke these credentials.")
@click.option("--uin", default=None, help="Revoke every temporary credential of this identity.")
@data_dir_option
def revoke(tmp_secret_id: str | None, uin: str | None, data_dir: str | None,
           config_file: str | None) -> None:
    """Revoke temporary credentials before they expire: requests made with them answer
    AuthFailed at once. Prints {"Revoked": N}: how many were valid until now.

    \b
    Examples:
      datacoffer admin token revoke --tmp-secret-id AKID...
      datacoffer admin token revoke --uin 100000000011
    """
    if (tmp_secret_id is None) == (uin is None):
        fail("give exactly one of --tmp-secret-id and --uin", 2)
    with installation(data_dir, config_file) as inst:
        count = inst.tokens.revoke(tmp_secret_id=tmp_secret_id, uin=uin)
    emit({"Revoked": count})


@token.command("list")
@click.option("--uin", required=True, help="The identity.")
@data_dir_option
def list_tokens(uin: str, data_dir: str | None, config_file: str | None) -> None:
    """List an identity's temporary credentials (never their secrets) with their state:
    valid, expired or revoked."""
    with installation(data_dir, config_file) as inst:
        emit(inst.tokens.listing(uin))
