"""`datacoffer configure`: write a profile of the profile file."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from datacoffer.cli.session import Session, client_command, usage
from datacoffer.client import Client, credentials


def _from_json(source: str) -> dict[str, str]:
    """Keys from the JSON that `admin account create`, `admin key create` or
    `admin token issue` print."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text("utf-8")
        doc = json.loads(text)
    except (OSError, ValueError) as exc:
        usage(f"--credentials-json: cannot read {source}: {exc}")
    if "TmpSecretId" in doc:
        return {"secret_id": doc["TmpSecretId"], "secret_key": doc.get("TmpSecretKey", ""),
                "token": doc.get("Token", "")}
    if "SecretId" not in doc:
        usage("--credentials-json: no SecretId in the document")
    return {"secret_id": doc["SecretId"], "secret_key": doc.get("SecretKey", "")}


@click.command("configure")
@click.option("--secret-id", default=None, help="The SecretId of an API key.")
@click.option("--secret-key-stdin", is_flag=True,
              help="Read the SecretKey from the first line of standard input.")
@click.option("--credentials-json", default=None, metavar="FILE",
              help="Take the keys from the JSON of `datacoffer admin account create` (or "
                   "`key create`, `token issue`); '-' reads standard input.")
@click.option("--region", default=None, help="Default region (for `mb` and addressing).")
@click.option("--no-check", is_flag=True, help="Save without asking the server first.")
@client_command
def configure(session: Session, secret_id: str | None, secret_key_stdin: bool,
              credentials_json: str | None, region: str | None, no_check: bool) -> None:
    """Save an endpoint and an API key as a profile, after checking them with the server.

    Asks for what is not given when standard input is a terminal. The profile file is
    ~/.config/datacoffer/profiles.toml (or DATACOFFER_PROFILE_FILE), readable by you only.

    \b
    Examples:
      datacoffer admin account create --app-id 1250000000 --uin 100000000001 > me.json
      datacoffer configure --endpoint http://127.0.0.1:8080 --credentials-json me.json
      datacoffer configure --profile prod --endpoint https://coffer.example.com \\
          --secret-id AKID… --secret-key-stdin < key.txt
    """
    values = _from_json(credentials_json) if credentials_json else {}
    if secret_id:
        values["secret_id"] = secret_id
    if secret_key_stdin:
        values["secret_key"] = sys.stdin.readline().strip()
    interactive = sys.stdin.isatty()
    endpoint = session.endpoint or os.environ.get(credentials.ENV["endpoint"])
    if not endpoint:
        endpoint = (click.prompt("Endpoint", default=credentials.DEFAULT_ENDPOINT)
                    if interactive else credentials.DEFAULT_ENDPOINT)
    for name, label in (("secret_id", "SecretId"), ("secret_key", "SecretKey")):
        if not values.get(name):
            if not interactive:
                usage(f"no {label}: give --secret-id/--secret-key-stdin or --credentials-json")
            values[name] = click.prompt(label, hide_input=name == "secret_key")
    values.update(endpoint=endpoint, region=region or "")
    name = session.profile or os.environ.get("DATACOFFER_PROFILE") or credentials.DEFAULT_PROFILE
    if not no_check:
        with Client(endpoint, values["secret_id"], values["secret_key"],
                    values.get("token") or None, region or None) as client:
            count = len(client.list_coffers().coffers)
    path = credentials.write_profile(name, values)
    if session.json:
        session.emit({"Profile": name, "Endpoint": endpoint, "File": str(path)})
    checked = "" if no_check else f" (checked: you own {count} coffers)"
    session.say(f"saved profile {name!r} in {path}{checked}")
