"""What every client command shares: the options that pick a profile, the `Client` they make,
JSON or human output, and how an error becomes a message and an exit code."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import click

from datacoffer.client import Client, errors
from datacoffer.client.credentials import CredentialsError

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes (README, "Exit codes"): scripts switch on these.
EXIT_FAILURE = 1    # the server failed, the network, a checksum
EXIT_USAGE = 2      # a wrong command line or a request the server calls malformed (400, 405, 416)
EXIT_AUTH = 3       # credentials, signature, whitelist or rights (401), or none configured
EXIT_NOT_FOUND = 4  # no such coffer, object or upload (404)
EXIT_CONFLICT = 5   # the state forbids it (409): immutability, a coffer not empty, a lock


def exit_code(exc: errors.DataCofferError) -> int:
    if isinstance(exc, errors.AccessDenied | CredentialsError):
        return EXIT_AUTH
    if isinstance(exc, errors.NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, errors.Conflict):
        return EXIT_CONFLICT
    if isinstance(exc, errors.InvalidRequest):
        return EXIT_USAGE
    return EXIT_FAILURE


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass
class Session:
    """The client of one command invocation and how it prints."""

    profile: str | None
    endpoint: str | None
    json: bool
    #: connections the client may open (commands that move files in parallel raise it)
    max_connections: int = 32
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.endpoint, profile=self.profile,
                                  max_connections=self.max_connections)
        return self._client

    def emit(self, document: Any) -> None:
        """One JSON document on standard output (with --json)."""
        click.echo(json.dumps(_plain(document), indent=2, ensure_ascii=False))

    def say(self, text: str) -> None:
        """A human-readable line on standard output (without --json)."""
        if not self.json:
            click.echo(text)

    def fail(self, exc: errors.DataCofferError) -> NoReturn:
        if self.json:
            click.echo(json.dumps({"Error": {
                "Code": exc.code, "Message": exc.message, "Resource": exc.resource,
                "RequestId": exc.request_id, "TraceId": exc.trace_id}}), err=True)
        else:
            head = f"{exc.code}: {exc.message}" if exc.code else exc.message
            click.echo(f"error: {head}", err=True)
            ids = [f"request id {exc.request_id}"] if exc.request_id else []
            ids += [f"trace id {exc.trace_id}"] if exc.trace_id else []
            if ids:
                click.echo(f"       ({', '.join(ids)})", err=True)
        sys.exit(exit_code(exc))

    def fail_locally(self, code: str, message: str, resource: str) -> NoReturn:
        """A request found wrong before it was sent (exit 2): the JSON error document with
        --json, else one line."""
        if self.json:
            click.echo(json.dumps({"Error": {"Code": code, "Message": message,
                                             "Resource": resource, "RequestId": None,
                                             "TraceId": None}}), err=True)
        else:
            click.echo(f"error: {message}", err=True)
        sys.exit(EXIT_USAGE)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@contextmanager
def failures(session: Session) -> Iterator[None]:
    """Turn the client's exceptions into a message and an exit code."""
    try:
        yield
    except errors.DataCofferError as exc:
        session.fail(exc)
    finally:
        session.close()


def client_command(func: F) -> F:
    """Give a command --profile, --endpoint and --json, and call it with a `Session` first."""

    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
    @click.option("--endpoint", default=None, metavar="URL",
                  help="Server URL (overrides the profile and DATACOFFER_ENDPOINT).")
    @click.option("--profile", default=None, metavar="NAME",
                  help="Profile of the profile file (default: DATACOFFER_PROFILE or 'default').")
    @functools.wraps(func)
    def wrapper(*args: Any, profile: str | None, endpoint: str | None, as_json: bool,
                **kwargs: Any) -> Any:
        session = Session(profile, endpoint, as_json)
        with failures(session):
            return func(session, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def usage(message: str) -> NoReturn:
    raise click.UsageError(message)
