"""Replication to a coffer's other Locations (service.md "Regions and replication"; errors.md
DataSynchronization; core/replication.py, core/copies.py, core/integrity.py).

Covered, each against real server processes of this module (never the shared server: a
replication pass copies whatever every coffer of its server is owed):

- the lag, held still on a `serve --no-background` server: a region that lacks the copy
  answers HeadObject/GetObject with `409 DataSynchronization` (naming that region), the primary
  serves, `admin status` counts what is owed, DeleteCoffer waits (DataSynchronization); then
  `admin run replication` copies, and every region serves the same bytes from a byte-identical
  file; a single-region coffer queues nothing;
- multipart objects (every part blob in every region) and encrypted ones (the bytes stay
  encrypted: replicas are the primary's ciphertext, byte for byte);
- the background worker closing the lag by itself (paced by `replication_rate`, set through
  DATACOFFER_REPLICATION_RATE), resuming a queue left by a stopped server, and finishing a
  copy whose worker was killed (SIGKILL) half-way: no blob and no corrupt copy, only a
  temporary file that the next start removes; a start removes only the temporary files of
  dead writers (a live process of this host's are kept, another host's until idle an hour);
- failures: a region directory that refuses writes (a failed pass, its queue row's attempts
  and back-off, a manual pass ignoring the back-off, recovery once restored, also by the
  background worker with `replication_retry_max = 1`), and a damaged source, which is never
  copied (a good copy in another region is used instead);
- several processes at once: two `admin run replication` passes make each copy once (an
  entry is claimed, with a holder and a lease, before it is copied); an entry claimed by a
  live process is left to it, one claimed by a dead process taken over;
- `Client.object_regions` and `datacoffer stat --regions`, the settings' checks, and the
  help texts.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from datacoffer.client import Client
from datacoffer.config import ConfigError, load
from datacoffer.core.clock import iso8601
from tests.conftest import Account
from tests.serverproc import BIN, NO_RETRY, ServerProcess, SignedClient
from tests.test_api_coffers import assert_common, assert_error
from tests.test_cli_client import Dc, assert_usage, clean_env, ok, ok_json, when, write_profile
from tests.test_cli_policy import closed_endpoint
from tests.test_lifecycle_sweep import Stored, change, query, stored

MiB = 1024 * 1024
TIANJIN, SHANGHAI, GUANGZHOU = "ap-tianjin", "ap-shanghai", "ap-guangzhou"
ALL = (TIANJIN, SHANGHAI, GUANGZHOU)
APP_ID, UIN = "1250000000", "100000000001"
#: the temporary name of a copy in the target region's tmp/ (core/integrity.py)
#: a copy's temporary file: <blob>.<pid>.<host tag>.<random> (core/integrity.copy_blob)
COPY_TMP = r"{blob}\.[0-9]+\.[0-9a-f]{{8}}\.[0-9a-f]{{8}}"
_names = itertools.count(1)


def now_ms() -> int:
    return int(time.time() * 1000)


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.05)


# -- servers -------------------------------------------------------------------------------


def start(base: Path, settings: str, *, background: bool,
          env: dict[str, str] | None = None) -> ServerProcess:
    """A server on `base`/data with a TOML configuration of `settings` (plus room for many
    coffers); the configuration file is kept for later servers on the same data."""
    config = base / "datacoffer.toml"
    if not config.exists():
        config.write_text(f"max_coffers = 1000\nmin_part_size = 5\n{settings}")
    srv = ServerProcess(base / "data", config=config, background=background, env=env)
    srv.start()
    return srv


@dataclass
class World:
    """The account of one of this module's servers, with an SDK (no retries) and a raw client
    whose requests can name a region in their Host."""

    srv: ServerProcess
    account: Account
    sdk: Client
    raw: SignedClient

    @classmethod
    def create(cls, srv: ServerProcess) -> World:
        doc = srv.admin("account", "create", "--app-id", APP_ID, "--uin", UIN)
        acc = Account(APP_ID, UIN, doc["SecretId"], doc["SecretKey"])
        return cls(srv, acc, Client(srv.base_url, acc.secret_id, acc.secret_key,
                                    retry=NO_RETRY),
                   SignedClient(srv.base_url, acc.secret_id, acc.secret_key))

    @classmethod
    def on(cls, srv: ServerProcess, like: World) -> World:
        """The same account, through another server process on the same data."""
        acc = like.account
        return cls(srv, acc, Client(srv.base_url, acc.secret_id, acc.secret_key,
                                    retry=NO_RETRY),
                   SignedClient(srv.base_url, acc.secret_id, acc.secret_key))

    @property
    def data(self) -> Path:
        return self.srv.data_dir

    @property
    def db(self) -> Path:
        return self.srv.data_dir / "metadata.db"

    def coffer(self, *regions: str, encrypt_type: int = 0, key_id: str | None = None,
               key_region: str | None = None) -> str:
        name = f"rp{next(_names)}-{APP_ID}"
        self.sdk.create_coffer(name, list(regions), encrypt_type=encrypt_type, key_id=key_id,
                               key_region=key_region)
        return name

    def put(self, coffer: str, key: str, data: bytes) -> Stored:
        self.sdk.put_object(coffer, key, data)
        return stored(self.db, coffer, key)

    def put_multipart(self, coffer: str, key: str, parts: list[bytes]) -> Stored:
        upload = self.sdk.initiate_multipart_upload(coffer, key)
        done = [self.sdk.upload_part(coffer, key, upload.upload_id, n, data, length=len(data))
                for n, data in enumerate(parts, 1)]
        self.sdk.complete_multipart_upload(coffer, key, upload.upload_id, done)
        return stored(self.db, coffer, key)

    def addressed(self, method: str, coffer: str, key: str, region: str | None,
                  **params: str) -> httpx.Response:
        """A request whose Host names `region` (`cdcs.<Region>.…`), or none."""
        headers = {"Host": f"cdcs.{region}.example.com"} if region else {}
        return self.raw.request(method, f"/{coffer}/{key}", headers=headers,
                                params=params or None)

    def close(self) -> None:
        self.sdk.close()
        self.raw.close()


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """`serve --no-background`: nothing is copied but by `admin run replication`. Every test
    that uses it leaves the queue empty (a pass copies what every coffer is owed)."""
    srv = start(tmp_path_factory.mktemp("repl-quiet"), "", background=False)
    world = World.create(srv)
    yield world
    world.close()
    srv.stop()


#: the pace of the background server's replication reads (DATACOFFER_REPLICATION_RATE): a
#: copy reserves 1 MiB of it per read, so copying 3 MiB (four reads) to two regions takes
#: 3.5 s, long enough to see the lag
BUSY_RATE = 2 * MiB


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A server with its replication worker: a pass every second, failed copies retried
    after at most a second."""
    srv = start(tmp_path_factory.mktemp("repl-busy"),
                "replication_interval = 1\nreplication_retry_max = 1\n", background=True,
                env={"DATACOFFER_REPLICATION_RATE": str(BUSY_RATE)})
    world = World.create(srv)
    yield world
    world.close()
    srv.stop()


# -- metadata, files, passes -----------------------------------------------------------------


def queue_of(world: World, obj: Stored) -> dict[str, tuple[int, int, str]]:
    """The object's queue rows: region -> (attempts, next_ms, last_error)."""
    return {r: (a, n, e) for r, a, n, e in query(
        world.db, "SELECT region, attempts, next_ms, last_error FROM replication_queue "
                  "WHERE object_id = ?", obj.id)}


def copies_of(world: World, obj: Stored) -> set[str]:
    return {r for (r,) in query(world.db, "SELECT region FROM object_copies WHERE object_id = ?",
                                obj.id)}


def blob_file(world: World, region: str, blob_id: str) -> Path:
    return world.data / "regions" / region / "blobs" / blob_id[:2] / blob_id


def tmp_files(world: World, region: str) -> list[str]:
    return sorted(p.name for p in (world.data / "regions" / region / "tmp").iterdir())


def assert_files(world: World, obj: Stored, primary: str, regions: tuple[str, ...]) -> None:
    """Every blob of the object lies in each of `regions`, byte-identical to the primary's
    file, and nowhere else; no region keeps a temporary file of it."""
    for blob_id in obj.blob_ids:
        original = blob_file(world, primary, blob_id).read_bytes()
        for region in ALL:
            path = blob_file(world, region, blob_id)
            if region in regions:
                assert path.read_bytes() == original, (region, blob_id)
            else:
                assert not path.exists(), (region, blob_id)
            assert not [n for n in tmp_files(world, region) if n.startswith(blob_id)]


def stored_bytes(world: World, obj: Stored, region: str) -> int:
    """What a copy of the object to another region reports: its files' bytes."""
    return sum(blob_file(world, region, b).stat().st_size for b in obj.blob_ids)


def run_pass(world: World, runner: ServerProcess | None = None) -> dict[str, Any]:
    """`datacoffer admin run replication` (with the configuration and environment of
    `runner`, another ServerProcess on the same data, or of the world's server): its
    document."""
    doc: dict[str, Any] = (runner or world.srv).admin("run", "replication")
    assert list(doc) == ["Copied", "Failed", "Pending", "Copies", "Failures"]
    assert (doc["Copied"], doc["Failed"]) == (len(doc["Copies"]), len(doc["Failures"]))
    doc["Copies"].sort(key=lambda c: (c["Coffer"], c["Key"], c["Region"]))
    doc["Failures"].sort(key=lambda f: (f["Coffer"], f["Key"], f["Region"]))
    return doc


def copied(world: World, obj: Stored, primary: str, *regions: str) -> list[dict[str, Any]]:
    """The "Copies" entries of the object's copies to `regions`."""
    return [{"Coffer": obj.coffer, "Key": obj.key, "Region": r,
             "Bytes": stored_bytes(world, obj, primary)} for r in sorted(regions)]


def status(world: World) -> tuple[dict[str, Any], dict[str, int]]:
    """`admin status`: its "Replication" document, and what each region is owed."""
    doc = world.srv.admin("status")
    return doc["Replication"], {r["Name"]: r["Owed"] for r in doc["Regions"]}


IDLE = {"Pending": 0, "Failing": 0, "LagSeconds": 0.0, "Oldest": None}
NOTHING_OWED = dict.fromkeys(ALL, 0)


def assert_pending(world: World, obj: Stored, *regions: str) -> None:
    """Each region answers reads of the object with DataSynchronization, naming itself."""
    for region in regions:
        for method in ("HEAD", "GET"):
            assert_error(world.addressed(method, obj.coffer, obj.key, region), 409,
                         "DataSynchronization", f"{obj.coffer}/{obj.key}", region=region)


def assert_served(world: World, obj: Stored, data: bytes, *regions: str) -> None:
    """Each region serves the object's exact bytes, naming itself."""
    for region in regions:
        r = world.addressed("GET", obj.coffer, obj.key, region)
        assert (r.status_code, r.content) == (200, data), (region, r.status_code, r.text)
        assert_common(r, region=region)
        h = world.addressed("HEAD", obj.coffer, obj.key, region)
        assert (h.status_code, h.headers["x-cdcs-coffer-region"],
                h.headers["content-length"]) == (200, region, str(len(data)))


def held(world: World, obj: Stored, region: str) -> bool:
    return world.addressed("HEAD", obj.coffer, obj.key, region).status_code == 200


def assert_delete_refused(world: World, coffer: str, code: str, primary: str) -> None:
    assert_error(world.raw.delete(f"/{coffer}"), 409, code, coffer, region=primary)


def flip_byte(path: Path, offset: int) -> bytes:
    """Damage one byte of a file in place (same size); returns the original content."""
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[offset] ^= 0xFF
    path.write_bytes(bytes(damaged))
    return original


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """No file can be created in `directory` until the block ends.

    A non-root process gets mode 0o500. Root ignores permission bits (the tests may run as
    root), so for root the directory gets the immutable attribute instead (`chattr +i`, on
    ext4/xfs/btrfs, with root's CAP_LINUX_IMMUTABLE): creating a file in it fails with EPERM
    even for root. Replacing the directory with a regular file or a dangling symlink would
    not do: every opening of the installation (a server's start, each admin command)
    re-creates the region's tree and would then fail as a whole, so the copy would never be
    tried. A probe checks that the chosen way really refuses a write here; where it does not
    (no chattr, a filesystem without the attribute), the test is skipped.
    """
    as_root = os.geteuid() == 0
    mode = directory.stat().st_mode & 0o7777
    if as_root:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a directory unwritable")
        done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not supported here: {done.stderr!r}")
    else:
        directory.chmod(0o500)
    try:
        probe = directory / "probe"
        try:
            probe.touch()
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip(f"{directory} stays writable (as root: {as_root})")
        yield
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        else:
            directory.chmod(mode)


def assert_refused_write(error: str, tmp_dir: Path, blob: str) -> None:
    """The Error of a copy that could not create its temporary file: EACCES for a non-root
    writer, EPERM for root in an immutable directory (see `unwritable`)."""
    assert re.fullmatch(r"PermissionError: \[Errno (13|1)\] "
                        r"(Permission denied|Operation not permitted): '"
                        + re.escape(str(tmp_dir)) + "/" + COPY_TMP.format(blob=blob) + "'",
                        error), error


def random_bytes(size: int, seed: int) -> bytes:
    return bytes(hashlib.shake_256(seed.to_bytes(4, "big")).digest(size))


# -- 1. the lag held still, then one pass --------------------------------------------------


def test_lag_is_visible_until_a_pass_copies(quiet: World) -> None:
    coffer = quiet.coffer(TIANJIN, SHANGHAI, GUANGZHOU)
    data = random_bytes(3000, 1)
    obj = quiet.put(coffer, "lag.bin", data)

    # written with the object: its primary copy, and an entry per other Location
    assert copies_of(quiet, obj) == {TIANJIN}
    queue = queue_of(quiet, obj)
    assert {r: (a, e) for r, (a, _, e) in queue.items()} == {SHANGHAI: (0, ""),
                                                            GUANGZHOU: (0, "")}
    assert all(abs(n - obj.created_ms) < 1000 for _, n, _ in queue.values())
    assert_files(quiet, obj, TIANJIN, (TIANJIN,))

    assert_served(quiet, obj, data, TIANJIN)
    r = quiet.addressed("GET", coffer, "lag.bin", None)  # a Host naming no region: primary
    assert (r.status_code, r.headers["x-cdcs-coffer-region"], r.content) == (200, TIANJIN, data)
    assert_pending(quiet, obj, SHANGHAI, GUANGZHOU)

    lag, owed = status(quiet)
    oldest = query(quiet.db, "SELECT min(created_ms) FROM replication_queue")[0][0]
    assert {k: lag[k] for k in ("Pending", "Failing", "Oldest")} == {
        "Pending": 2, "Failing": 0, "Oldest": iso8601(oldest)}
    assert 0 < lag["LagSeconds"] < 60
    assert owed == {TIANJIN: 0, SHANGHAI: 1, GUANGZHOU: 1}

    # DeleteCoffer waits for the queue of that coffer only
    assert_delete_refused(quiet, coffer, "DataSynchronization", TIANJIN)
    empty = quiet.coffer(TIANJIN, SHANGHAI)
    assert quiet.raw.delete(f"/{empty}").status_code == 204

    assert run_pass(quiet) == {"Copied": 2, "Failed": 0, "Pending": 0,
                               "Copies": copied(quiet, obj, TIANJIN, SHANGHAI, GUANGZHOU),
                               "Failures": []}
    assert_served(quiet, obj, data, *ALL)
    assert status(quiet) == (IDLE, NOTHING_OWED)
    assert_delete_refused(quiet, coffer, "CofferNotEmpty", TIANJIN)
    assert_files(quiet, obj, TIANJIN, ALL)
    assert copies_of(quiet, obj) == set(ALL)
    assert queue_of(quiet, obj) == {}
    # nothing is owed any more: a pass does nothing
    assert run_pass(quiet) == {"Copied": 0, "Failed": 0, "Pending": 0, "Copies": [],
                               "Failures": []}


def test_a_single_region_coffer_queues_nothing(quiet: World) -> None:
    coffer = quiet.coffer(SHANGHAI)
    obj = quiet.put(coffer, "alone.txt", b"only here")
    assert queue_of(quiet, obj) == {}
    assert copies_of(quiet, obj) == {SHANGHAI}
    assert status(quiet) == (IDLE, NOTHING_OWED)
    assert_served(quiet, obj, b"only here", SHANGHAI)
    assert_delete_refused(quiet, coffer, "CofferNotEmpty", SHANGHAI)
    assert run_pass(quiet)["Copied"] == 0
    assert_files(quiet, obj, SHANGHAI, (SHANGHAI,))


# -- 2. and 3. multipart and encrypted objects -------------------------------------------------


@pytest.mark.parametrize("encrypt_type", [0, 1], ids=["plain", "type1"])
def test_multipart_object_is_copied_part_by_part(quiet: World, encrypt_type: int) -> None:
    coffer = quiet.coffer(SHANGHAI, TIANJIN, GUANGZHOU, encrypt_type=encrypt_type)
    parts = [random_bytes(7000, 2), random_bytes(5, 3), random_bytes(300, 4)]
    data = b"".join(parts)
    obj = quiet.put_multipart(coffer, "mp.bin", parts)
    assert len(obj.blob_ids) == 3
    assert set(queue_of(quiet, obj)) == {TIANJIN, GUANGZHOU}
    assert_pending(quiet, obj, TIANJIN, GUANGZHOU)
    assert_files(quiet, obj, SHANGHAI, (SHANGHAI,))

    assert run_pass(quiet) == {"Copied": 2, "Failed": 0, "Pending": 0,
                               "Copies": copied(quiet, obj, SHANGHAI, TIANJIN, GUANGZHOU),
                               "Failures": []}
    assert_files(quiet, obj, SHANGHAI, ALL)
    assert_served(quiet, obj, data, *ALL)
    for region in (TIANJIN, GUANGZHOU):  # one part, from the region's own copy
        r = quiet.addressed("GET", coffer, "mp.bin", region, partNumber="2")
        assert (r.status_code, r.content, r.headers["x-cdcs-coffer-region"]) == (
            206, parts[1], region)
        assert r.headers["x-cdcs-encrypt-type"] == str(encrypt_type)


@pytest.mark.parametrize("encrypt_type", [1, 2], ids=["type1", "type2"])
def test_encrypted_copies_stay_encrypted(quiet: World, encrypt_type: int) -> None:
    key: dict[str, str] = {}
    if encrypt_type == 2:
        quiet.srv.admin("role", "grant", "--app-id", APP_ID)
        made = quiet.srv.admin("kms", "create-key", "--app-id", APP_ID)
        key = {"key_id": made["KeyId"], "key_region": made["KeyRegion"]}
    coffer = quiet.coffer(TIANJIN, GUANGZHOU, SHANGHAI, encrypt_type=encrypt_type, **key)
    marker = f"PLAINTEXT-OF-TYPE-{encrypt_type}-".encode()
    data = marker * 5000  # more than one encryption chunk
    obj = quiet.put(coffer, "secret.txt", data)
    assert_pending(quiet, obj, GUANGZHOU, SHANGHAI)

    doc = run_pass(quiet)
    assert doc == {"Copied": 2, "Failed": 0, "Pending": 0,
                   "Copies": copied(quiet, obj, TIANJIN, GUANGZHOU, SHANGHAI), "Failures": []}
    assert all(c["Bytes"] > len(data) for c in doc["Copies"])  # the ciphertext was copied
    assert_files(quiet, obj, TIANJIN, ALL)
    for region in ALL:
        assert marker not in blob_file(quiet, region, obj.blob_ids[0]).read_bytes()
    assert_served(quiet, obj, data, *ALL)
    r = quiet.addressed("GET", coffer, "secret.txt", SHANGHAI)
    assert r.headers["x-cdcs-encrypt-type"] == str(encrypt_type)


# -- 4. the background worker ------------------------------------------------------------------


def test_background_worker_closes_the_lag(busy: World) -> None:
    coffer = busy.coffer(TIANJIN, SHANGHAI, GUANGZHOU)
    data = random_bytes(3 * MiB, 5)
    obj = busy.put(coffer, "bg.bin", data)
    put_done = time.monotonic()
    # the copies take at least 1.5 s at BUSY_RATE: the lag is there right after the put
    assert_pending(busy, obj, SHANGHAI, GUANGZHOU)
    assert set(queue_of(busy, obj)) == {SHANGHAI, GUANGZHOU}

    wait_until(lambda: held(busy, obj, SHANGHAI) and held(busy, obj, GUANGZHOU), 20,
               "the background worker copied the object")
    # paced by DATACOFFER_REPLICATION_RATE: six reads of 1 MiB, each paid after it is read,
    # so the sixth starts no sooner than 2.5 s after the first
    assert time.monotonic() - put_done > 2.5
    assert_served(busy, obj, data, *ALL)
    assert_files(busy, obj, TIANJIN, ALL)
    assert status(busy) == (IDLE, NOTHING_OWED)
    assert "replication pass: 2 copies made, 0 failed" in busy.srv.log()


# -- 5. and 7. crash and restart -------------------------------------------------------------


def test_a_worker_killed_mid_copy_leaves_no_copy_and_the_copy_resumes(
        tmp_path: Path) -> None:
    # 1 MiB/s: the copy of 6 MiB takes 6 s, time enough to kill it half-way
    srv = start(tmp_path, "replication_interval = 1\nreplication_rate = 1048576\n",
                background=True)
    world = World.create(srv)
    try:
        coffer = world.coffer(TIANJIN, SHANGHAI)
        data = random_bytes(6 * MiB, 6)
        obj = world.put(coffer, "big.bin", data)
        (blob,) = obj.blob_ids
        pattern = re.compile(COPY_TMP.format(blob=blob))
        tmp_dir = world.data / "regions" / SHANGHAI / "tmp"

        def half_copied() -> bool:
            return any(pattern.fullmatch(p.name) and p.stat().st_size >= MiB
                       for p in tmp_dir.iterdir())

        wait_until(half_copied, 10, "a copy under way in ap-shanghai/tmp")
        srv.kill()
        (leftover,) = tmp_files(world, SHANGHAI)
        assert pattern.fullmatch(leftover)
        assert 0 < (tmp_dir / leftover).stat().st_size < len(data)
        assert not blob_file(world, SHANGHAI, blob).exists()
        assert queue_of(world, obj).keys() == {SHANGHAI}
        assert copies_of(world, obj) == {TIANJIN}
    finally:
        world.close()
        srv.stop()

    # a quiet restart: the stray temporary file goes at start, the lag is still there
    again = ServerProcess(world.data, config=srv.config, background=False,
                          env={"DATACOFFER_REPLICATION_RATE": "0"})
    again.start()
    world = World.on(again, world)
    try:
        assert tmp_files(world, SHANGHAI) == []
        assert_pending(world, obj, SHANGHAI)
        assert_served(world, obj, data, TIANJIN)
        assert run_pass(world) == {"Copied": 1, "Failed": 0, "Pending": 0,
                                   "Copies": copied(world, obj, TIANJIN, SHANGHAI),
                                   "Failures": []}
        assert_served(world, obj, data, TIANJIN, SHANGHAI)
        assert_files(world, obj, TIANJIN, (TIANJIN, SHANGHAI))
    finally:
        world.close()
        again.stop()


def test_a_restarted_server_works_off_the_queue(tmp_path: Path) -> None:
    srv = start(tmp_path, "replication_interval = 1\n", background=False)
    world = World.create(srv)
    try:
        coffer = world.coffer(GUANGZHOU, TIANJIN, SHANGHAI)
        simple = world.put(coffer, "one", b"first object")
        parts = [random_bytes(10, 7), random_bytes(6, 8)]
        multi = world.put_multipart(coffer, "two", parts)
        assert query(world.db, "SELECT count(*) FROM replication_queue") == [(4,)]
    finally:
        world.close()
        srv.stop()
    again = ServerProcess(world.data, config=srv.config, background=True)
    again.start()
    world = World.on(again, world)
    try:
        wait_until(lambda: all(held(world, o, r) for o in (simple, multi) for r in ALL), 20,
                   "the restarted server copied both objects")
        assert_served(world, simple, b"first object", *ALL)
        assert_served(world, multi, b"".join(parts), *ALL)
        for obj in (simple, multi):
            assert_files(world, obj, GUANGZHOU, ALL)
            assert copies_of(world, obj) == set(ALL)
        assert query(world.db, "SELECT count(*) FROM replication_queue") == [(0,)]
    finally:
        world.close()
        again.stop()


def host_tag(host: str) -> str:
    """How a copy's temporary file names the host of its writer (core/objects._host_tag)."""
    return hashlib.sha256(host.encode()).hexdigest()[:8]


def dead_pid() -> int:
    """The pid of a process that has ended (not reused in the moments a test lasts)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_start_removes_only_abandoned_copy_files(quiet: World, tmp_path: Path) -> None:
    """Temporary files of copies ("<blob>.<pid>.<host tag>.<random>") in a region's tmp/ at a
    server's start: one of a live process of this host is kept, one of a dead process of
    this host removed; one of another host is kept while it was written to within the hour
    (its process cannot be asked), removed once idle for longer."""
    tmp_dir = quiet.data / "regions" / SHANGHAI / "tmp"
    mine, theirs, gone = host_tag(socket.gethostname()), host_tag("elsewhere.example"), dead_pid()

    def name(pid: int, tag: str) -> str:
        return f"{secrets.token_hex(16)}.{pid}.{tag}.{secrets.token_hex(4)}"

    alive, dead, recent, idle = (name(os.getpid(), mine), name(gone, mine), name(gone, theirs),
                                 name(os.getpid(), theirs))
    for file in (alive, dead, recent, idle):
        (tmp_dir / file).write_bytes(b"half a copy")
    hours_ago = time.time() - 2 * 3600
    os.utime(tmp_dir / idle, (hours_ago, hours_ago))
    again = ServerProcess(quiet.data, config=quiet.srv.config, background=False)
    again.log_path = tmp_path / "again.log"
    try:
        again.start()
        assert tmp_files(quiet, SHANGHAI) == sorted([alive, recent])
        assert "'stray_files': 2" in again.log()
    finally:
        again.stop()
        for file in (alive, dead, recent, idle):
            (tmp_dir / file).unlink(missing_ok=True)


# -- 6. a region that refuses writes ----------------------------------------------------------


def test_an_unwritable_region_fails_the_copy_until_restored(quiet: World) -> None:
    coffer = quiet.coffer(TIANJIN, GUANGZHOU)
    tmp_dir = quiet.data / "regions" / GUANGZHOU / "tmp"
    with unwritable(tmp_dir):
        obj = quiet.put(coffer, "stuck.txt", b"waiting for a disk")
        (blob,) = obj.blob_ids
        before = now_ms()
        doc = run_pass(quiet)
        after = now_ms()
        assert (doc["Copied"], doc["Failed"], doc["Pending"], doc["Copies"]) == (0, 1, 1, [])
        (failure,) = doc["Failures"]
        error = failure.pop("Error")
        assert failure.pop("NextAttempt") == iso8601(queue_of(quiet, obj)[GUANGZHOU][1])
        assert failure == {"Coffer": coffer, "Key": "stuck.txt", "Region": GUANGZHOU,
                           "Attempts": 1}
        assert_refused_write(error, tmp_dir, blob)
        # the first back-off: 1 s, times a jitter of 0.5-1
        attempts, next_ms, last_error = queue_of(quiet, obj)[GUANGZHOU]
        assert (attempts, last_error) == (1, error)
        assert before + 500 <= next_ms <= after + 1000
        lag, owed = status(quiet)
        assert (lag["Pending"], lag["Failing"], owed[GUANGZHOU]) == (1, 1, 1)
        assert_pending(quiet, obj, GUANGZHOU)

        # a manual pass ignores the back-off: put the next attempt an hour away
        assert change(quiet.db, "UPDATE replication_queue SET next_ms = ? WHERE object_id = ?",
                      now_ms() + 3_600_000, obj.id) == 1
        doc = run_pass(quiet)
        assert [(f["Region"], f["Attempts"]) for f in doc["Failures"]] == [(GUANGZHOU, 2)]
        assert_refused_write(doc["Failures"][0]["Error"], tmp_dir, blob)
        assert queue_of(quiet, obj)[GUANGZHOU][0] == 2
    assert tmp_files(quiet, GUANGZHOU) == []
    assert_pending(quiet, obj, GUANGZHOU)

    assert run_pass(quiet) == {"Copied": 1, "Failed": 0, "Pending": 0,
                               "Copies": copied(quiet, obj, TIANJIN, GUANGZHOU),
                               "Failures": []}
    assert status(quiet) == (IDLE, NOTHING_OWED)
    assert_served(quiet, obj, b"waiting for a disk", TIANJIN, GUANGZHOU)
    assert_files(quiet, obj, TIANJIN, (TIANJIN, GUANGZHOU))


def test_background_worker_retries_with_back_off_and_recovers(busy: World) -> None:
    coffer = busy.coffer(TIANJIN, SHANGHAI)
    with unwritable(busy.data / "regions" / SHANGHAI / "tmp"):
        obj = busy.put(coffer, "retry.txt", b"try, try again")
        wait_until(lambda: queue_of(busy, obj)[SHANGHAI][0] >= 2, 15,
                   "two failed attempts of the background worker")
        _, next_ms, last_error = queue_of(busy, obj)[SHANGHAI]
        assert last_error.startswith("PermissionError: ")
        # replication_retry_max = 1: never more than a second between attempts
        assert next_ms <= now_ms() + 1000
        lag, _ = status(busy)
        assert (lag["Pending"], lag["Failing"]) == (1, 1)
        assert_pending(busy, obj, SHANGHAI)
    wait_until(lambda: held(busy, obj, SHANGHAI), 10, "the copy after the region came back")
    assert_served(busy, obj, b"try, try again", TIANJIN, SHANGHAI)
    assert_files(busy, obj, TIANJIN, (TIANJIN, SHANGHAI))
    assert status(busy) == (IDLE, NOTHING_OWED)


# -- 8. damaged sources ----------------------------------------------------------------------


def drain(world: World) -> list[dict[str, Any]]:
    """Passes until the queue is empty (a repair of a damaged copy may need a second one,
    once another region holds a good copy); their documents."""
    docs = [run_pass(world)]
    while docs[-1]["Pending"]:
        assert len(docs) < 3, docs
        docs.append(run_pass(world))
    return docs


def copies_made(docs: list[dict[str, Any]], *regions: str) -> list[dict[str, Any]]:
    """The "Copies" entries of these passes for `regions`, in the order `copied` gives."""
    return sorted((c for d in docs for c in d["Copies"] if c["Region"] in regions),
                  key=lambda c: (c["Coffer"], c["Key"], c["Region"]))


def test_a_damaged_source_is_never_copied(quiet: World) -> None:
    coffer = quiet.coffer(TIANJIN, SHANGHAI, GUANGZHOU)
    data = random_bytes(5000, 9)
    obj = quiet.put(coffer, "rot.bin", data)
    primary = blob_file(quiet, TIANJIN, obj.blob_ids[0])
    original = flip_byte(primary, 1234)

    doc = run_pass(quiet)
    error = ("BadCopy: no region holds a good copy (ap-tianjin: its SHA-256 differs from the "
             "recorded one)")
    assert [{k: f[k] for k in ("Coffer", "Key", "Region", "Error", "Attempts")}
            for f in doc["Failures"] if f["Region"] != TIANJIN] == [
        {"Coffer": coffer, "Key": "rot.bin", "Region": r, "Error": error, "Attempts": 1}
        for r in (GUANGZHOU, SHANGHAI)]
    # (the damaged primary may be owed a repair too, which no region can make yet)
    assert [f["Region"] for f in doc["Failures"]] in (
        [GUANGZHOU, SHANGHAI], [GUANGZHOU, SHANGHAI, TIANJIN])
    assert (doc["Copied"], doc["Copies"]) == (0, [])
    assert_files(quiet, obj, TIANJIN, (TIANJIN,))  # no copy, not even a temporary one
    assert_pending(quiet, obj, SHANGHAI, GUANGZHOU)
    assert copies_of(quiet, obj) == {TIANJIN}

    primary.write_bytes(original)
    docs = drain(quiet)
    assert copies_made(docs, SHANGHAI, GUANGZHOU) == copied(quiet, obj, TIANJIN, SHANGHAI,
                                                            GUANGZHOU)
    assert_served(quiet, obj, data, *ALL)
    assert_files(quiet, obj, TIANJIN, ALL)
    assert copies_of(quiet, obj) == set(ALL)


def test_a_good_copy_elsewhere_replaces_a_damaged_one(quiet: World) -> None:
    """The primary is damaged and ap-guangzhou's copy too (and owed again, as a repair would
    leave it): the copy comes from ap-shanghai's good file and replaces the damaged one."""
    coffer = quiet.coffer(TIANJIN, SHANGHAI, GUANGZHOU)
    data = random_bytes(4000, 10)
    obj = quiet.put(coffer, "heal.bin", data)
    assert run_pass(quiet)["Copied"] == 2
    (blob,) = obj.blob_ids
    original = flip_byte(blob_file(quiet, TIANJIN, blob), 10)
    flip_byte(blob_file(quiet, GUANGZHOU, blob), 20)
    assert change(quiet.db, "DELETE FROM object_copies WHERE object_id = ? AND region = ?",
                  obj.id, GUANGZHOU) == 1
    assert change(quiet.db, "INSERT INTO replication_queue (object_id, region, coffer_id, "
                            "created_ms, next_ms, attempts, last_error) SELECT id, ?, "
                            "coffer_id, ?, ?, 0, '' FROM objects WHERE id = ?",
                  GUANGZHOU, now_ms(), now_ms(), obj.id) == 1
    try:
        docs = drain(quiet)
        assert copies_made(docs, GUANGZHOU) == copied(quiet, obj, SHANGHAI, GUANGZHOU)
        # (and perhaps a repair of the damaged primary, from a good copy)
        assert {c["Region"] for d in docs for c in d["Copies"]} <= {GUANGZHOU, TIANJIN}
        assert not [f for d in docs for f in d["Failures"]]
        assert blob_file(quiet, GUANGZHOU, blob).read_bytes() == original
        assert_served(quiet, obj, data, SHANGHAI, GUANGZHOU)
    finally:
        blob_file(quiet, TIANJIN, blob).write_bytes(original)
    assert_files(quiet, obj, TIANJIN, ALL)


# -- 8b. several processes at once -------------------------------------------------------------


def test_two_passes_at_once_make_each_copy_once(quiet: World) -> None:
    """Two `admin run replication` at the same moment, paced (4 MiB/s each) so that they
    overlap, over 8 objects of 1 MiB owed to two regions: each process claims an entry before
    copying it (core/replication._claim), so each of the 16 copies is made by exactly one of
    them."""
    coffer = quiet.coffer(TIANJIN, SHANGHAI, GUANGZHOU)
    objs = [quiet.put(coffer, f"c{n}.bin", random_bytes(MiB, 40 + n)) for n in range(8)]
    paced = ServerProcess(quiet.data, config=quiet.srv.config,
                          env={"DATACOFFER_REPLICATION_RATE": str(4 * MiB)})
    with ThreadPoolExecutor(2) as pool:
        docs = list(pool.map(lambda _: run_pass(quiet, paced), range(2)))
    made = [{(c["Coffer"], c["Key"], c["Region"]) for c in doc["Copies"]} for doc in docs]
    assert [(doc["Copied"], doc["Failed"]) for doc in docs] == [(len(m), 0) for m in made]
    assert sum(doc["Copied"] for doc in docs) == 16
    assert not made[0] & made[1]
    assert made[0] | made[1] == {(coffer, o.key, r) for o in objs for r in (SHANGHAI, GUANGZHOU)}
    assert status(quiet) == (IDLE, NOTHING_OWED)
    for obj in objs:
        assert_files(quiet, obj, TIANJIN, ALL)


def test_a_claimed_entry_is_left_to_its_live_holder(quiet: World) -> None:
    """A queue entry claimed by a live process of this host (its holder "host:pid:token",
    its lease an hour away) is not copied by a pass; claimed by a process that has died, it
    is taken over at once and copied."""
    coffer = quiet.coffer(TIANJIN, SHANGHAI)
    obj = quiet.put(coffer, "claimed.bin", b"mine for now")
    lease = now_ms() + 3_600_000

    def claimed_by(pid: int) -> str:
        holder = f"{socket.gethostname()}:{pid}:x"
        assert change(quiet.db, "UPDATE replication_queue SET holder = ?, lease_until_ms = ? "
                                "WHERE object_id = ?", holder, lease, obj.id) == 1
        return holder

    try:
        holder = claimed_by(os.getpid())
        assert run_pass(quiet) == {"Copied": 0, "Failed": 0, "Pending": 1, "Copies": [],
                                   "Failures": []}
        assert query(quiet.db, "SELECT holder, lease_until_ms, attempts FROM "
                               "replication_queue WHERE object_id = ?", obj.id) == [
            (holder, lease, 0)]
        assert_pending(quiet, obj, SHANGHAI)

        claimed_by(dead_pid())
        assert run_pass(quiet) == {"Copied": 1, "Failed": 0, "Pending": 0,
                                   "Copies": copied(quiet, obj, TIANJIN, SHANGHAI),
                                   "Failures": []}
    finally:  # (never leave a claim that would hold up the module's later passes)
        change(quiet.db, "UPDATE replication_queue SET holder = '', lease_until_ms = 0 "
                         "WHERE object_id = ?", obj.id)
    assert_served(quiet, obj, b"mine for now", TIANJIN, SHANGHAI)
    assert_files(quiet, obj, TIANJIN, (TIANJIN, SHANGHAI))


# -- 9. object_regions and `stat --regions` ---------------------------------------------------


def stat_lines(world: World, obj: Stored, data: bytes, regions: str) -> str:
    info = world.sdk.head_object(obj.coffer, obj.key)
    rows = [("Key", obj.key), ("Size", str(len(data))),
            ("ETag", hashlib.md5(data).hexdigest()),
            ("SHA256", hashlib.sha256(data).hexdigest()), ("Parts", "1"),
            ("ContentType", "application/octet-stream"),
            ("LastModified", f"{when(info.last_modified)} UTC"), ("EncryptType", "0"),
            ("Expiration", "-"), ("Regions", regions)]
    return "".join(f"{name:<12}  {value}\n" for name, value in rows)


@pytest.fixture(scope="module")
def quiet_dc(quiet: World, tmp_path_factory: pytest.TempPathFactory) -> Dc:
    """`datacoffer` with a profile of the quiet server's account."""
    home = tmp_path_factory.mktemp("repl-cli")
    return Dc(clean_env(write_profile(home / "profiles.toml", quiet.srv, quiet.account)))


def test_object_regions_and_stat_regions(quiet: World, quiet_dc: Dc) -> None:
    coffer = quiet.coffer(GUANGZHOU, TIANJIN, SHANGHAI)
    data = b"where are my copies?\n"
    obj = quiet.put(coffer, "where.txt", data)
    target = f"dc://{coffer}/where.txt"

    regions = quiet.sdk.object_regions(coffer, "where.txt")
    assert list(regions.items()) == [(GUANGZHOU, True), (TIANJIN, False), (SHANGHAI, False)]
    assert ok(quiet_dc("stat", "--regions", target)) == stat_lines(
        quiet, obj, data, "ap-guangzhou (copy), ap-tianjin (pending), ap-shanghai (pending)")
    doc = ok_json(quiet_dc("stat", "--regions", "--json", target))
    assert isinstance(doc, dict)
    assert json.dumps(doc["Regions"]) == json.dumps(
        {GUANGZHOU: "copy", TIANJIN: "pending", SHANGHAI: "pending"})
    assert "Regions" not in ok_json(quiet_dc("stat", "--json", target))  # type: ignore[operator]

    assert run_pass(quiet)["Copied"] == 2
    assert list(quiet.sdk.object_regions(coffer, "where.txt").items()) == [
        (GUANGZHOU, True), (TIANJIN, True), (SHANGHAI, True)]
    assert ok(quiet_dc("stat", "--regions", target)) == stat_lines(
        quiet, obj, data, "ap-guangzhou (copy), ap-tianjin (copy), ap-shanghai (copy)")
    doc = ok_json(quiet_dc("stat", "--regions", "--json", target))
    assert doc["Regions"] == dict.fromkeys((GUANGZHOU, TIANJIN, SHANGHAI), "copy")  # type: ignore[index]


def test_stat_regions_of_a_coffer_is_a_usage_error(quiet_dc: Dc) -> None:
    for target in (f"dc://c1-{APP_ID}", f"dc://c1-{APP_ID}/"):
        assert_usage(quiet_dc("stat", "--regions", target, "--endpoint", closed_endpoint()),
                     "--regions tells where an object's copies are: name an object, "
                     "dc://COFFER/KEY")


# -- 10. settings and help --------------------------------------------------------------------


@pytest.fixture
def no_datacoffer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DATACOFFER_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_datacoffer_env")
def test_replication_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load(data_dir=str(tmp_path))
    assert (s.replication_interval, s.replication_workers, s.replication_retry_max,
            s.replication_rate) == (1, 2, 300, 0)
    conf = tmp_path / "c.toml"
    conf.write_text("replication_interval = 5\nreplication_workers = 4\n"
                    "replication_retry_max = 60\nreplication_rate = 1000\n")
    s = load(conf)
    assert (s.replication_interval, s.replication_workers, s.replication_retry_max,
            s.replication_rate) == (5, 4, 60, 1000)
    monkeypatch.setenv("DATACOFFER_REPLICATION_RATE", "2048")
    assert load(conf).replication_rate == 2048
    for name in ("replication_interval", "replication_workers", "replication_retry_max"):
        with pytest.raises(ConfigError, match=rf"^{name} must be at least 1$"):
            load(conf, **{name: 0})
    for value in ("-1", -1):
        monkeypatch.setenv("DATACOFFER_REPLICATION_RATE", str(value))
        with pytest.raises(ConfigError, match=r"^replication_rate must be 0 \(no limit\) or "
                                              r"more$"):
            load(conf)
    monkeypatch.setenv("DATACOFFER_REPLICATION_RATE", "fast")
    with pytest.raises(ConfigError, match=r"^replication_rate: expected a whole number, "
                                          r"got 'fast'$"):
        load(conf)


@pytest.mark.parametrize(("setting", "message"), [
    ("replication_workers = 0", "replication_workers must be at least 1"),
    ("replication_interval = 0", "replication_interval must be at least 1"),
    ("replication_rate = -1", "replication_rate must be 0 (no limit) or more"),
], ids=["workers", "interval", "rate"])
def test_bad_replication_settings_stop_serve_and_admin(quiet: World, tmp_path: Path,
                                                      setting: str, message: str) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(setting + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATACOFFER_")}
    commands = [["serve", "--data-dir", str(tmp_path / "d"), "--no-background"],
                ["admin", "status", "--data-dir", str(quiet.data)],
                ["admin", "run", "replication", "--data-dir", str(quiet.data)]]
    for command in commands:
        done = subprocess.run([*BIN, *command, "--config", str(conf)], capture_output=True,
                              text=True, env=env, timeout=60)
        assert (done.returncode, done.stdout, done.stderr) == (2, "", f"error: {message}\n")
    assert not (tmp_path / "d").exists()


def test_help_texts() -> None:
    def help_of(*command: str) -> str:
        done = subprocess.run([*BIN, *command, "--help"], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return " ".join(done.stdout.split())  # unwrapped

    text = help_of("admin", "run", "replication")
    assert "Examples: datacoffer admin run replication datacoffer admin run replication " \
           "--data-dir /srv/datacoffer" in text
    assert "failed copies are tried again whatever their back-off" in text
    text = help_of("serve")
    assert ("--no-background Run no background worker (lifecycle sweeper, replication, "
            "scrub): `datacoffer admin run lifecycle|replication|scrub` does one pass "
            "instead.") in text
