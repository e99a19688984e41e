"""The command-line client: `datacoffer configure`, `mb`, `rb`, `ls`, `cp`, `cat`, `stat`,
`presign` and `uploads`, run as real processes against the shared server (README, "The
command-line client"). Outputs are compared exactly where they do not depend on time; the
SDK (`sdk` fixture) sets up and checks the server's state on the side.

Every process gets an environment without the caller's DATACOFFER_* variables and with
DATACOFFER_PROFILE_FILE in a temporary directory, so that nothing reads or writes the real
~/.config/datacoffer.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from datacoffer.client import Client, TransferConfig, credentials, errors
from tests.conftest import Account, new_account
from tests.serverproc import ServerProcess, free_port

BIN = [sys.executable, "-m", "datacoffer"]
MiB = 1024 * 1024
#: the second line of an error: `       (request id …, trace id …)`
IDS = re.compile(r"^ +\(request id [0-9a-f]+, trace id [0-9a-f]+\)$")
#: what varies in the summary line of `cp`
RATE = re.compile(r" in \d+\.\d s, \d+ MiB/s")


def clean_env(profile_file: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without DATACOFFER_*, with a temporary profile file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATACOFFER_")}
    env.pop("XDG_CONFIG_HOME", None)
    env["DATACOFFER_PROFILE_FILE"] = str(profile_file)
    env.update(extra)
    return env


def run(env: dict[str, str], *args: str, stdin: str | bytes | None = None,
        cwd: Path | None = None, binary: bool = False) -> subprocess.CompletedProcess:
    # stdin is never the terminal of whoever runs the tests (configure would prompt)
    feed: dict[str, object] = ({"input": stdin} if stdin is not None
                               else {"stdin": subprocess.DEVNULL})
    return subprocess.run([*BIN, *args], capture_output=True, text=not binary, env=env,
                          cwd=cwd, timeout=120, **feed)  # type: ignore[call-overload]


@dataclass
class Dc:
    """`datacoffer` with one environment."""

    env: dict[str, str]

    def __call__(self, *args: str, stdin: str | bytes | None = None, cwd: Path | None = None,
                 binary: bool = False, **extra_env: str) -> subprocess.CompletedProcess:
        return run({**self.env, **extra_env}, *args, stdin=stdin, cwd=cwd, binary=binary)


def write_profile(path: Path, server: ServerProcess, acc: Account, name: str = "default",
                  **more: str) -> Path:
    credentials.write_profile(name, {"endpoint": server.base_url, "secret_id": acc.secret_id,
                                     "secret_key": acc.secret_key, **more}, path)
    return path


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout


def ok_json(done: subprocess.CompletedProcess) -> object:
    """The one JSON document on stdout (json.loads refuses anything after it)."""
    return json.loads(ok(done))


def assert_service_error(done: subprocess.CompletedProcess, exit_code: int, code: str, *,
                         stdout: bool = True) -> str:
    """A refusal of the server: the exit code, `error: CODE: message` and the ids line on
    stderr (and nothing on stdout unless `stdout` is False). Returns the message."""
    assert done.returncode == exit_code, (done.returncode, done.stdout, done.stderr)
    if stdout:
        assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith(f"error: {code}: "), done.stderr
    assert IDS.match(lines[1]), done.stderr
    return lines[0][len(f"error: {code}: "):]


def assert_usage(done: subprocess.CompletedProcess, fragment: str) -> None:
    """A usage error: exit 2, click's usage message naming the problem, nothing on stdout."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert fragment in done.stderr, done.stderr


def summary(stdout: str) -> str:
    """The summary line of `cp` without its time and rate."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    assert RATE.search(lines[0]), stdout
    return RATE.sub("", lines[0])


def when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def read(sdk: Client, coffer: str, key: str) -> bytes:
    with sdk.get_object(coffer, key) as reader:
        return reader.read()


def coffer_missing(coffer: str) -> str:
    """A coffer name that was never created."""
    return "missing" + coffer


def files_under(root: Path) -> dict[str, bytes]:
    """Every file below `root` (hidden ones too), by its path relative to root."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-client")


@pytest.fixture(scope="module")
def dc(server: ServerProcess, account: Account, home: Path) -> Dc:
    """The client with a profile file whose default profile is the shared account."""
    return Dc(clean_env(write_profile(home / "profiles.toml", server, account)))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small directory tree: nested directories, and a name with a space and unicode."""
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    (root / "top.txt").write_bytes(b"top\n")
    (root / "a" / "note.md").write_bytes(b"# note\n")
    (root / "a" / "b" / "deep.bin").write_bytes(random_bytes(3000, 1))
    (root / "with space é.txt").write_bytes("grüße\n".encode())
    return root


# -- configure ---------------------------------------------------------------------------


def account_json(path: Path, acc: Account) -> Path:
    """What `datacoffer admin account create` prints."""
    path.write_text(json.dumps({"AppId": acc.app_id, "Uin": acc.uin,
                                "SecretId": acc.secret_id, "SecretKey": acc.secret_key},
                               indent=2))
    return path


def test_configure_with_credentials_json_file(server: ServerProcess, tmp_path: Path) -> None:
    acc = new_account(server)
    profiles = tmp_path / "config" / "datacoffer" / "profiles.toml"  # the directory is made
    env = clean_env(profiles)
    done = run(env, "configure", "--endpoint", server.base_url, "--credentials-json",
               str(account_json(tmp_path / "account.json", acc)))
    assert ok(done) == f"saved profile 'default' in {profiles} (checked: you own 0 coffers)\n"
    assert done.stderr == ""
    assert stat.S_IMODE(profiles.stat().st_mode) == 0o600
    assert tomllib.loads(profiles.read_text()) == {"default": {
        "endpoint": server.base_url, "secret_id": acc.secret_id,
        "secret_key": acc.secret_key}}
    assert os.listdir(profiles.parent) == ["profiles.toml"]  # no temporary file left
    # the profile works: this account owns no coffer yet
    assert ok(run(env, "ls")) == ""
    assert ok_json(run(env, "ls", "--json")) == []


def test_configure_from_stdin_then_a_second_profile(server: ServerProcess,
                                                    tmp_path: Path) -> None:
    acc = new_account(server)
    profiles = tmp_path / "profiles.toml"
    env = clean_env(profiles)
    doc = json.dumps({"AppId": acc.app_id, "Uin": acc.uin, "SecretId": acc.secret_id,
                      "SecretKey": acc.secret_key})
    done = run(env, "configure", "--endpoint", server.base_url, "--credentials-json", "-",
               "--json", stdin=doc)
    assert ok_json(done) == {"Profile": "default", "Endpoint": server.base_url,
                             "File": str(profiles)}
    assert done.stderr == ""

    # a second profile, from --secret-id and the key on stdin, is kept beside the first
    other = new_account(server)
    done = run(env, "configure", "--profile", "second", "--endpoint", server.base_url,
               "--secret-id", other.secret_id, "--secret-key-stdin", "--region",
               "ap-shanghai", stdin=other.secret_key + "\n")
    assert ok(done) == f"saved profile 'second' in {profiles} (checked: you own 0 coffers)\n"
    assert stat.S_IMODE(profiles.stat().st_mode) == 0o600
    assert tomllib.loads(profiles.read_text()) == {
        "default": {"endpoint": server.base_url, "secret_id": acc.secret_id,
                    "secret_key": acc.secret_key},
        "second": {"endpoint": server.base_url, "secret_id": other.secret_id,
                   "secret_key": other.secret_key, "region": "ap-shanghai"},
    }
    # each profile is its own account: a coffer made with one is not the other's
    name = f"cfg-{other.app_id}"
    assert ok(run(env, "mb", f"dc://{name}", "--profile", "second")) == \
        f"made dc://{name}/ in ap-shanghai\n"
    assert ok(run(env, "ls", "--profile", "second")) == f"{name}\n"
    assert ok(run(env, "ls", "--profile", "second", "--endpoint", server.base_url)) == \
        f"{name}\n"
    assert ok(run(env, "ls")) == ""
    assert ok(run({**env, "DATACOFFER_PROFILE": "second"}, "ls")) == f"{name}\n"


def test_configure_no_check_saves_without_asking_the_server(account: Account,
                                                            tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    closed = f"http://127.0.0.1:{free_port()}"
    done = run(clean_env(profiles), "configure", "--endpoint", closed, "--no-check",
               "--credentials-json", str(account_json(tmp_path / "a.json", account)))
    assert ok(done) == f"saved profile 'default' in {profiles}\n"
    assert tomllib.loads(profiles.read_text()) == {"default": {
        "endpoint": closed, "secret_id": account.secret_id,
        "secret_key": account.secret_key}}
    assert stat.S_IMODE(profiles.stat().st_mode) == 0o600


def test_configure_refuses_a_wrong_key_and_writes_nothing(server: ServerProcess,
                                                          account: Account,
                                                          tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    env = clean_env(profiles)
    args = ("configure", "--profile", "bad", "--endpoint", server.base_url, "--secret-id",
            account.secret_id, "--secret-key-stdin")
    assert_service_error(run(env, *args, stdin="not-the-key\n"), 3, "AuthFailed")
    assert not profiles.exists()
    # with a profile file already there, it stays exactly as it was
    write_profile(profiles, server, account)
    before = profiles.read_bytes()
    assert_service_error(run(env, *args, stdin="not-the-key\n"), 3, "AuthFailed")
    assert profiles.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["profiles.toml"]


@pytest.mark.parametrize(("args", "missing"), [
    ((), "no SecretId"),
    (("--secret-id", "AKIDsomething"), "no SecretKey"),
])
def test_configure_without_a_key_and_no_terminal_is_a_usage_error(
        server: ServerProcess, tmp_path: Path, args: tuple[str, ...], missing: str) -> None:
    profiles = tmp_path / "profiles.toml"
    done = run(clean_env(profiles), "configure", "--endpoint", server.base_url, *args)
    assert_usage(done, missing)
    assert not profiles.exists()


@pytest.mark.parametrize(("content", "fragment"), [
    (None, "--credentials-json: cannot read"),
    ("not json", "--credentials-json: cannot read"),
    ('{"AppId": "1250000000"}', "no SecretId in the document"),
])
def test_configure_with_a_bad_credentials_json(tmp_path: Path, content: str | None,
                                               fragment: str) -> None:
    source = tmp_path / "account.json"
    if content is not None:
        source.write_text(content)
    profiles = tmp_path / "profiles.toml"
    done = run(clean_env(profiles), "configure", "--no-check", "--credentials-json",
               str(source))
    assert_usage(done, fragment)
    assert not profiles.exists()


def test_configure_takes_the_endpoint_from_the_environment(server: ServerProcess,
                                                           account: Account,
                                                           tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    done = run(clean_env(profiles, DATACOFFER_ENDPOINT=server.base_url), "configure",
               "--no-check", "--credentials-json",
               str(account_json(tmp_path / "a.json", account)))
    ok(done)
    assert tomllib.loads(profiles.read_text())["default"]["endpoint"] == server.base_url


def test_configure_writes_the_profile_named_by_datacoffer_profile(
        server: ServerProcess, account: Account, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    env = clean_env(profiles, DATACOFFER_PROFILE="prod")
    ok(run(env, "configure", "--endpoint", server.base_url, "--no-check",
           "--credentials-json", str(account_json(tmp_path / "a.json", account))))
    assert list(tomllib.loads(profiles.read_text())) == ["prod"]
    ok(run(env, "ls"))


# -- credentials and endpoints -----------------------------------------------------------


def test_environment_credentials_without_a_profile_file(server: ServerProcess,
                                                        account: Account, coffer: str,
                                                        sdk: Client, tmp_path: Path) -> None:
    sdk.put_object(coffer, "env.txt", b"from the environment")
    profiles = tmp_path / "nowhere" / "profiles.toml"
    env = clean_env(profiles, DATACOFFER_ENDPOINT=server.base_url,
                    DATACOFFER_SECRET_ID=account.secret_id,
                    DATACOFFER_SECRET_KEY=account.secret_key)
    assert ok(run(env, "ls", f"dc://{coffer}")) == "env.txt\n"
    assert ok(run(env, "cat", f"dc://{coffer}/env.txt", binary=True)) == \
        b"from the environment"
    assert not profiles.parent.exists()


def test_environment_key_wins_over_the_profile_and_arguments_over_both(
        server: ServerProcess, account: Account, coffer: str, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    closed = f"http://127.0.0.1:{free_port()}"
    credentials.write_profile("default", {"endpoint": closed, "secret_id": account.secret_id,
                                          "secret_key": "wrong"}, profiles)
    env = clean_env(profiles)
    # the profile's key is wrong: the environment's pair is used whole
    pair = {"DATACOFFER_SECRET_ID": account.secret_id,
            "DATACOFFER_SECRET_KEY": account.secret_key}
    done = run({**env, **pair, "DATACOFFER_ENDPOINT": server.base_url}, "stat",
               f"dc://{coffer}")
    assert ok(done).startswith(f"Coffer       {coffer}\n")
    # --endpoint beats DATACOFFER_ENDPOINT (closed here)
    done = run({**env, **pair, "DATACOFFER_ENDPOINT": closed}, "stat", f"dc://{coffer}",
               "--endpoint", server.base_url)
    assert ok(done).startswith(f"Coffer       {coffer}\n")
    # the profile's wrong key is used when the environment has none
    assert_service_error(run(env, "stat", f"dc://{coffer}", "--endpoint", server.base_url),
                         3, "AuthFailed")


def test_half_a_key_pair_in_the_environment_is_refused(dc: Dc, coffer: str,
                                                       account: Account) -> None:
    done = dc("ls", DATACOFFER_SECRET_ID=account.secret_id)
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr.startswith("error: incomplete credentials in the environment: "
                                  "secret_id is set but secret_key is not"), done.stderr


def test_no_credentials_at_all(tmp_path: Path) -> None:
    done = run(clean_env(tmp_path / "profiles.toml"), "ls")
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr.startswith("error: no credentials: "), done.stderr
    done = run(clean_env(tmp_path / "profiles.toml"), "ls", "--json")
    assert done.returncode == 3
    assert json.loads(done.stderr)["Error"]["Code"] == ""


def test_unknown_profile(dc: Dc, home: Path) -> None:
    done = dc("ls", "--profile", "nosuch")
    assert done.returncode == 3
    assert done.stderr == (f"error: no profile 'nosuch' in {home / 'profiles.toml'}\n")


def test_closed_port_is_a_network_failure(dc: Dc) -> None:
    done = dc("ls", "--endpoint", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    assert "Connect" in lines[0], done.stderr


# -- mb and rb ---------------------------------------------------------------------------


def test_mb_in_two_locations(dc: Dc, sdk: Client, coffer_name: str) -> None:
    done = dc("mb", f"dc://{coffer_name}", "--location", "ap-tianjin", "--location",
              "ap-shanghai")
    assert ok(done) == f"made dc://{coffer_name}/ in ap-tianjin, ap-shanghai\n"
    assert done.stderr == ""
    assert sdk.get_coffer(coffer_name).locations == ["ap-tianjin", "ap-shanghai"]


def test_mb_json(dc: Dc, sdk: Client, coffer_name: str) -> None:
    done = dc("mb", f"dc://{coffer_name}", "--location", "ap-guangzhou", "--json")
    assert ok_json(done) == {"Coffer": coffer_name, "Locations": ["ap-guangzhou"],
                             "EncryptType": 0}
    assert sdk.get_coffer(coffer_name).locations == ["ap-guangzhou"]


def test_mb_takes_the_profile_region(server: ServerProcess, account: Account, sdk: Client,
                                     coffer_name: str, tmp_path: Path) -> None:
    env = clean_env(write_profile(tmp_path / "p.toml", server, account,
                                  region="ap-guangzhou"))
    assert ok(run(env, "mb", f"dc://{coffer_name}")) == \
        f"made dc://{coffer_name}/ in ap-guangzhou\n"
    assert sdk.get_coffer(coffer_name).locations == ["ap-guangzhou"]


def test_mb_without_a_location_or_profile_region(dc: Dc, sdk: Client,
                                                 coffer_name: str) -> None:
    assert_usage(dc("mb", f"dc://{coffer_name}"), "give at least one --location REGION")
    with pytest.raises(errors.NotFound):
        sdk.get_coffer(coffer_name)


def test_mb_of_a_coffer_already_owned(dc: Dc, coffer: str) -> None:
    done = dc("mb", f"dc://{coffer}", "--location", "ap-tianjin")
    assert_service_error(done, 5, "CofferAlreadyOwnedByYou")
    done = dc("mb", f"dc://{coffer}", "--location", "ap-tianjin", "--json")
    assert done.returncode == 5
    assert done.stdout == ""
    error = json.loads(done.stderr)["Error"]
    assert set(error) == {"Code", "Message", "Resource", "RequestId", "TraceId"}
    assert error["Code"] == "CofferAlreadyOwnedByYou"
    assert error["Resource"] == coffer
    assert re.fullmatch(r"[0-9a-f]+", error["RequestId"])
    assert re.fullmatch(r"[0-9a-f]+", error["TraceId"])


@pytest.mark.parametrize("name", ["Bad_Name-1250000000", "x-1250000000"])
def test_mb_with_an_invalid_name(dc: Dc, name: str) -> None:
    assert_service_error(dc("mb", f"dc://{name}", "--location", "ap-tianjin"), 2,
                         "InvalidCofferName")


def test_mb_and_rb_take_no_key(dc: Dc, coffer_name: str) -> None:
    assert_usage(dc("mb", f"dc://{coffer_name}/key", "--location", "ap-tianjin"),
                 "mb takes a coffer (dc://COFFER), not an object key")
    assert_usage(dc("rb", f"dc://{coffer_name}/key"),
                 "rb takes a coffer (dc://COFFER), not an object key")
    assert_usage(dc("mb", "s3://x-1250000000"), "is not a dc://coffer/key address")


def test_rb(dc: Dc, sdk: Client, coffer: str) -> None:
    done = dc("rb", f"dc://{coffer}")
    assert ok(done) == f"removed dc://{coffer}/\n"
    assert done.stderr == ""
    with pytest.raises(errors.NoSuchCoffer):
        sdk.get_coffer(coffer)
    # gone now: 4
    assert_service_error(dc("rb", f"dc://{coffer}"), 4, "NoSuchCoffer")


def test_rb_json(dc: Dc, coffer: str) -> None:
    assert ok_json(dc("rb", f"dc://{coffer}", "--json")) == {"Coffer": coffer,
                                                             "Removed": True}


def test_rb_of_a_coffer_with_objects(dc: Dc, sdk: Client, coffer: str) -> None:
    sdk.put_object(coffer, "keep.txt", b"kept")
    assert_service_error(dc("rb", f"dc://{coffer}"), 5, "CofferNotEmpty")
    assert read(sdk, coffer, "keep.txt") == b"kept"


# -- ls ----------------------------------------------------------------------------------


def test_ls_coffers(server: ServerProcess, tmp_path: Path) -> None:
    acc = new_account(server)
    env = clean_env(write_profile(tmp_path / "p.toml", server, acc))
    first, second = f"la-{acc.app_id}", f"lb-{acc.app_id}"
    ok(run(env, "mb", f"dc://{first}", "--location", "ap-tianjin", "--location",
           "ap-shanghai"))
    ok(run(env, "mb", f"dc://{second}", "--location", "ap-guangzhou"))
    with Client(server.base_url, acc.secret_id, acc.secret_key) as own:
        created = {c.name: c.created for c in own.list_coffers().coffers}

    assert ok(run(env, "ls")) == f"{first}\n{second}\n"
    assert ok(run(env, "ls", "-l")).splitlines() == [
        f"{when(created[first])}  {first}  ap-tianjin,ap-shanghai  encrypt-type 0",
        f"{when(created[second])}  {second}  ap-guangzhou  encrypt-type 0",
    ]
    assert ok_json(run(env, "ls", "-l", "--json")) == [
        {"Name": first, "Locations": ["ap-tianjin", "ap-shanghai"],
         "CreationDate": iso(created[first]), "EncryptType": 0},
        {"Name": second, "Locations": ["ap-guangzhou"], "CreationDate": iso(created[second]),
         "EncryptType": 0},
    ]
    doc = ok_json(run(env, "ls", "--json"))
    assert isinstance(doc, list)
    assert doc == [
        {"Name": first, "Locations": ["ap-tianjin", "ap-shanghai"],
         "CreationDate": iso(created[first])},
        {"Name": second, "Locations": ["ap-guangzhou"], "CreationDate": iso(created[second])},
    ]


def test_ls_coffers_json_uses_capitalised_names(dc: Dc, coffer: str) -> None:
    doc = ok_json(dc("ls", "--json"))
    assert isinstance(doc, list) and doc
    for entry in doc:
        assert all(k[0].isupper() for k in entry), entry


@pytest.fixture
def listed(sdk: Client, coffer: str) -> dict[str, bytes]:
    """Objects at three levels in `coffer`."""
    objects = {"a.txt": b"a", "dir/b.txt": b"bb", "dir/sub/c.txt": b"ccc",
               "dir/sub/deeper/d.txt": b"dddd", "other/e.txt": b"eeeee", "z.txt": b"zz"}
    for key, data in objects.items():
        sdk.put_object(coffer, key, data)
    return objects


def long_line(sdk: Client, coffer: str, key: str, data: bytes) -> str:
    info = sdk.head_object(coffer, key)
    return f"{when(info.last_modified)}  {len(data):>10}  {key}  {md5(data)}"


def test_ls_objects_one_level(dc: Dc, sdk: Client, coffer: str,
                              listed: dict[str, bytes]) -> None:
    assert ok(dc("ls", f"dc://{coffer}")) == "dir/\nother/\na.txt\nz.txt\n"
    assert ok(dc("ls", f"dc://{coffer}/")) == "dir/\nother/\na.txt\nz.txt\n"
    assert ok(dc("ls", f"dc://{coffer}/dir/")) == "dir/sub/\ndir/b.txt\n"
    assert ok(dc("ls", f"dc://{coffer}/di")) == "dir/\n"
    assert ok(dc("ls", f"dc://{coffer}/nothing/")) == ""
    assert ok(dc("ls", "-l", f"dc://{coffer}")).splitlines() == [
        f"{'PRE':>30}  dir/",
        f"{'PRE':>30}  other/",
        long_line(sdk, coffer, "a.txt", listed["a.txt"]),
        long_line(sdk, coffer, "z.txt", listed["z.txt"]),
    ]


def test_ls_objects_recursive(dc: Dc, sdk: Client, coffer: str,
                              listed: dict[str, bytes]) -> None:
    assert ok(dc("ls", "-r", f"dc://{coffer}")) == "".join(f"{k}\n" for k in sorted(listed))
    assert ok(dc("ls", "-r", "-l", f"dc://{coffer}/dir/")).splitlines() == [
        long_line(sdk, coffer, k, listed[k]) for k in sorted(listed) if k.startswith("dir/")]


def test_ls_objects_json(dc: Dc, sdk: Client, coffer: str,
                         listed: dict[str, bytes]) -> None:
    stamps = {o.key: iso(o.last_modified) for o in sdk.list_objects(coffer)}

    def entry(key: str) -> dict[str, object]:
        return {"Key": key, "Size": len(listed[key]), "ETag": md5(listed[key]),
                "LastModified": stamps[key]}

    assert ok_json(dc("ls", "--json", f"dc://{coffer}/dir/")) == [
        {"Prefix": "dir/sub/"}, entry("dir/b.txt")]
    assert ok_json(dc("ls", "--json", "-r", f"dc://{coffer}/dir/")) == [
        entry(k) for k in sorted(listed) if k.startswith("dir/")]
    assert ok_json(dc("ls", "--json", f"dc://{coffer}")) == [
        {"Prefix": "dir/"}, {"Prefix": "other/"}, entry("a.txt"), entry("z.txt")]
    assert ok_json(dc("ls", "--json", f"dc://{coffer}/nothing/")) == []


def test_ls_of_a_missing_coffer(dc: Dc, coffer_name: str) -> None:
    assert_service_error(dc("ls", f"dc://{coffer_name}"), 4, "NoSuchCoffer")


# -- cp up -------------------------------------------------------------------------------


def test_cp_file_to_a_prefix_takes_the_file_name(dc: Dc, sdk: Client, coffer: str,
                                                 tmp_path: Path) -> None:
    (tmp_path / "report.txt").write_bytes(b"quarterly\n")
    done = dc("cp", "report.txt", f"dc://{coffer}/2026/", cwd=tmp_path)
    assert summary(ok(done)) == "copied 1 file (10 B)"
    assert done.stderr == ""
    assert read(sdk, coffer, "2026/report.txt") == b"quarterly\n"
    # a bare coffer: the key is the file's name
    ok(dc("cp", str(tmp_path / "report.txt"), f"dc://{coffer}"))
    assert read(sdk, coffer, "report.txt") == b"quarterly\n"


def test_cp_file_to_an_explicit_key(dc: Dc, sdk: Client, coffer: str,
                                    tmp_path: Path) -> None:
    data = random_bytes(5000, 2)
    (tmp_path / "blob.bin").write_bytes(data)
    done = dc("cp", "blob.bin", f"dc://{coffer}/x/named.dat", "--json", cwd=tmp_path)
    assert ok_json(done) == [{"Source": "blob.bin", "Destination": f"dc://{coffer}/x/named.dat",
                              "Size": 5000, "State": "copied", "ETag": md5(data),
                              "ResumedParts": 0}]
    assert done.stderr == ""
    assert read(sdk, coffer, "x/named.dat") == data
    assert [o.key for o in sdk.list_objects(coffer)] == ["x/named.dat"]


def test_cp_content_type_shows_in_stat(dc: Dc, sdk: Client, coffer: str,
                                       tmp_path: Path) -> None:
    data = b"<p>hello</p>\n"
    (tmp_path / "page.html").write_bytes(data)
    ok(dc("cp", str(tmp_path / "page.html"), f"dc://{coffer}/page.html", "--content-type",
          "text/html"))
    info = sdk.head_object(coffer, "page.html")
    assert ok(dc("stat", f"dc://{coffer}/page.html")).splitlines() == [
        "Key           page.html",
        f"Size          {len(data)}",
        f"ETag          {md5(data)}",
        f"SHA256        {sha256(data)}",
        "Parts         1",
        "ContentType   text/html",
        f"LastModified  {when(info.last_modified)} UTC",
        "EncryptType   0",
        "Expiration    -",
    ]


def test_cp_the_same_file_again_is_already_there(dc: Dc, sdk: Client, coffer: str,
                                                 tmp_path: Path) -> None:
    (tmp_path / "same.txt").write_bytes(b"same bytes\n")
    ok(dc("cp", "same.txt", f"dc://{coffer}/same.txt", cwd=tmp_path))
    done = dc("cp", "same.txt", f"dc://{coffer}/same.txt", cwd=tmp_path)
    assert summary(ok(done)) == "copied 0 files (0 B); 1 already there"
    assert done.stderr == ""
    done = dc("cp", "same.txt", f"dc://{coffer}/same.txt", "--json", cwd=tmp_path)
    assert ok_json(done) == [{"Source": "same.txt", "Destination": f"dc://{coffer}/same.txt",
                              "Size": 11, "State": "skipped", "ETag": "",
                              "ResumedParts": 0}]


def test_cp_another_file_to_a_taken_key_is_a_conflict(dc: Dc, sdk: Client, coffer: str,
                                                      tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_bytes(b"first\n")
    (tmp_path / "two.txt").write_bytes(b"other\n")  # same size, other bytes
    ok(dc("cp", "one.txt", f"dc://{coffer}/k.txt", cwd=tmp_path))
    done = dc("cp", "two.txt", f"dc://{coffer}/k.txt", cwd=tmp_path)
    assert_service_error(done, 5, "ObjectAlreadyExistsOwnedByYou", stdout=False)
    done = dc("cp", "two.txt", f"dc://{coffer}/k.txt", "--json", cwd=tmp_path)
    assert done.returncode == 5
    assert json.loads(done.stderr.splitlines()[-1])["Error"]["Code"] == \
        "ObjectAlreadyExistsOwnedByYou"
    assert read(sdk, coffer, "k.txt") == b"first\n"


def test_cp_recursive_with_one_conflict(dc: Dc, sdk: Client, coffer: str,
                                        tree: Path) -> None:
    sdk.put_object(coffer, "up/top.txt", b"not the same\n")
    rest = sum(len(v) for k, v in files_under(tree).items() if k != "top.txt")
    done = dc("cp", "-r", str(tree), f"dc://{coffer}/up/")
    assert done.returncode == 5, done.stderr
    assert summary(done.stdout) == f"copied 3 files ({rest / 1024:.1f} KiB); 1 failed"
    failed = [line for line in done.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1, done.stderr
    assert failed[0].startswith(f"failed: {tree / 'top.txt'} -> dc://{coffer}/up/top.txt: "
                                "ObjectAlreadyExistsOwnedByYou: "), done.stderr
    assert read(sdk, coffer, "up/top.txt") == b"not the same\n"
    assert read(sdk, coffer, "up/a/note.md") == b"# note\n"


@pytest.mark.parametrize(("args", "fragment"), [
    (("missing.txt", "dc://c-1250000000/"), "missing.txt: no such file"),
    (("tree", "dc://c-1250000000/"), "tree is a directory: use --recursive"),
    (("dc://c-1250000000/a", "dc://c-1250000000/b"), "one of SOURCE and DESTINATION"),
    (("tree/top.txt", "copy.txt"), "one of SOURCE and DESTINATION"),
    (("--part-size", "lots", "tree/top.txt", "dc://c-1250000000/"), "is not a size"),
])
def test_cp_usage_errors(dc: Dc, tree: Path, args: tuple[str, ...], fragment: str) -> None:
    assert_usage(dc("cp", *args, cwd=tree.parent), fragment)


# -- cp down -----------------------------------------------------------------------------


def test_cp_download_to_a_directory_and_to_a_file_name(dc: Dc, sdk: Client, coffer: str,
                                                       tmp_path: Path) -> None:
    data = random_bytes(10_000, 3)
    sdk.put_object(coffer, "docs/paper.pdf", data)
    target = tmp_path / "out"
    target.mkdir()
    done = dc("cp", f"dc://{coffer}/docs/paper.pdf", str(target))
    assert summary(ok(done)) == "copied 1 file (9.8 KiB)"
    assert done.stderr == ""
    assert os.listdir(target) == ["paper.pdf"]  # and no hidden temporary file
    assert (target / "paper.pdf").read_bytes() == data

    done = dc("cp", f"dc://{coffer}/docs/paper.pdf", "renamed.pdf", "--json", cwd=target)
    assert ok_json(done) == [{"Source": f"dc://{coffer}/docs/paper.pdf",
                              "Destination": "renamed.pdf", "Size": 10_000,
                              "State": "copied", "ETag": md5(data), "ResumedParts": 0}]
    assert sorted(os.listdir(target)) == ["paper.pdf", "renamed.pdf"]
    assert (target / "renamed.pdf").read_bytes() == data

    # the same bytes are there already: skipped
    done = dc("cp", f"dc://{coffer}/docs/paper.pdf", str(target / "paper.pdf"))
    assert summary(ok(done)) == "copied 0 files (0 B); 1 already there"
    # a local file with other bytes is replaced
    (target / "paper.pdf").write_bytes(b"stale")
    assert summary(ok(dc("cp", f"dc://{coffer}/docs/paper.pdf", str(target)))) == \
        "copied 1 file (9.8 KiB)"
    assert (target / "paper.pdf").read_bytes() == data
    assert sorted(os.listdir(target)) == ["paper.pdf", "renamed.pdf"]


def test_cp_download_to_a_new_directory_with_a_slash(dc: Dc, sdk: Client, coffer: str,
                                                     tmp_path: Path) -> None:
    sdk.put_object(coffer, "a.txt", b"a\n")
    ok(dc("cp", f"dc://{coffer}/a.txt", "newdir/", cwd=tmp_path))
    assert (tmp_path / "newdir" / "a.txt").read_bytes() == b"a\n"


def test_cp_download_errors(dc: Dc, sdk: Client, coffer: str, tmp_path: Path) -> None:
    sdk.put_object(coffer, "p/a.txt", b"a")
    assert_service_error(dc("cp", f"dc://{coffer}/p/missing.txt", str(tmp_path)), 4,
                         "ObjectNotExists")
    assert_usage(dc("cp", f"dc://{coffer}/p/", str(tmp_path)), "is a prefix: use --recursive")
    assert_usage(dc("cp", f"dc://{coffer}", str(tmp_path)), "is a prefix: use --recursive")
    assert os.listdir(tmp_path) == []


def test_cp_recursive_up_and_down(dc: Dc, sdk: Client, coffer: str, tree: Path,
                                  tmp_path: Path) -> None:
    local = files_under(tree)
    total = sum(len(v) for v in local.values())
    done = dc("cp", "-r", str(tree), f"dc://{coffer}/up/")
    assert summary(ok(done)) == f"copied 4 files ({total / 1024:.1f} KiB)"
    assert done.stderr == ""
    assert sorted(o.key for o in sdk.list_objects(coffer)) == sorted(
        f"up/{name}" for name in local)
    for name, data in local.items():
        assert read(sdk, coffer, f"up/{name}") == data
    # again: every file is already there
    done = dc("cp", "-r", str(tree), f"dc://{coffer}/up", "--json")
    doc = ok_json(done)
    assert isinstance(doc, list)
    assert sorted(doc, key=lambda d: d["Source"]) == [
        {"Source": str(tree / name), "Destination": f"dc://{coffer}/up/{name}",
         "Size": len(data), "State": "skipped", "ETag": "", "ResumedParts": 0}
        for name, data in sorted(local.items())]

    out = tmp_path / "down"
    done = dc("cp", "-r", f"dc://{coffer}/up/", str(out))
    assert summary(ok(done)) == f"copied 4 files ({total / 1024:.1f} KiB)"
    assert files_under(out) == local  # and no hidden temporary file
    # a prefix without its slash, into an existing directory
    out2 = tmp_path / "down2"
    out2.mkdir()
    ok(dc("cp", "-r", f"dc://{coffer}/up", str(out2)))
    assert files_under(out2) == local
    # downloading again: already there
    done = dc("cp", "-r", f"dc://{coffer}/up/", str(out))
    assert summary(ok(done)) == "copied 0 files (0 B); 4 already there"


def test_cp_multipart_upload_and_download(dc: Dc, sdk: Client, coffer: str,
                                          tmp_path: Path) -> None:
    data = random_bytes(3 * MiB + MiB // 2, 4)
    (tmp_path / "mp.bin").write_bytes(data)
    done = dc("cp", "--threshold", "2M", "--part-size", "1M", str(tmp_path / "mp.bin"),
              f"dc://{coffer}/mp.bin")
    assert summary(ok(done)) == "copied 1 file (3.5 MiB)"
    parts = [data[i:i + MiB] for i in range(0, len(data), MiB)]
    etag = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-4"
    sha = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).hexdigest()
    stat_lines = ok(dc("stat", f"dc://{coffer}/mp.bin")).splitlines()
    assert stat_lines[:5] == ["Key           mp.bin", f"Size          {len(data)}",
                              f"ETag          {etag}", f"SHA256        {sha}-4",
                              "Parts         4"]
    assert ok_json(dc("stat", "--json", f"dc://{coffer}/mp.bin"))["Parts"] == 4  # type: ignore[index]

    out = tmp_path / "out"
    out.mkdir()
    done = dc("cp", f"dc://{coffer}/mp.bin", str(out), "--threshold", "2M", "--part-size",
              "1M")
    assert summary(ok(done)) == "copied 1 file (3.5 MiB)"
    assert os.listdir(out) == ["mp.bin"]  # no hidden temporary file left beside it
    assert (out / "mp.bin").read_bytes() == data
    # a part boundary inside a range of cat
    assert ok(dc("cat", "--range", f"{MiB - 3}-{MiB + 2}", f"dc://{coffer}/mp.bin",
                 binary=True)) == data[MiB - 3:MiB + 3]


def test_cp_resumes_an_interrupted_multipart_upload(dc: Dc, sdk: Client, coffer: str,
                                                    tmp_path: Path) -> None:
    data = random_bytes(3 * MiB + MiB // 2, 5)
    (tmp_path / "resume.bin").write_bytes(data)
    upload = sdk.initiate_multipart_upload(coffer, "r/resume.bin")
    sdk.upload_part(coffer, "r/resume.bin", upload.upload_id, 1, data[:MiB], length=MiB)

    done = dc("cp", "--threshold", "2M", "--part-size", "1M", str(tmp_path / "resume.bin"),
              f"dc://{coffer}/r/")
    assert summary(ok(done)) == "copied 1 file (3.5 MiB); 1 parts resumed"
    assert read(sdk, coffer, "r/resume.bin") == data
    assert sdk.head_object(coffer, "r/resume.bin", part_number=1).parts_count == 4
    assert list(sdk.iter_uploads(coffer)) == []


@pytest.mark.parametrize(("args", "fragment"), [
    (("--part-size", "0"), "Invalid value for '--part-size': '0' is below the minimum of "
                           "1048576 bytes"),
    (("--part-size", "1"), "Invalid value for '--part-size': '1' is below the minimum of "
                           "1048576 bytes"),
    (("--part-size", "1023K"), "Invalid value for '--part-size': '1023K' is below the minimum "
                               "of 1048576 bytes"),
    (("--threshold", "0"), "Invalid value for '--threshold': '0' is below the minimum of 1 "
                           "bytes"),
])
def test_cp_part_size_and_threshold_minimums(dc: Dc, sdk: Client, coffer: str, tree: Path,
                                             args: tuple[str, ...], fragment: str) -> None:
    done = dc("cp", *args, "top.txt", f"dc://{coffer}/min/top.txt", cwd=tree)
    assert_usage(done, fragment)
    assert done.stderr.startswith("Usage: "), done.stderr
    assert list(sdk.list_objects(coffer)) == []
    # the minimum itself is accepted
    done = dc("cp", "--part-size", "1M", "--threshold", "1", "top.txt",
              f"dc://{coffer}/min/top.txt", cwd=tree)
    assert summary(ok(done)) == "copied 1 file (4 B)"


def test_cp_recursive_download_reports_keys_it_cannot_map(dc: Dc, sdk: Client, coffer: str,
                                                          tmp_path: Path) -> None:
    # "col/a//b" and "col/a/b" are both the file a/b; "col/" and "col/dir/" name no file
    sdk.put_object(coffer, "col/a//b", b"double slash\n")
    sdk.put_object(coffer, "col/a/b", b"single slash\n")
    sdk.put_object(coffer, "col/dir/", b"d")  # (an object cannot be empty)
    sdk.put_object(coffer, "col/", b"c")
    keys = [o.key for o in sdk.list_objects(coffer)]
    # listed, and so taken, in UTF-8 byte order: "/" (0x2f) sorts before "b" (0x62)
    assert keys == ["col/", "col/a//b", "col/a/b", "col/dir/"]
    assert keys == sorted(keys, key=lambda k: k.encode())

    out = tmp_path / "out"
    done = dc("cp", "-r", f"dc://{coffer}/col/", str(out))
    assert summary(ok(done)) == "copied 1 file (13 B)"
    target = (out / "a" / "b").resolve()
    assert done.stderr.splitlines() == [
        f"skipped dc://{coffer}/col/: a key ending in '/' names no file",
        f"skipped dc://{coffer}/col/a/b: {target} is already the file of "
        f"dc://{coffer}/col/a//b",
        f"skipped dc://{coffer}/col/dir/: a key ending in '/' names no file",
    ]
    assert files_under(out) == {"a/b": b"double slash\n"}  # and no hidden temporary file
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["a", "a/b"]

    done = dc("cp", "-r", "--json", f"dc://{coffer}/col", str(out))
    assert ok_json(done) == [{"Source": f"dc://{coffer}/col/a//b", "Destination": str(target),
                              "Size": 13, "State": "skipped", "ETag": "",
                              "ResumedParts": 0}]
    assert len(done.stderr.splitlines()) == 3
    assert files_under(out) == {"a/b": b"double slash\n"}


def test_cp_recursive_prefix_without_a_slash_is_a_directory(dc: Dc, sdk: Client, coffer: str,
                                                            tmp_path: Path) -> None:
    for key in ("tree/x.txt", "tree/sub/y.txt", "treehouse/z.txt", "tree.bak", "tree"):
        sdk.put_object(coffer, key, key.encode())
    out = tmp_path / "out"
    done = dc("cp", "-r", f"dc://{coffer}/tree", str(out))
    assert summary(ok(done)) == "copied 2 files (24 B)"
    assert done.stderr == ""
    assert files_under(out) == {"x.txt": b"tree/x.txt", "sub/y.txt": b"tree/sub/y.txt"}


def test_cp_recursive_upload_with_parallel_1(dc: Dc, sdk: Client, coffer: str,
                                             tmp_path: Path) -> None:
    root = tmp_path / "three"
    (root / "sub").mkdir(parents=True)
    files = {"one.txt": b"one\n", "sub/two.bin": random_bytes(5000, 8),
             "sub/three.bin": random_bytes(2 * MiB + MiB // 2, 9)}  # in 3 parts
    for name, data in files.items():
        (root / name).write_bytes(data)
    done = dc("cp", "-r", "--parallel", "1", "--threshold", "1M", "--part-size", "1M",
              str(root), f"dc://{coffer}/p1/")
    assert summary(ok(done)) == "copied 3 files (2.5 MiB)"
    assert done.stderr == ""
    assert sorted(o.key for o in sdk.list_objects(coffer)) == sorted(
        f"p1/{name}" for name in files)
    for name, data in files.items():
        assert read(sdk, coffer, f"p1/{name}") == data
    assert sdk.head_object(coffer, "p1/sub/three.bin", part_number=1).parts_count == 3
    # and back down, one file and one part at a time
    out = tmp_path / "back"
    done = dc("cp", "-r", "--parallel", "1", "--threshold", "1M", "--part-size", "1M",
              f"dc://{coffer}/p1/", str(out))
    assert summary(ok(done)) == "copied 3 files (2.5 MiB)"
    assert files_under(out) == files


#: `datacoffer cp` in a process of its own, interrupted by the test: as the command itself,
#: but each file's progress callback prints "started" once the first MiB was reported and
#: sleeps 0.2 s per chunk (a slow link: 40 parts over 2 workers take at least 4 s); "reported
#: N" at the end tells how far the transfer got.
CP_INTERRUPTED = """
import sys
import threading
import time

import datacoffer.cli.copy as copy
from datacoffer.cli.main import cli

MiB = 1024 * 1024
lock = threading.Lock()
reported = 0
real_file = copy.Bars.file


def file(self, name, size):
    advance, done = real_file(self, name, size)

    def slow(count):
        global reported
        with lock:
            before, reported = reported, reported + count
        if before < MiB <= reported:
            print("started", flush=True)
        time.sleep(0.2)
        advance(count)

    return slow, done


copy.Bars.file = file
try:
    cli(sys.argv[1:], prog_name="datacoffer")
finally:
    print(f"reported {reported}", flush=True)
"""


def interrupt_cp(dc: Dc, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `cp ARGS` with the slowed progress callback; SIGINT once it has started. Fails
    unless it exits within 5 s of SIGINT."""
    script = tmp_path / "cp_interrupted.py"
    script.write_text(CP_INTERRUPTED)
    child = subprocess.Popen([sys.executable, str(script), "cp", *args], env=dc.env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        first = child.stdout.readline()  # type: ignore[union-attr]
        if first != "started\n":
            child.wait(60)
            raise AssertionError((first, child.communicate()))
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            raise AssertionError("cp did not stop within 5 s of SIGINT") from None
        assert time.monotonic() - sent < 5
        out, err = child.communicate()
        return subprocess.CompletedProcess(child.args, child.returncode, out, err)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_ctrl_c_stops_cp(dc: Dc, sdk: Client, coffer: str, tmp_path: Path,
                         direction: str) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(random_bytes(40 * MiB, 10))
    options = ("--threshold", "1M", "--part-size", "1M", "--parallel", "2")
    out = tmp_path / "out"
    out.mkdir()
    if direction == "upload":
        done = interrupt_cp(dc, tmp_path, *options, str(source), f"dc://{coffer}/ctrl-c.bin")
    else:
        sdk.upload_file(coffer, "ctrl-c.bin", source,
                        config=TransferConfig(threshold=MiB, part_size=MiB))
        done = interrupt_cp(dc, tmp_path, *options, f"dc://{coffer}/ctrl-c.bin", str(out))
    assert done.returncode == 1, done
    assert done.stderr.splitlines()[-1] == "Aborted!", done.stderr
    found = re.fullmatch(r"reported (\d+)\n", done.stdout)
    assert found is not None, done.stdout  # no summary line: nothing was copied
    assert int(found.group(1)) < 40 * MiB
    if direction == "upload":
        (upload,) = sdk.list_multipart_uploads(coffer, prefix="ctrl-c.bin").uploads
        assert len(sdk.list_parts(coffer, "ctrl-c.bin", upload.upload_id).parts) < 40
    assert os.listdir(out) == []  # no file, no hidden temporary file

# -- cat, stat, presign ------------------------------------------------------------------


def test_cat(dc: Dc, sdk: Client, coffer: str) -> None:
    data = bytes(range(256)) * 3
    sdk.put_object(coffer, "bin/all bytes é.bin", data)
    target = f"dc://{coffer}/bin/all bytes é.bin"
    done = dc("cat", target, binary=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data
    assert done.stderr == b""
    assert ok(dc("cat", "--range", "2-5", target, binary=True)) == data[2:6]
    assert ok(dc("cat", "--range", "700-", target, binary=True)) == data[700:]


def test_cat_errors(dc: Dc, sdk: Client, coffer: str) -> None:
    sdk.put_object(coffer, "six.txt", b"hello\n")
    assert_service_error(dc("cat", f"dc://{coffer}/missing"), 4, "ObjectNotExists")
    # an object-level operation: CofferNotFound (errors.md)
    assert_service_error(dc("cat", f"dc://{coffer_missing(coffer)}/x"), 4, "CofferNotFound")
    assert_service_error(dc("cat", "--range", "10-20", f"dc://{coffer}/six.txt"), 2,
                         "InvalidRange")
    assert_usage(dc("cat", "--range", "x", f"dc://{coffer}/six.txt"),
                 "expected FIRST-LAST or FIRST-")
    assert_usage(dc("cat", f"dc://{coffer}"), "names no object key")


def test_cat_with_a_backwards_range(dc: Dc, sdk: Client, coffer: str) -> None:
    sdk.put_object(coffer, "six.txt", b"hello\n")
    assert_usage(dc("cat", "--range", "5-2", f"dc://{coffer}/six.txt"), "--range")


def test_stat_object(dc: Dc, sdk: Client, coffer: str) -> None:
    data = b"stat me\n"
    sdk.put_object(coffer, "s/one.txt", data)
    info = sdk.head_object(coffer, "s/one.txt")
    assert ok(dc("stat", f"dc://{coffer}/s/one.txt")) == "".join(f"{line}\n" for line in [
        "Key           s/one.txt",
        f"Size          {len(data)}",
        f"ETag          {md5(data)}",
        f"SHA256        {sha256(data)}",
        "Parts         1",
        "ContentType   application/octet-stream",
        f"LastModified  {when(info.last_modified)} UTC",
        "EncryptType   0",
        "Expiration    -",
    ])
    assert ok_json(dc("stat", "--json", f"dc://{coffer}/s/one.txt")) == {
        "Key": "s/one.txt", "Size": len(data), "ETag": md5(data), "SHA256": sha256(data),
        "Parts": 1, "ContentType": "application/octet-stream",
        "LastModified": iso(info.last_modified), "EncryptType": 0, "Expiration": None}


def test_stat_coffer(dc: Dc, coffer_name: str) -> None:
    ok(dc("mb", f"dc://{coffer_name}", "--location", "ap-shanghai", "--location",
          "ap-guangzhou", "--location", "ap-tianjin"))
    assert ok(dc("stat", f"dc://{coffer_name}")) == (
        f"Coffer       {coffer_name}\n"
        "Locations    ap-shanghai, ap-guangzhou, ap-tianjin\n"
        "EncryptType  0\n")
    assert ok_json(dc("stat", "--json", f"dc://{coffer_name}/")) == {
        "Coffer": coffer_name, "Locations": ["ap-shanghai", "ap-guangzhou", "ap-tianjin"],
        "EncryptType": 0}


def test_stat_missing(dc: Dc, coffer: str) -> None:
    assert_service_error(dc("stat", f"dc://{coffer}/missing"), 4, "ObjectNotExists")
    assert_service_error(dc("stat", f"dc://{coffer_missing(coffer)}"), 4, "NoSuchCoffer")
    done = dc("stat", "--json", f"dc://{coffer}/missing")
    assert done.returncode == 4
    assert done.stdout == ""
    assert json.loads(done.stderr)["Error"]["Code"] == "ObjectNotExists"


def test_presign_get(dc: Dc, sdk: Client, coffer: str, server: ServerProcess) -> None:
    data = b"shared without credentials\n"
    sdk.put_object(coffer, "share/a file é.txt", data)
    url = ok(dc("presign", f"dc://{coffer}/share/a file é.txt")).rstrip("\n")
    assert url.startswith(server.base_url + "/")
    assert "\n" not in url
    r = httpx.get(url)
    assert r.status_code == 200, r.text
    assert r.content == data

    doc = ok_json(dc("presign", "--json", "--expires", "600", f"dc://{coffer}/share/a file é.txt"))
    assert isinstance(doc, dict)
    assert set(doc) == {"URL", "Method", "Expires"}
    assert doc["Method"] == "GET"
    assert doc["Expires"] == 600
    r = httpx.get(doc["URL"])
    assert r.status_code == 200, r.text
    assert r.content == data
    # the URL is for this object only
    other = doc["URL"].replace("a%20file", "another%20file")
    assert httpx.get(other).status_code != 200


def test_presign_put(dc: Dc, sdk: Client, coffer: str) -> None:
    doc = ok_json(dc("presign", "--json", "--method", "put", f"dc://{coffer}/dropbox.bin"))
    assert isinstance(doc, dict)
    assert doc["Method"] == "PUT"
    assert doc["Expires"] == 3600
    r = httpx.put(doc["URL"], content=b"dropped in")
    assert r.status_code == 200, r.text
    assert read(sdk, coffer, "dropbox.bin") == b"dropped in"


def test_presign_usage(dc: Dc, coffer: str) -> None:
    assert_usage(dc("presign", f"dc://{coffer}/k", "--expires", "0"), "--expires")
    assert_usage(dc("presign", f"dc://{coffer}/k", "--method", "DELETE"), "--method")


# -- uploads -----------------------------------------------------------------------------


def test_uploads_ls_and_abort(dc: Dc, sdk: Client, coffer: str) -> None:
    assert ok(dc("uploads", "ls", f"dc://{coffer}")) == ""
    assert ok_json(dc("uploads", "ls", "--json", f"dc://{coffer}")) == []
    first = sdk.initiate_multipart_upload(coffer, "big/one.bin")
    second = sdk.initiate_multipart_upload(coffer, "big/two.bin")
    third = sdk.initiate_multipart_upload(coffer, "small/three.bin")
    started = {u.upload_id: u.initiated for u in sdk.iter_uploads(coffer)}
    assert all(started.values())

    def line(u: object) -> str:
        return f"{when(started[u.upload_id])}  {u.upload_id}  {u.key}"  # type: ignore[attr-defined,index]

    assert ok(dc("uploads", "ls", f"dc://{coffer}")).splitlines() == [
        line(first), line(second), line(third)]
    assert ok_json(dc("uploads", "ls", "--json", f"dc://{coffer}/big/")) == [
        {"Key": u.key, "UploadId": u.upload_id, "Initiated": iso(started[u.upload_id])}  # type: ignore[arg-type]
        for u in (first, second)]

    # abort by key: the one upload of that key
    done = dc("uploads", "abort", f"dc://{coffer}/big/one.bin")
    assert ok(done) == f"aborted upload {first.upload_id} of dc://{coffer}/big/one.bin\n"
    # abort by id, with --json
    done = dc("uploads", "abort", f"dc://{coffer}/small/three.bin", "--upload-id",
              third.upload_id, "--json")
    assert ok_json(done) == {"Key": "small/three.bin", "UploadId": third.upload_id,
                             "Aborted": True}
    assert [u.upload_id for u in sdk.iter_uploads(coffer)] == [second.upload_id]
    assert ok(dc("uploads", "ls", f"dc://{coffer}")).splitlines() == [line(second)]


def test_uploads_abort_without_an_upload(dc: Dc, sdk: Client, coffer: str) -> None:
    # found out by listing the uploads: no request of its own, so no ids
    done = dc("uploads", "abort", f"dc://{coffer}/none.bin")
    assert done.returncode == 4
    assert done.stdout == ""
    assert done.stderr == (f"error: NoSuchUpload: No upload is in progress for "
                           f"dc://{coffer}/none.bin.\n")
    upload = sdk.initiate_multipart_upload(coffer, "some.bin")
    # an id that is not the key's upload
    assert_service_error(dc("uploads", "abort", f"dc://{coffer}/none.bin", "--upload-id",
                            upload.upload_id), 4, "NoSuchUpload")
    # ListMultipartUploads is operation 18 of api.md, object-level: CofferNotFound
    assert_service_error(dc("uploads", "ls", f"dc://{coffer_missing(coffer)}"), 4,
                         "CofferNotFound")
    assert [u.key for u in sdk.iter_uploads(coffer)] == ["some.bin"]


# -- progress bars -----------------------------------------------------------------------


def test_progress_bars(dc: Dc, coffer: str, tmp_path: Path) -> None:
    source = tmp_path / "p.bin"
    source.write_bytes(random_bytes(300_000, 6))
    done = dc("cp", "--progress", str(source), f"dc://{coffer}/bar/1.bin")
    assert summary(ok(done)) == "copied 1 file (293.0 KiB)"
    assert "total (1 file)" in done.stderr
    assert "293.0/293.0 KiB" in done.stderr
    # DATACOFFER_PROGRESS=1 draws it too, although stderr is not a terminal
    done = dc("cp", str(source), f"dc://{coffer}/bar/2.bin", DATACOFFER_PROGRESS="1")
    assert "total (1 file)" in done.stderr
    # a download's bar
    done = dc("cp", "--progress", f"dc://{coffer}/bar/1.bin", str(tmp_path / "back.bin"))
    assert "total (1 file)" in done.stderr
    # recursive: the total counts the files
    done = dc("cp", "-r", "--progress", f"dc://{coffer}/bar/", str(tmp_path / "both"))
    assert "total (2 files)" in done.stderr


def test_no_progress_bars(dc: Dc, coffer: str, tmp_path: Path) -> None:
    source = tmp_path / "p.bin"
    source.write_bytes(random_bytes(300_000, 7))
    done = dc("cp", "--no-progress", str(source), f"dc://{coffer}/nobar/1.bin")
    assert summary(ok(done)) == "copied 1 file (293.0 KiB)"
    assert done.stderr == ""
    # not a terminal: no bar by default
    done = dc("cp", str(source), f"dc://{coffer}/nobar/2.bin")
    assert summary(ok(done)) == "copied 1 file (293.0 KiB)"
    assert done.stderr == ""
    # the flag wins over the environment
    done = dc("cp", "--no-progress", str(source), f"dc://{coffer}/nobar/3.bin",
              DATACOFFER_PROGRESS="1")
    assert done.stderr == ""
    done = dc("cp", str(source), f"dc://{coffer}/nobar/4.bin", DATACOFFER_PROGRESS="0")
    assert done.stderr == ""


# -- help --------------------------------------------------------------------------------

CLIENT_COMMANDS = ["configure", "mb", "rb", "ls", "cp", "cat", "stat", "presign",
                   "uploads ls", "uploads abort"]


@pytest.mark.parametrize("command", CLIENT_COMMANDS)
def test_help_of_each_command_has_examples(dc: Dc, command: str) -> None:
    done = dc(*command.split(), "--help")
    out = ok(done)
    # (`python -m datacoffer` names itself so; the console script says `datacoffer`)
    assert re.match(rf"Usage: (python -m )?datacoffer {command} ", out), out
    # "Examples:", or "Example:" where there is one (rb, uploads ls, uploads abort)
    heading = re.search(r"^  Examples?:\n((?:    .*\n)+)", out, re.MULTILINE)
    assert heading, out
    examples = [line.strip() for line in heading.group(1).splitlines()]
    assert any(e.startswith(f"datacoffer {command} ") for e in examples), examples
    for option in ("--profile", "--endpoint", "--json"):
        assert option in out


def test_help_of_the_uploads_group(dc: Dc) -> None:
    out = ok(dc("uploads", "--help"))
    assert re.search(r"^  ls\s", out, re.MULTILINE), out
    assert re.search(r"^  abort\s", out, re.MULTILINE), out


def test_help_lists_every_command(dc: Dc) -> None:
    out = ok(dc("--help"))
    section = out.split("\nCommands:\n", 1)[1]
    listed = re.findall(r"^  (\S+)", section, re.MULTILINE)
    assert listed == ["serve", "admin", "configure", "mb", "rb", "ls", "cp", "cat", "stat",
                      "presign", "uploads", "policy", "lifecycle"]
