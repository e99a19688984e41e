"""The operator's program, `datacoffer`: the command names, flags and outputs of service.md
("What the operator runs") are a contract. Every test runs the installed program as a real
process against a real data directory."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import datacoffer
from datacoffer import config
from datacoffer.installation import Installation
from tests.serverproc import ServerProcess, SignedClient, free_port

#: the installed console script (pyproject's [project.scripts]), so usage lines name `datacoffer`
DATACOFFER = str(Path(sys.executable).parent / "datacoffer")
DEFAULT_REGIONS = ["ap-tianjin", "ap-shanghai", "ap-guangzhou"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any DATACOFFER_* setting of the caller, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATACOFFER_")}
    return {**env, **extra}


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DATACOFFER, *args], input=stdin, capture_output=True, text=True,
                          env=env if env is not None else clean_env(), cwd=cwd, timeout=60)


def ok_json(done: subprocess.CompletedProcess[str]) -> object:
    """The one JSON document on stdout of a successful command (json.loads refuses extra
    text after it)."""
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_error(done: subprocess.CompletedProcess[str], *fragments: str, code: int = 1) -> None:
    """A refused command: exit code, nothing on stdout, one `error: …` line on stderr."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, done.stderr)


def make_installation(data_dir: Path) -> Path:
    """An installation in `data_dir`, made as `datacoffer serve` makes it on first start
    (`Installation.open(settings, create=True)`), in this process and without a server; the
    admin commands create none. Like `clean_env`, no DATACOFFER_* setting of the caller
    applies."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("DATACOFFER_"):
                mp.delenv(name)
        Installation.open(config.load(data_dir=str(data_dir)), create=True).close()
    assert (data_dir / "metadata.db").is_file()
    return data_dir


_numbers = iter(range(1, 10**6))


def numbers() -> tuple[str, str]:
    """A fresh (AppID, UIN) pair for this module."""
    n = next(_numbers)
    return str(1400000000 + n), str(300000000000 + n)


# -- --help and --version ------------------------------------------------------------------

DD = ["--data-dir", "--config"]
HELP_CASES = [
    ("", [], ["admin", "serve"]),
    ("serve", ["--data-dir", "--host", "--port", "--config", "--tls-cert", "--tls-key",
               "--no-background"], []),
    ("admin", [], ["account", "subaccount", "key", "whitelist", "status"]),
    ("admin account", [], ["create"]),
    ("admin account create", ["--app-id", "--uin", "--not-whitelisted", "--password-stdin",
                              *DD], []),
    ("admin subaccount", [], ["create"]),
    ("admin subaccount create", ["--parent-uin", "--uin", "--password-stdin", *DD], []),
    ("admin key", [], ["create", "disable", "enable", "delete", "list"]),
    ("admin key create", ["--uin", *DD], []),
    ("admin key disable", ["--secret-id", *DD], []),
    ("admin key enable", ["--secret-id", *DD], []),
    ("admin key delete", ["--secret-id", *DD], []),
    ("admin key list", ["--uin", *DD], []),
    ("admin whitelist", [], ["add", "remove", "list"]),
    ("admin whitelist add", ["--app-id", *DD], []),
    ("admin whitelist remove", ["--app-id", *DD], []),
    ("admin whitelist list", DD, []),
    ("admin status", DD, []),
]


@pytest.mark.parametrize(("command", "flags", "subcommands"), HELP_CASES,
                         ids=[c[0] or "datacoffer" for c in HELP_CASES])
def test_help(command, flags, subcommands):
    done = run(*command.split(), "--help")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    prog = f"datacoffer {command}".strip()
    usage = (f"Usage: {prog} [OPTIONS] COMMAND [ARGS]..." if subcommands
             else f"Usage: {prog} [OPTIONS]")
    assert out.splitlines()[0] == usage
    options = out.split("\nOptions:\n", 1)[1].split("\nCommands:\n", 1)
    for flag in [*flags, "--help"]:
        # an option line of the Options section, not a mention in some other help text
        assert re.search(rf"^\s+(-\w, )?{re.escape(flag)}\b(?!-)", options[0], re.M), flag
    for sub in subcommands:
        assert re.search(rf"^  {sub}\s", options[1], re.M), sub


def test_help_of_a_required_flag_says_so():
    out = run("admin", "account", "create", "--help").stdout
    assert re.search(r"^\s+--app-id TEXT .*\[required\]$", out, re.M)
    assert re.search(r"^\s+--uin TEXT .*\[required\]$", out, re.M)


def test_version():
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout == f"datacoffer, version {datacoffer.__version__}\n"
    from importlib.metadata import version
    assert datacoffer.__version__ == version("datacoffer")


def test_python_m_runs_the_same_program():
    done = subprocess.run([sys.executable, "-m", "datacoffer", "--version"],
                          capture_output=True, text=True, env=clean_env(), timeout=60)
    assert done.returncode == 0
    assert done.stdout == f"datacoffer, version {datacoffer.__version__}\n"


# -- the admin commands against a running server --------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """This module's own server (own data directory), started with no DATACOFFER_* setting."""
    base = tmp_path_factory.mktemp("cli")
    server = ServerProcess(base / "data", env=clean_env())
    server.env = clean_env()
    server.start()
    yield server
    server.stop()


def admin(srv: ServerProcess, *args: str, stdin: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    return run("admin", *args, "--data-dir", str(srv.data_dir), stdin=stdin)


def error_code(r: httpx.Response) -> str:
    return r.headers.get("x-cdcs-error-code", "")


def test_account_create_prints_one_document_and_the_key_works_at_once(srv):
    app_id, uin = numbers()
    done = admin(srv, "account", "create", "--app-id", app_id, "--uin", uin)
    doc = ok_json(done)
    assert list(doc) == ["AppId", "Uin", "SecretId", "SecretKey"]
    assert doc["AppId"] == app_id
    assert doc["Uin"] == uin
    assert isinstance(doc["SecretId"], str) and len(doc["SecretId"]) >= 16
    assert isinstance(doc["SecretKey"], str) and len(doc["SecretKey"]) >= 16
    assert doc["SecretId"] != doc["SecretKey"]
    assert done.stdout == json.dumps(doc, indent=2) + "\n"
    # the running server sees the new account immediately, and it is whitelisted
    c = SignedClient(srv.base_url, doc["SecretId"], doc["SecretKey"])
    try:
        r = c.put(f"/first-{app_id}", content=b'{"Locations": {"Location": ["ap-tianjin"]}}')
        assert r.status_code == 200, r.text
        r = c.put(f"/first-{app_id}/a.txt", content=b"abc")
        assert r.status_code == 200, r.text
        assert c.get(f"/first-{app_id}/a.txt").content == b"abc"
    finally:
        c.close()
    listed = ok_json(admin(srv, "whitelist", "list"))
    assert {"AppId": app_id, "Uin": uin} in listed
    keys = ok_json(admin(srv, "key", "list", "--uin", uin))
    assert [k["SecretId"] for k in keys] == [doc["SecretId"]]
    assert keys[0]["Enabled"] is True


def test_not_whitelisted_then_whitelist_add_and_remove(srv):
    app_id, uin = numbers()
    doc = ok_json(admin(srv, "account", "create", "--app-id", app_id, "--uin", uin,
                        "--not-whitelisted"))
    assert list(doc) == ["AppId", "Uin", "SecretId", "SecretKey"]
    assert app_id not in [e["AppId"] for e in ok_json(admin(srv, "whitelist", "list"))]
    c = SignedClient(srv.base_url, doc["SecretId"], doc["SecretKey"])
    try:
        r = c.get("/")
        assert (r.status_code, error_code(r)) == (401, "ServiceNotOpen")

        assert ok_json(admin(srv, "whitelist", "add", "--app-id", app_id)) == {
            "AppId": app_id, "Whitelisted": True}
        assert {"AppId": app_id, "Uin": uin} in ok_json(admin(srv, "whitelist", "list"))
        r = c.get("/")
        assert r.status_code == 200, r.text

        assert ok_json(admin(srv, "whitelist", "remove", "--app-id", app_id)) == {
            "AppId": app_id, "Whitelisted": False}
        assert app_id not in [e["AppId"] for e in ok_json(admin(srv, "whitelist", "list"))]
        r = c.get("/")
        assert (r.status_code, error_code(r)) == (401, "ServiceNotOpen")
    finally:
        c.close()


def test_whitelist_list_is_sorted_by_app_id(tmp_path):
    d = str(make_installation(tmp_path / "wl"))
    for app_id, uin in [("30", "3"), ("10", "1"), ("20", "2")]:
        ok_json(run("admin", "account", "create", "--app-id", app_id, "--uin", uin,
                    "--data-dir", d))
    ok_json(run("admin", "account", "create", "--app-id", "15", "--uin", "5",
                "--not-whitelisted", "--data-dir", d))
    assert ok_json(run("admin", "whitelist", "list", "--data-dir", d)) == [
        {"AppId": "10", "Uin": "1"}, {"AppId": "20", "Uin": "2"}, {"AppId": "30", "Uin": "3"}]


def _console_password(data_dir: Path, uin: str) -> str | None:
    with sqlite3.connect(data_dir / "metadata.db") as db:
        row = db.execute("SELECT console_password FROM identities WHERE uin = ?",
                         (uin,)).fetchone()
    assert row is not None
    return row[0]


def _password_matches(stored: str, password: str) -> bool:
    scheme, n, r, p, salt, digest = stored.split("$")
    assert scheme == "scrypt"
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                         p=int(p), dklen=len(bytes.fromhex(digest)))
    return got.hex() == digest


def test_password_stdin_reads_the_first_line(srv):
    app_id, uin = numbers()
    doc = ok_json(admin(srv, "account", "create", "--app-id", app_id, "--uin", uin,
                        "--password-stdin", stdin="s3cret pass\nsecond line\n"))
    assert doc["Uin"] == uin
    stored = _console_password(srv.data_dir, uin)
    assert stored is not None and "s3cret" not in stored
    assert _password_matches(stored, "s3cret pass")
    assert not _password_matches(stored, "s3cret pass\nsecond line")
    # a sub-account takes one the same way; without the flag none is stored
    sub = numbers()[1]
    ok_json(admin(srv, "subaccount", "create", "--parent-uin", uin, "--uin", sub,
                  "--password-stdin", stdin="other\r\n"))
    assert _password_matches(_console_password(srv.data_dir, sub), "other")
    app2, uin2 = numbers()
    ok_json(admin(srv, "account", "create", "--app-id", app2, "--uin", uin2, stdin="x\n"))
    assert _console_password(srv.data_dir, uin2) is None


@pytest.mark.parametrize("stdin", ["", "\n", "\nsecond\n"], ids=["empty", "newline", "blank"])
def test_password_stdin_without_a_password_is_refused(srv, stdin):
    app_id, uin = numbers()
    done = admin(srv, "account", "create", "--app-id", app_id, "--uin", uin,
                 "--password-stdin", stdin=stdin)
    assert_error(done, "--password-stdin", code=2)
    # nothing was created: the same numbers are still free
    assert_error(admin(srv, "key", "list", "--uin", uin), uin)
    sub = numbers()[1]
    done = admin(srv, "subaccount", "create", "--parent-uin", "100000000001", "--uin", sub,
                 "--password-stdin", stdin=stdin)
    assert_error(done, "--password-stdin", code=2)


def test_subaccount_and_keys(srv):
    app_id, uin = numbers()
    root = ok_json(admin(srv, "account", "create", "--app-id", app_id, "--uin", uin))
    sub_uin = numbers()[1]
    done = admin(srv, "subaccount", "create", "--parent-uin", uin, "--uin", sub_uin)
    sub = ok_json(done)
    assert list(sub) == ["Uin", "SecretId", "SecretKey"]
    assert sub["Uin"] == sub_uin
    assert done.stdout == json.dumps(sub, indent=2) + "\n"
    # the sub-account is not an account of its own: not on the whitelist
    assert sub_uin not in [e["Uin"] for e in ok_json(admin(srv, "whitelist", "list"))]

    # key create: another key of the account, printed once
    done = admin(srv, "key", "create", "--uin", uin)
    second = ok_json(done)
    assert list(second) == ["SecretId", "SecretKey"]
    assert second["SecretId"] != root["SecretId"]
    sub_second = ok_json(admin(srv, "key", "create", "--uin", sub_uin))
    assert list(sub_second) == ["SecretId", "SecretKey"]

    # key list: the SecretIds and their state, never a SecretKey
    done = admin(srv, "key", "list", "--uin", uin)
    keys = ok_json(done)
    assert sorted(k["SecretId"] for k in keys) == sorted([root["SecretId"], second["SecretId"]])
    assert all(k["Enabled"] is True for k in keys)
    assert all("SecretKey" not in k for k in keys)
    assert "SecretKey" not in done.stdout
    assert root["SecretKey"] not in done.stdout and second["SecretKey"] not in done.stdout
    sub_keys = ok_json(admin(srv, "key", "list", "--uin", sub_uin))
    assert sorted(k["SecretId"] for k in sub_keys) == sorted(
        [sub["SecretId"], sub_second["SecretId"]])

    # the second key works over HTTP; disable, enable and delete take effect at once
    c = SignedClient(srv.base_url, second["SecretId"], second["SecretKey"])
    try:
        assert c.get("/").status_code == 200
        assert ok_json(admin(srv, "key", "disable", "--secret-id", second["SecretId"])) == {
            "SecretId": second["SecretId"], "Result": "disable"}
        r = c.get("/")
        assert (r.status_code, error_code(r)) == (401, "AuthFailed")
        state = {k["SecretId"]: k["Enabled"]
                 for k in ok_json(admin(srv, "key", "list", "--uin", uin))}
        assert state == {root["SecretId"]: True, second["SecretId"]: False}

        assert ok_json(admin(srv, "key", "enable", "--secret-id", second["SecretId"])) == {
            "SecretId": second["SecretId"], "Result": "enable"}
        assert c.get("/").status_code == 200

        assert ok_json(admin(srv, "key", "delete", "--secret-id", second["SecretId"])) == {
            "SecretId": second["SecretId"], "Result": "delete"}
        r = c.get("/")
        assert (r.status_code, error_code(r)) == (401, "AuthFailed")
        assert [k["SecretId"] for k in ok_json(admin(srv, "key", "list", "--uin", uin))] == [
            root["SecretId"]]
        # the other key was not touched
        c2 = SignedClient(srv.base_url, root["SecretId"], root["SecretKey"])
        try:
            assert c2.get("/").status_code == 200
        finally:
            c2.close()
    finally:
        c.close()


# -- where the data directory comes from ------------------------------------------------------


def _key_ids(data_dir: Path, uin: str) -> list[str]:
    return [k["SecretId"] for k in ok_json(run("admin", "key", "list", "--uin", uin,
                                               "--data-dir", str(data_dir)))]


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_data_dir_anywhere_among_the_options(tmp_path, where):
    d = str(make_installation(tmp_path / "anywhere"))
    opts = ["--app-id", "7", "--uin", "77"]
    at = {"first": 0, "middle": 2, "last": 4}[where]
    args = [*opts[:at], "--data-dir", d, *opts[at:]]
    doc = ok_json(run("admin", "account", "create", *args))
    assert (doc["AppId"], doc["Uin"]) == ("7", "77")
    assert _key_ids(Path(d), "77") == [doc["SecretId"]]
    # the same for a command whose only option is the data directory
    assert ok_json(run("admin", "whitelist", "list", "--data-dir", d)) == [
        {"AppId": "7", "Uin": "77"}]


def test_data_dir_from_the_environment_and_the_flag_wins(tmp_path):
    from_env = make_installation(tmp_path / "env-dir")
    from_flag = make_installation(tmp_path / "flag-dir")
    env = clean_env(DATACOFFER_DATA_DIR=str(from_env))
    doc = ok_json(run("admin", "account", "create", "--app-id", "8", "--uin", "88", env=env))
    assert _key_ids(from_env, "88") == [doc["SecretId"]]
    # with both, the flag is used and the environment's directory is left alone
    doc2 = ok_json(run("admin", "account", "create", "--app-id", "9", "--uin", "99",
                       "--data-dir", str(from_flag), env=env))
    assert _key_ids(from_flag, "99") == [doc2["SecretId"]]
    assert_error(run("admin", "key", "list", "--uin", "99", env=env), "99")
    assert_error(run("admin", "key", "list", "--uin", "88", "--data-dir", str(from_flag)),
                 "88")


def test_data_dir_default_is_datacoffer_data_in_the_working_directory(tmp_path):
    make_installation(tmp_path / "datacoffer-data")
    doc = ok_json(run("admin", "account", "create", "--app-id", "5", "--uin", "55",
                      cwd=tmp_path))
    assert _key_ids(tmp_path / "datacoffer-data", "55") == [doc["SecretId"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datacoffer-data"]


# -- no installation: the admin commands create none -------------------------------------------


def assert_not_installed(done: subprocess.CompletedProcess[str], data_dir: Path | str) -> None:
    """Refused for want of an installation: exit 1, nothing on stdout, exactly one
    `error: there is no Data Coffer installation in DIR…` line that names the directory."""
    assert_error(done, code=1)
    assert done.stderr.startswith(
        f"error: there is no Data Coffer installation in {data_dir}: check --data-dir"), \
        done.stderr
    assert f"`datacoffer serve --data-dir {data_dir}`" in done.stderr, done.stderr


NOT_INSTALLED_COMMANDS = {
    "account-create": ["account", "create", "--app-id", "1250000000", "--uin",
                       "100000000001"],
    "status": ["status"],
    "whitelist-list": ["whitelist", "list"],
    "key-list": ["key", "list", "--uin", "100000000001"],
}


@pytest.mark.parametrize("args", list(NOT_INSTALLED_COMMANDS.values()),
                         ids=list(NOT_INSTALLED_COMMANDS))
def test_admin_on_a_missing_data_dir_is_refused_and_creates_nothing(tmp_path, args):
    d = tmp_path / "mistyped"
    done = run("admin", *args, "--data-dir", str(d))
    assert_not_installed(done, d)
    assert not d.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", list(NOT_INSTALLED_COMMANDS.values()),
                         ids=list(NOT_INSTALLED_COMMANDS))
def test_admin_on_an_empty_data_dir_is_refused_and_creates_nothing(tmp_path, args):
    d = tmp_path / "empty"
    d.mkdir()
    done = run("admin", *args, "--data-dir", str(d))
    assert_not_installed(done, d)
    assert list(d.iterdir()) == []
    assert list(tmp_path.iterdir()) == [d]


@pytest.mark.parametrize("args", [NOT_INSTALLED_COMMANDS["account-create"],
                                  NOT_INSTALLED_COMMANDS["status"]],
                         ids=["account-create", "status"])
def test_admin_with_a_wrong_datacoffer_data_dir_is_refused(tmp_path, args):
    installed = make_installation(tmp_path / "installed")
    before = sorted(p.relative_to(installed) for p in installed.rglob("*"))
    wrong = tmp_path / "wrong"
    done = run("admin", *args, env=clean_env(DATACOFFER_DATA_DIR=str(wrong)))
    assert_not_installed(done, wrong)
    assert not wrong.exists()
    # an empty directory named by the environment is no installation either
    wrong.mkdir()
    done = run("admin", *args, env=clean_env(DATACOFFER_DATA_DIR=str(wrong)))
    assert_not_installed(done, wrong)
    assert list(wrong.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["installed", "wrong"]
    assert sorted(p.relative_to(installed) for p in installed.rglob("*")) == before


def test_admin_without_data_dir_and_no_installation_here_is_refused(tmp_path):
    done = run("admin", "account", "create", "--app-id", "5", "--uin", "55", cwd=tmp_path)
    assert_not_installed(done, "datacoffer-data")
    assert list(tmp_path.iterdir()) == []


def test_admin_works_once_serve_has_created_the_installation(tmp_path):
    d = tmp_path / "data"
    assert_not_installed(run("admin", "status", "--data-dir", str(d)), d)
    server = Serve(d)
    server.stop()
    assert FIRST_START_MARK in server.stderr()
    doc = ok_json(run("admin", "account", "create", "--app-id", "6", "--uin", "66",
                      "--data-dir", str(d)))
    assert _key_ids(d, "66") == [doc["SecretId"]]


# -- refusals --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def populated(srv) -> dict[str, str]:
    app_id, uin = numbers()
    ok_json(admin(srv, "account", "create", "--app-id", app_id, "--uin", uin))
    sub_uin = numbers()[1]
    ok_json(admin(srv, "subaccount", "create", "--parent-uin", uin, "--uin", sub_uin))
    return {"app_id": app_id, "uin": uin, "sub": sub_uin}


def _state(srv) -> list[list[tuple]]:
    """Every identity and key of the data directory, read from the metadata file itself."""
    with sqlite3.connect(srv.data_dir / "metadata.db") as db:
        return [db.execute("SELECT uin, parent_uin, app_id, whitelisted FROM identities"
                           " ORDER BY uin").fetchall(),
                db.execute("SELECT secret_id, uin, enabled FROM api_keys"
                           " ORDER BY secret_id").fetchall()]


ERROR_CASES = {
    "duplicate-app-id": (["account", "create", "--app-id", "{app_id}", "--uin", "{fresh}"],
                         ["{app_id}"]),
    "duplicate-uin": (["account", "create", "--app-id", "{fresh}", "--uin", "{uin}"],
                      ["{uin}"]),
    "account-uin-of-subaccount": (["account", "create", "--app-id", "{fresh}", "--uin",
                                   "{sub}"], ["{sub}"]),
    "subaccount-duplicate-uin": (["subaccount", "create", "--parent-uin", "{uin}", "--uin",
                                  "{sub}"], ["{sub}"]),
    "subaccount-uin-of-account": (["subaccount", "create", "--parent-uin", "{uin}", "--uin",
                                   "{uin}"], ["{uin}"]),
    "unknown-parent": (["subaccount", "create", "--parent-uin", "{fresh}", "--uin",
                        "{fresh2}"], ["{fresh}"]),
    "subaccount-of-subaccount": (["subaccount", "create", "--parent-uin", "{sub}", "--uin",
                                  "{fresh}"], ["{sub}"]),
    "non-digit-app-id": (["account", "create", "--app-id", "12ab", "--uin", "{fresh}"],
                         ["AppID", "12ab"]),
    "empty-app-id": (["account", "create", "--app-id", "", "--uin", "{fresh}"], ["AppID"]),
    "negative-app-id": (["account", "create", "--app-id", "-5", "--uin", "{fresh}"],
                        ["AppID", "-5"]),
    "non-digit-uin": (["account", "create", "--app-id", "{fresh}", "--uin", "u1"],
                      ["UIN", "u1"]),
    "non-digit-subaccount-uin": (["subaccount", "create", "--parent-uin", "{uin}", "--uin",
                                  "x9"], ["UIN", "x9"]),
    "key-create-unknown-uin": (["key", "create", "--uin", "{fresh}"], ["{fresh}"]),
    "key-list-unknown-uin": (["key", "list", "--uin", "{fresh}"], ["{fresh}"]),
    "key-disable-unknown": (["key", "disable", "--secret-id", "AKIDnope"], ["AKIDnope"]),
    "key-enable-unknown": (["key", "enable", "--secret-id", "AKIDnope"], ["AKIDnope"]),
    "key-delete-unknown": (["key", "delete", "--secret-id", "AKIDnope"], ["AKIDnope"]),
    "whitelist-add-unknown": (["whitelist", "add", "--app-id", "{fresh}"], ["{fresh}"]),
    "whitelist-remove-unknown": (["whitelist", "remove", "--app-id", "{fresh}"], ["{fresh}"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_refused_command(srv, populated, case):
    args, fragments = ERROR_CASES[case]
    values = {**populated, "fresh": numbers()[1], "fresh2": numbers()[1]}
    before = _state(srv)
    done = admin(srv, *[a.format(**values) for a in args])
    assert_error(done, *[f.format(**values) for f in fragments])
    assert _state(srv) == before  # nothing was created or changed


def test_refused_subaccount_uin_stays_free(srv, populated):
    """The sub-account of a sub-account is refused without creating anything."""
    fresh = numbers()[1]
    assert_error(admin(srv, "subaccount", "create", "--parent-uin", populated["sub"],
                       "--uin", fresh), populated["sub"])
    assert_error(admin(srv, "key", "list", "--uin", fresh), fresh)
    assert ok_json(admin(srv, "subaccount", "create", "--parent-uin", populated["uin"],
                         "--uin", fresh))["Uin"] == fresh


MISSING = [
    (["account", "create", "--uin", "1"], "--app-id"),
    (["account", "create", "--app-id", "1"], "--uin"),
    (["subaccount", "create", "--uin", "1"], "--parent-uin"),
    (["subaccount", "create", "--parent-uin", "1"], "--uin"),
    (["key", "create"], "--uin"),
    (["key", "disable"], "--secret-id"),
    (["key", "enable"], "--secret-id"),
    (["key", "delete"], "--secret-id"),
    (["key", "list"], "--uin"),
    (["whitelist", "add"], "--app-id"),
    (["whitelist", "remove"], "--app-id"),
]


@pytest.mark.parametrize(("args", "flag"), MISSING, ids=[" ".join(m[0]) + " " + m[1]
                                                        for m in MISSING])
def test_missing_required_flag_is_a_usage_error(tmp_path, args, flag):
    d = tmp_path / "untouched"
    done = run("admin", *args, "--data-dir", str(d))
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert f"Usage: datacoffer admin {args[0]} {args[1]} [OPTIONS]" in done.stderr
    assert f"Error: Missing option '{flag}'" in done.stderr
    assert not d.exists()  # a usage error touches nothing


def test_unknown_flag_and_unknown_command_are_usage_errors(tmp_path):
    done = run("admin", "account", "create", "--app-id", "1", "--uin", "1", "--bogus",
               "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2
    assert done.stdout == ""
    error = done.stderr.splitlines()[-1]
    assert error.startswith("Error: No such option") and "--bogus" in error, done.stderr
    done = run("admin", "nonsense")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines()[-1] == "Error: No such command 'nonsense'.", done.stderr


def test_unreadable_configuration_is_an_error(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text("bogus_setting = 1\n")
    done = run("admin", "status", "--data-dir", str(tmp_path / "d"), "--config", str(conf))
    assert_error(done, "bogus_setting", code=2)
    done = run("admin", "status", "--data-dir", str(tmp_path / "d"),
               env=clean_env(DATACOFFER_CONFIG=str(conf)))
    assert_error(done, "bogus_setting", code=2)


# -- status ----------------------------------------------------------------------------------


def test_status(tmp_path):
    server = ServerProcess(tmp_path / "data", env=clean_env())
    server.env = clean_env()
    server.start()
    try:
        empty = ok_json(run("admin", "status", "--data-dir", str(server.data_dir)))
        assert empty["Counts"] == {"accounts": 0, "subaccounts": 0, "keys": 0, "coffers": 0,
                                   "objects": 0, "bytes": 0, "uploads_in_progress": 0,
                                   "multipart_uploads": 0}
        root = ok_json(run("admin", "account", "create", "--app-id", "1250000000", "--uin",
                           "100000000001", "--data-dir", str(server.data_dir)))
        ok_json(run("admin", "subaccount", "create", "--parent-uin", "100000000001", "--uin",
                    "100000000011", "--data-dir", str(server.data_dir)))
        ok_json(run("admin", "key", "create", "--uin", "100000000001", "--data-dir",
                    str(server.data_dir)))
        c = SignedClient(server.base_url, root["SecretId"], root["SecretKey"])
        try:
            c.make_coffer("st-1250000000", "ap-shanghai")
            assert c.put("/st-1250000000/a", content=b"x" * 1000).status_code == 200
            assert c.put("/st-1250000000/b", content=b"y" * 24).status_code == 200
        finally:
            c.close()
        done = run("admin", "status", "--data-dir", str(server.data_dir))
        doc = ok_json(done)
    finally:
        server.stop()
    assert doc["Version"] == datacoffer.__version__
    assert doc["DataDir"] == str(server.data_dir.resolve())
    assert [r["Name"] for r in doc["Regions"]] == DEFAULT_REGIONS
    for region in doc["Regions"]:
        assert region["Path"] == str((server.data_dir / "regions" / region["Name"]).resolve())
        assert isinstance(region["FreeBytes"], int) and region["FreeBytes"] > 0
    assert {r["Name"]: r["Objects"] for r in doc["Regions"]} == {
        "ap-tianjin": 0, "ap-shanghai": 2, "ap-guangzhou": 0}
    assert doc["Counts"] == {"accounts": 1, "subaccounts": 1, "keys": 3, "coffers": 1,
                             "objects": 2, "bytes": 1024, "uploads_in_progress": 0,
                             "multipart_uploads": 0}


# -- serve -----------------------------------------------------------------------------------

FIRST_START_MARK = "a new installation was created"


class Serve:
    """`datacoffer serve` with stdout and stderr kept apart."""

    def __init__(self, data_dir: Path, *args: str, cwd: Path | None = None) -> None:
        self.port = free_port()
        self.out = data_dir.parent / f"{data_dir.name}-{self.port}.out"
        self.err = data_dir.parent / f"{data_dir.name}-{self.port}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [DATACOFFER, "serve", "--data-dir", str(data_dir), "--port", str(self.port),
                 *args], stdout=out, stderr=err, env=clean_env(), cwd=cwd)
        self.base_url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.err.read_text()}")
            try:
                httpx.get(self.base_url + "/", timeout=1)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("server did not start in 30 s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()


def test_serve_first_and_second_start(tmp_path):
    data = tmp_path / "data"
    first = Serve(data)
    try:
        assert first.proc.poll() is None
    finally:
        first.stop()
    err = first.stderr()
    assert first.stdout() == ""
    assert FIRST_START_MARK in err
    # the program as this shell can run it: "datacoffer" with its venv active, else its path
    assert re.search(r"\n  \S*datacoffer admin account create --app-id 1250000000 "
                     r"--uin 100000000001 \\\n"
                     rf"      --data-dir {re.escape(str(data))} > account.json\n", err)
    assert re.search(r"\n  \S*datacoffer configure --endpoint "
                     rf"http://127.0.0.1:{first.port} --credentials-json account.json\n", err)
    assert f"Data Coffer listening on http://127.0.0.1:{first.port} " in err
    assert "regions: ap-tianjin, ap-shanghai, ap-guangzhou" in err

    key_file = data / "keys" / "root.key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    assert len(base64.b64decode(key, validate=True)) == 32
    assert (data / "metadata.db").is_file()
    assert sorted(p.name for p in (data / "regions").iterdir()) == sorted(DEFAULT_REGIONS)
    assert all((data / "regions" / r).is_dir() for r in DEFAULT_REGIONS)

    second = Serve(data, "--no-background", "--host", "127.0.0.1")
    try:
        assert httpx.get(second.base_url + "/").status_code == 401
    finally:
        second.stop()
    err2 = second.stderr()
    assert FIRST_START_MARK not in err2
    assert "admin account create" not in err2
    assert f"Data Coffer listening on http://127.0.0.1:{second.port} " in err2
    assert key_file.read_bytes() == key  # the installation's key is kept
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_serve_default_data_dir_is_in_the_working_directory(tmp_path):
    port = free_port()
    s = subprocess.Popen([DATACOFFER, "serve", "--port", str(port)], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    try:
        # wait until it answers: metadata.db appears before the first-start text is printed
        deadline = time.monotonic() + 30
        while True:
            assert s.poll() is None and time.monotonic() < deadline
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert (tmp_path / "datacoffer-data" / "metadata.db").is_file()
    finally:
        s.terminate()
        _, err = s.communicate(timeout=15)
    assert b"--data-dir datacoffer-data > account.json\n" in err
    assert (tmp_path / "datacoffer-data" / "keys" / "root.key").is_file()


def test_serve_tls_cert_without_key_is_refused(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("not used\n")
    done = run("serve", "--data-dir", str(tmp_path / "d"), "--tls-cert", str(cert))
    assert_error(done, "--tls-cert and --tls-key", code=2)
    assert not (tmp_path / "d").exists()


def _block(text: str, first: str, last: str) -> str:
    """The lines of `text` from the one containing `first` to the next one equal to `last`
    (ignoring surrounding blanks), verbatim."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if first in line)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == last)
    return "\n".join(lines[start:end + 1]) + "\n"


def test_first_start_example_works_as_printed(tmp_path):
    data = tmp_path / "data"
    server = Serve(data, cwd=tmp_path)
    try:
        err = server.stderr()
        lines = err.splitlines()
        first = next(i for i, line in enumerate(lines) if "admin account create" in line)
        last = next(i for i, line in enumerate(lines) if " cat dc://" in line)
        # the commands, exactly as printed (indented lines; the prose between is left out)
        script = "\n".join(line for line in lines[first:last + 1] if line.startswith("  "))
        assert "configure --endpoint" in script and "cp hello.txt" in script
        # run by a shell that finds this installation's programs, from the directory the
        # server was started in (printed paths are relative to it), with its own profile
        env = clean_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                        DATACOFFER_PROFILE_FILE=str(tmp_path / "profiles.toml"))
        done = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True,
                              env=env, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        assert done.stdout.endswith("hello, coffer\n"), done.stdout
        doc = json.loads((tmp_path / "account.json").read_text())
        assert (doc["AppId"], doc["Uin"]) == ("1250000000", "100000000001")
        # and what it stored is there for the account's own client too
        c = SignedClient(server.base_url, doc["SecretId"], doc["SecretKey"])
        try:
            r = c.get("/mycoffer-1250000000/hello.txt")
            assert (r.status_code, r.content) == (200, b"hello, coffer\n")
        finally:
            c.close()
    finally:
        server.stop()
