"""Fixtures: a real server process on 127.0.0.1, accounts made with the admin commands, and
clients that sign their requests."""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from datacoffer.client import Client, credentials
from tests.serverproc import ServerProcess, SignedClient, free_port


def pytest_configure(config: pytest.Config) -> None:
    """No client setting of the machine's user leaks into the tests (a profile's region would
    change every request's Host): no profile file, no DATACOFFER_* client variable."""
    for name in (*credentials.ENV.values(), "DATACOFFER_PROFILE"):
        os.environ.pop(name, None)
    os.environ["DATACOFFER_PROFILE_FILE"] = os.devnull + ".absent/profiles.toml"


APP_ID = "1250000000"
UIN = "100000000001"
_counter = itertools.count(1)


@dataclass
class Account:
    app_id: str
    uin: str
    secret_id: str
    secret_key: str


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared server: tests isolate themselves by coffer name, never by restarting it."""
    base = tmp_path_factory.mktemp("shared")
    config = base / "datacoffer.toml"
    # Objects are immutable, so used coffers can never be deleted: lift the coffer limit here.
    config.write_text("max_coffers = 100000\n")
    srv = ServerProcess(base / "data", config=config)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def account(server: ServerProcess) -> Account:
    doc = server.admin("account", "create", "--app-id", APP_ID, "--uin", UIN)
    return Account(doc["AppId"], doc["Uin"], doc["SecretId"], doc["SecretKey"])


def new_account(server: ServerProcess, *extra: str) -> Account:
    """Another account with unique numbers (e.g. for cross-account tests)."""
    n = next(_counter)
    app_id, uin = str(1300000000 + n), str(200000000000 + n)
    doc = server.admin("account", "create", "--app-id", app_id, "--uin", uin, *extra)
    return Account(app_id, uin, doc["SecretId"], doc["SecretKey"])


@pytest.fixture(scope="module")
def sub(server: ServerProcess, account: Account) -> Account:
    """A sub-account of the shared account (its AppID; its own UIN and key), one per module
    that asks for it."""
    uin = str(900000000000 + secrets.randbelow(99999999999))
    doc = server.admin("subaccount", "create", "--parent-uin", account.uin, "--uin", uin)
    return Account(account.app_id, doc["Uin"], doc["SecretId"], doc["SecretKey"])


@pytest.fixture(scope="session")
def client(server: ServerProcess, account: Account) -> Iterator[SignedClient]:
    c = SignedClient(server.base_url, account.secret_id, account.secret_key)
    yield c
    c.close()


@pytest.fixture(scope="session")
def sdk(server: ServerProcess, account: Account) -> Iterator[Client]:
    """The project's own SDK, signed in as the shared account."""
    with Client(server.base_url, account.secret_id, account.secret_key) as c:
        yield c


@pytest.fixture
def coffer_name(request: pytest.FixtureRequest, account: Account) -> str:
    """A fresh, not yet created coffer name of the shared account."""
    return f"t{next(_counter)}-{account.app_id}"


@pytest.fixture
def coffer(client: SignedClient, coffer_name: str) -> str:
    """A created coffer in ap-tianjin."""
    client.make_coffer(coffer_name)
    return coffer_name


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two server processes (not started) on one data directory, on different ports."""
    data = tmp_path / "data"
    a = ServerProcess(data)
    b = ServerProcess(data)
    while b.port == a.port:
        b.port = free_port()
    b.log_path = tmp_path / "data-server-b.log"
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


@pytest.fixture(scope="module")
def other(server: ServerProcess) -> Iterator[tuple[Account, SignedClient]]:
    """Another account than the shared one, and its client."""
    acc = new_account(server)
    c = SignedClient(server.base_url, acc.secret_id, acc.secret_key)
    yield acc, c
    c.close()
