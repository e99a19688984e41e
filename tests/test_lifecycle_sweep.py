"""The lifecycle sweeper, the only way an object leaves a coffer (service.md "Lifecycle: the
only way data leaves"; api.md 8-9 and `x-cdcs-expiration`; errors.md ObjectNotExists and
AlreadyLock; core/expiry.py): the expiration header, `datacoffer admin run lifecycle
[--now T]`, due objects hidden before any sweep, expiries a crash interrupted, the background
sweeper of `serve` and its absence under `serve --no-background`, and that nothing else is
ever removed.

Every sweep runs against this module's own server processes, never the shared one: a sweep
expires the due objects of every coffer of its server. Objects are made due by moving their
`created_ms` back in metadata.db (the server reads it on every request), or by `--now`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from datacoffer.client import Client
from tests.serverproc import BIN, NO_RETRY, ServerProcess, SignedClient
from tests.test_identities import assert_error

DAY_MS = 86_400_000
MiB = 1024 * 1024
#: objects the sweeper marks per transaction (core/expiry.py)
BATCH = 200
REGIONS = ("ap-guangzhou", "ap-shanghai", "ap-tianjin")
_names = itertools.count(1)


# -- servers -------------------------------------------------------------------------------


def config_file(base: Path) -> Path:
    """Sweeps every second (when the server runs its workers); many coffers per account."""
    path = base / "datacoffer.toml"
    path.write_text("lifecycle_interval = 1\nmax_coffers = 1000\n")
    return path


def start(base: Path, *, background: bool) -> ServerProcess:
    srv = ServerProcess(base / "data", config=config_file(base), background=background)
    srv.start()
    return srv


@dataclass
class World:
    """An account on one of this module's servers, with an SDK (no retries) and a raw client."""

    srv: ServerProcess
    app_id: str
    sdk: Client
    raw: SignedClient

    @classmethod
    def create(cls, srv: ServerProcess, app_id: str, uin: str) -> World:
        doc = srv.admin("account", "create", "--app-id", app_id, "--uin", uin)
        return cls(srv, app_id, Client(srv.base_url, doc["SecretId"], doc["SecretKey"],
                                       retry=NO_RETRY),
                   SignedClient(srv.base_url, doc["SecretId"], doc["SecretKey"]))

    @property
    def db(self) -> Path:
        return self.srv.data_dir / "metadata.db"

    def coffer(self, days: int | None = None, *, encrypt_type: int = 0,
               regions: tuple[str, ...] = ("ap-tianjin",)) -> str:
        """A fresh coffer, with a lifecycle rule of `days` unless None."""
        name = f"lc{next(_names)}-{self.app_id}"
        self.sdk.create_coffer(name, list(regions), encrypt_type=encrypt_type)
        if days is not None:
            self.sdk.put_coffer_lifecycle(name, days)
        return name

    def close(self) -> None:
        self.sdk.close()
        self.raw.close()


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A `serve --no-background` server (lifecycle_interval = 1 in its configuration, unused):
    only `admin run lifecycle` and the server's start expire anything here."""
    srv = start(tmp_path_factory.mktemp("lc-quiet"), background=False)
    world = World.create(srv, "1250000000", "100000000001")
    yield world
    world.close()
    srv.stop()


@pytest.fixture(scope="module")
def sweeping(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A server with its background sweeper running every second (lifecycle_interval = 1)."""
    srv = start(tmp_path_factory.mktemp("lc-sweeping"), background=True)
    world = World.create(srv, "1250000000", "100000000001")
    yield world
    world.close()
    srv.stop()


# -- metadata and files ------------------------------------------------------------------------


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=10) as conn:
        return conn.execute(sql, args).fetchall()


def change(db: Path, sql: str, *args: Any) -> int:
    """Run one UPDATE in metadata.db, behind the server's back; how many rows it changed."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        with conn:
            return conn.execute(sql, args).rowcount
    finally:
        conn.close()


@dataclass(frozen=True)
class Stored:
    """An object's rows as metadata.db holds them."""

    coffer: str
    key: str
    id: int
    created_ms: int
    size: int
    blob_ids: tuple[str, ...]
    upload_ids: tuple[str, ...]


def stored(db: Path, coffer: str, key: str) -> Stored:
    rows = query(db, "SELECT o.id, o.created_ms, o.size, o.blob_id, o.state FROM objects o "
                     "JOIN coffers c ON c.id = o.coffer_id WHERE c.name = ? AND o.key = ?",
                 coffer, key)
    assert len(rows) == 1, rows
    object_id, created_ms, size, blob_id, state = rows[0]
    assert state == "stored"
    uploads = tuple(u for (u,) in query(db, "SELECT upload_id FROM uploads WHERE object_id = ?",
                                        object_id))
    part_blobs = [b for u in uploads for (b,) in query(
        db, "SELECT blob_id FROM parts WHERE upload_id = ? ORDER BY part_number", u)]
    blobs = tuple([blob_id] if blob_id else part_blobs)
    assert blobs and all(blobs)
    return Stored(coffer, key, object_id, created_ms, size, blobs, uploads)


def rows_of(db: Path, obj: Stored) -> dict[str, int]:
    """How many rows of each table still belong to the object."""
    marks = ",".join("?" * len(obj.blob_ids))
    ups = ",".join("?" * len(obj.upload_ids)) or "''"
    return {
        "objects": query(db, "SELECT count(*) FROM objects WHERE id = ?", obj.id)[0][0],
        "object_copies": query(db, "SELECT count(*) FROM object_copies WHERE object_id = ?",
                               obj.id)[0][0],
        "uploads": query(db, f"SELECT count(*) FROM uploads WHERE object_id = ? "
                             f"OR upload_id IN ({ups})", obj.id, *obj.upload_ids)[0][0],
        "parts": query(db, f"SELECT count(*) FROM parts WHERE blob_id IN ({marks}) "
                           f"OR upload_id IN ({ups})", *obj.blob_ids, *obj.upload_ids)[0][0],
    }


NO_ROWS = {"objects": 0, "object_copies": 0, "uploads": 0, "parts": 0}


def region_roots(data_dir: Path) -> list[Path]:
    roots = sorted((data_dir / "regions").iterdir())
    assert [r.name for r in roots] == list(REGIONS)
    return roots


def files_of(data_dir: Path, blob_ids: tuple[str, ...]) -> set[Path]:
    """Every file of these blobs in any region directory (finished or still in tmp/)."""
    wanted = set(blob_ids)
    return {p for p in (data_dir / "regions").rglob("*") if p.is_file() and p.name in wanted}


def replicate(data_dir: Path, obj: Stored) -> set[Path]:
    """Copy the object's blob files into every region, as replicas would lie there (layout of
    storage/blobs.py); returns all its files, one per blob and region."""
    for found in files_of(data_dir, obj.blob_ids):
        relative = found.relative_to(found.parents[2])  # blobs/<ab>/<blob_id>
        assert relative.parts[0] == "blobs"
        for root in region_roots(data_dir):
            if not (root / relative).exists():
                shutil.copyfile(found, root / relative)
    files = files_of(data_dir, obj.blob_ids)
    assert len(files) == len(obj.blob_ids) * len(REGIONS)
    return files


def backdate(world: World, obj: Stored, days: float) -> Stored:
    """Move the object's upload `days` days into the past."""
    shift = int(days * DAY_MS)
    assert change(world.db, "UPDATE objects SET created_ms = created_ms - ? WHERE id = ?",
                  shift, obj.id) == 1
    return stored(world.db, obj.coffer, obj.key)


def backdate_upload(world: World, coffer: str, key: str, days: int) -> None:
    """Move an upload in progress (its upload's row and the row holding its key) `days` days
    into the past."""
    for table in ("objects", "uploads"):
        assert change(world.db, f"UPDATE {table} SET created_ms = created_ms - ? WHERE key = ? "
                                "AND coffer_id = (SELECT id FROM coffers WHERE name = ?)",
                      days * DAY_MS, key, coffer) == 1


def mark_expiring(world: World, obj: Stored) -> None:
    """Leave the object as a sweeper that died right after marking it would."""
    assert change(world.db, "UPDATE objects SET state = 'expiring' WHERE id = ?", obj.id) == 1


# -- times and sweeps ----------------------------------------------------------------------


def iso(ms: int) -> str:
    """`2036-01-01T00:00:00.000Z`, as `admin run lifecycle` prints times."""
    return (datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            + f".{ms % 1000:03d}Z")


def rfc1123(seconds: int) -> str:
    return format_datetime(datetime.fromtimestamp(seconds, UTC), usegmt=True)


def sweep(world: World, now: str | None = None) -> dict[str, Any]:
    """`datacoffer admin run lifecycle [--now NOW]`: its JSON document."""
    doc: dict[str, Any] = world.srv.admin("run", "lifecycle", *(["--now", now] if now else []))
    assert set(doc) == {"Now", "Expired", "Objects"}
    assert doc["Expired"] == len(doc["Objects"])
    return doc


def entry(obj: Stored, days: int) -> dict[str, Any]:
    """How the sweep's output names an object it expired."""
    return {"Coffer": obj.coffer, "Key": obj.key, "Size": obj.size,
            "Uploaded": iso(obj.created_ms), "Due": iso(obj.created_ms + days * DAY_MS)}


def expired_in(doc: dict[str, Any], *coffers: str) -> list[dict[str, Any]]:
    """The output's entries of these coffers, by coffer and key."""
    return sorted((o for o in doc["Objects"] if o["Coffer"] in coffers),
                  key=lambda o: (o["Coffer"], o["Key"]))


# -- objects -------------------------------------------------------------------------------


def put_multipart(sdk: Client, coffer: str, key: str, pieces: list[bytes]) -> None:
    upload = sdk.initiate_multipart_upload(coffer, key)
    parts = [sdk.upload_part(coffer, key, upload.upload_id, number, piece, length=len(piece))
             for number, piece in enumerate(pieces, 1)]
    sdk.complete_multipart_upload(coffer, key, upload.upload_id, parts)


def upload(world: World, coffer: str, key: str, kind: str) -> bytes:
    """Store a "simple" (PutObject) or "multipart" (two parts, the first 1 MiB) object."""
    if kind == "simple":
        data = os.urandom(3000)
        world.sdk.put_object(coffer, key, data)
        return data
    pieces = [os.urandom(MiB), os.urandom(1000)]
    put_multipart(world.sdk, coffer, key, pieces)
    return b"".join(pieces)


def read(sdk: Client, coffer: str, key: str) -> bytes:
    with sdk.get_object(coffer, key) as reader:
        return reader.read()


def listed(sdk: Client, coffer: str) -> list[str]:
    return [o.key for o in sdk.list_objects(coffer)]


def assert_intact(world: World, coffer: str, key: str, data: bytes) -> None:
    """The object reads back byte for byte, with its upload's checksum."""
    r = world.raw.get(f"/{coffer}/{key}")
    assert r.status_code == 200, r.text
    assert r.content == data
    if len(data) <= MiB:  # a multipart object's checksum is composite
        assert r.headers["x-cdcs-checksum-sha256"] == hashlib.sha256(data).hexdigest()


def assert_gone(raw: SignedClient, coffer: str, key: str) -> None:
    """GET and HEAD answer 404 ObjectNotExists."""
    for method in ("GET", "HEAD"):
        assert_error(raw.request(method, f"/{coffer}/{key}"), 404, "ObjectNotExists",
                     f"{coffer}/{key}")


def write_attempts(raw: SignedClient, coffer: str, key: str) -> list[httpx.Response]:
    """A PutObject and an InitiateMultipartUpload on the key."""
    path = f"/{coffer}/{key}"
    return [raw.put(path, content=b"new bytes"),
            raw.request("POST", path, params={"uploads": ""})]


def assert_key_taken(raw: SignedClient, coffer: str, key: str, code: str) -> None:
    for r in write_attempts(raw, coffer, key):
        assert_error(r, 409, code, f"{coffer}/{key}")


def assert_key_free(world: World, coffer: str, key: str) -> None:
    """A new object can be stored under the key and reads back."""
    data = os.urandom(2000)
    r = world.raw.put(f"/{coffer}/{key}", content=data)
    assert r.status_code == 200, r.text
    assert_intact(world, coffer, key, data)


def expiration_of(r: httpx.Response, days: int, status: int = 200) -> None:
    """`x-cdcs-expiration` is the RFC 1123 time of Last-Modified plus `days` days."""
    assert r.status_code == status, r.text
    modified = parsedate_to_datetime(r.headers["Last-Modified"])
    assert r.headers["x-cdcs-expiration"] == format_datetime(modified + timedelta(days=days),
                                                             usegmt=True)


def poll(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether `condition()` became true within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


# -- 1. x-cdcs-expiration ------------------------------------------------------------------


KINDS = [("simple", 0), ("multipart", 0), ("simple", 1), ("multipart", 1)]


@pytest.mark.parametrize(("kind", "encrypt_type"), KINDS,
                         ids=["simple", "multipart", "encrypted", "encrypted-multipart"])
def test_expiration_header_is_upload_time_plus_days(quiet: World, kind: str,
                                                    encrypt_type: int) -> None:
    """GET, HEAD and a Range GET carry the upload time plus Days, in whole seconds; so does
    the SDK."""
    coffer = quiet.coffer(30, encrypt_type=encrypt_type)
    upload(quiet, coffer, "obj.bin", kind)
    obj = stored(quiet.db, coffer, "obj.bin")
    expected = rfc1123(obj.created_ms // 1000 + 30 * 86_400)
    path = f"/{coffer}/obj.bin"
    for r, status in ((quiet.raw.get(path), 200), (quiet.raw.head(path), 200),
                      (quiet.raw.get(path, headers={"Range": "bytes=0-9"}), 206)):
        expiration_of(r, 30, status)
        assert r.headers["x-cdcs-expiration"] == expected
        assert r.headers["x-cdcs-encrypt-type"] == str(encrypt_type)
    assert quiet.sdk.head_object(coffer, "obj.bin").expiration == parsedate_to_datetime(
        expected)


def test_multipart_object_expires_days_after_its_completion(quiet: World) -> None:
    """An upload initiated (says metadata.db) two days ago in a coffer whose rule is one day
    is completed now: its object is due a day after the completion, not already gone."""
    coffer = quiet.coffer(1)
    started = quiet.sdk.initiate_multipart_upload(coffer, "slow.bin")
    backdate_upload(quiet, coffer, "slow.bin", 2)
    pieces = [os.urandom(MiB), os.urandom(10)]
    parts = [quiet.sdk.upload_part(coffer, "slow.bin", started.upload_id, n, piece,
                                   length=len(piece)) for n, piece in enumerate(pieces, 1)]
    completing = int(time.time())
    quiet.sdk.complete_multipart_upload(coffer, "slow.bin", started.upload_id, parts)
    assert_intact(quiet, coffer, "slow.bin", b"".join(pieces))
    head = quiet.raw.head(f"/{coffer}/slow.bin")
    expiration_of(head, 1)
    modified = parsedate_to_datetime(head.headers["Last-Modified"]).timestamp()
    assert completing <= modified <= time.time()
    assert listed(quiet.sdk, coffer) == ["slow.bin"]
    assert expired_in(sweep(quiet), coffer) == []


def test_no_expiration_header_without_rule(quiet: World) -> None:
    """A coffer without a rule: no header, no SDK expiration."""
    coffer = quiet.coffer()
    upload(quiet, coffer, "obj.bin", "simple")
    path = f"/{coffer}/obj.bin"
    for r in (quiet.raw.get(path), quiet.raw.head(path)):
        assert r.status_code == 200
        assert "x-cdcs-expiration" not in r.headers
    assert quiet.sdk.head_object(coffer, "obj.bin").expiration is None


def test_expiration_follows_the_replaced_rule(quiet: World) -> None:
    """Replacing Days 1 by 3650 moves the announced time at once."""
    coffer = quiet.coffer(1)
    upload(quiet, coffer, "obj.bin", "multipart")
    path = f"/{coffer}/obj.bin"
    expiration_of(quiet.raw.head(path), 1)
    quiet.sdk.put_coffer_lifecycle(coffer, 3650)
    for r in (quiet.raw.head(path), quiet.raw.get(path)):
        expiration_of(r, 3650)
    info = quiet.sdk.head_object(coffer, "obj.bin")
    assert info.expiration == info.last_modified + timedelta(days=3650)


def datacoffer(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    """The command-line client, signed in as the world's account through the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATACOFFER_")}
    env.update(DATACOFFER_ENDPOINT=world.srv.base_url,
               DATACOFFER_SECRET_ID=world.raw.secret_id,
               DATACOFFER_SECRET_KEY=world.raw.secret_key,
               DATACOFFER_PROFILE_FILE=str(world.srv.data_dir.parent / "absent.toml"))
    done = subprocess.run([*BIN, *args], capture_output=True, text=True, env=env, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done


@pytest.mark.parametrize("days", [5, None], ids=["rule", "no-rule"])
def test_stat_shows_expiration(quiet: World, days: int | None) -> None:
    """`datacoffer stat` (JSON and text) shows the SDK's expiration, or none."""
    coffer = quiet.coffer(days)
    upload(quiet, coffer, "obj.bin", "multipart")
    info = quiet.sdk.head_object(coffer, "obj.bin")
    due = None if days is None else info.last_modified + timedelta(days=days)
    assert info.expiration == due
    as_json = datacoffer(quiet, "stat", "--json", f"dc://{coffer}/obj.bin").stdout
    doc = json.loads(as_json)
    assert doc["LastModified"] == info.last_modified.isoformat().replace("+00:00", "Z")
    assert doc["Expiration"] == (None if due is None
                                 else due.isoformat().replace("+00:00", "Z"))
    text = datacoffer(quiet, "stat", f"dc://{coffer}/obj.bin").stdout.splitlines()
    shown = "-" if due is None else due.strftime("%Y-%m-%d %H:%M:%S") + " UTC"
    assert f"{'Expiration':<12}  {shown}" in text, text


# -- 2. admin run lifecycle --now: one sweep of a whole server ----------------------------


#: coffer role -> (account, Days of its rule, EncryptType, locations)
ROLES: dict[str, tuple[str, int | None, int, tuple[str, ...]]] = {
    "ruled": ("a", 1, 0, ("ap-tianjin", "ap-shanghai")),
    "encrypted": ("a", 1, 1, ("ap-tianjin",)),
    "theirs": ("b", 1, 0, ("ap-shanghai",)),
    "later": ("a", 2, 0, ("ap-tianjin",)),
    "norule": ("a", None, 0, ("ap-tianjin",)),
    "pending": ("a", 1, 0, ("ap-tianjin",)),
}
#: label -> (coffer role, key, kind); the coffer's rule decides whether the sweep expires it
OBJECTS = {
    "simple": ("ruled", "simple.bin", "simple"),
    "multipart": ("ruled", "multi.bin", "multipart"),
    "encrypted": ("encrypted", "secret.bin", "simple"),
    "encrypted-multipart": ("encrypted", "secret-multi.bin", "multipart"),
    "other-account": ("theirs", "theirs.bin", "simple"),
    "not-due": ("later", "keep.bin", "simple"),
    "no-rule": ("norule", "forever.bin", "simple"),
    "no-rule-multipart": ("norule", "forever-multi.bin", "multipart"),
}
EXPIRED = ["simple", "multipart", "encrypted", "encrypted-multipart", "other-account"]
KEPT = ["not-due", "no-rule", "no-rule-multipart"]


@dataclass
class Scenario:
    """A server holding the objects of OBJECTS, swept once before their due time and once
    after it; what could be seen right after the second sweep is kept here, so that tests
    that write into the freed keys do not change what the others check."""

    worlds: dict[str, World]
    coffers: dict[str, str]
    objects: dict[str, Stored] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)
    pending: str = ""  # the upload ID of an upload in progress
    before_now: int = 0
    before: dict[str, Any] = field(default_factory=dict)
    after_now: int = 0
    after: dict[str, Any] = field(default_factory=dict)
    files_before: dict[str, set[Path]] = field(default_factory=dict)
    files_between: dict[str, set[Path]] = field(default_factory=dict)
    files_after: dict[str, set[Path]] = field(default_factory=dict)
    rows_after: dict[str, dict[str, int]] = field(default_factory=dict)
    answers: dict[str, list[httpx.Response]] = field(default_factory=dict)
    listings: dict[str, list[str]] = field(default_factory=dict)

    def world(self, label: str) -> World:
        return self.worlds[ROLES[OBJECTS[label][0]][0]]

    def files(self) -> dict[str, set[Path]]:
        data_dir = self.worlds["a"].srv.data_dir
        return {label: files_of(data_dir, obj.blob_ids) for label, obj in self.objects.items()}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    srv = start(tmp_path_factory.mktemp("lc-scenario"), background=False)
    worlds = {"a": World.create(srv, "1250000000", "100000000001"),
              "b": World.create(srv, "1250000001", "100000000002")}
    coffers = {role: worlds[who].coffer(days, encrypt_type=encrypt, regions=regions)
               for role, (who, days, encrypt, regions) in ROLES.items()}
    sc = Scenario(worlds, coffers)
    a = worlds["a"]
    for label, (role, key, kind) in OBJECTS.items():
        sc.data[label] = upload(sc.world(label), coffers[role], key, kind)
        sc.objects[label] = stored(a.db, coffers[role], key)
        sc.files_before[label] = replicate(srv.data_dir, sc.objects[label])
    started = a.sdk.initiate_multipart_upload(coffers["pending"], "pending.bin")
    a.sdk.upload_part(coffers["pending"], "pending.bin", started.upload_id, 1,
                      b"pending part", length=12)
    sc.pending = started.upload_id
    # an upload that has been in progress for three days: not an object, so never due
    backdate_upload(a, coffers["pending"], "pending.bin", 3)
    dues = [sc.objects[label].created_ms + DAY_MS for label in EXPIRED]
    sc.before_now = (min(dues) // 1000 - 1) * 1000
    sc.after_now = (max(dues) // 1000 + 1) * 1000
    sc.before = sweep(a, iso(sc.before_now))
    sc.files_between = sc.files()
    sc.after = sweep(a, iso(sc.after_now))
    sc.files_after = sc.files()
    sc.rows_after = {label: rows_of(a.db, obj) for label, obj in sc.objects.items()}
    for label in EXPIRED:
        raw, obj = sc.world(label).raw, sc.objects[label]
        sc.answers[label] = [raw.get(f"/{obj.coffer}/{obj.key}"),
                             raw.head(f"/{obj.coffer}/{obj.key}")]
    sc.listings = {role: listed(worlds[who].sdk, coffers[role])
                   for role, (who, *_) in ROLES.items()}
    yield sc
    for world in worlds.values():
        world.close()
    srv.stop()


def test_sweep_before_the_due_time_expires_nothing(scenario: Scenario) -> None:
    """--now before every due time: nothing expires, no file moves."""
    assert scenario.before == {"Now": iso(scenario.before_now), "Expired": 0, "Objects": []}
    assert scenario.files_between == scenario.files_before


def test_sweep_after_the_due_time_lists_exactly_the_expired_objects(
        scenario: Scenario) -> None:
    """The output names exactly the objects due by --now, with their size and times."""
    expected = [entry(scenario.objects[label], 1) for label in EXPIRED]
    assert scenario.after["Now"] == iso(scenario.after_now)
    assert scenario.after["Expired"] == len(EXPIRED)
    assert expired_in(scenario.after, *scenario.coffers.values()) == sorted(
        expected, key=lambda o: (o["Coffer"], o["Key"]))


@pytest.mark.parametrize("label", EXPIRED)
def test_expired_object_answers_object_not_exists(scenario: Scenario, label: str) -> None:
    """After the sweep: GET and HEAD answer 404 ObjectNotExists."""
    obj = scenario.objects[label]
    get, head = scenario.answers[label]
    for r in (get, head):
        assert_error(r, 404, "ObjectNotExists", f"{obj.coffer}/{obj.key}")


def test_listings_omit_the_expired_objects(scenario: Scenario) -> None:
    """After the sweep GetCoffer lists only what was not due."""
    assert scenario.listings == {"ruled": [], "encrypted": [], "theirs": [],
                                 "later": ["keep.bin"], "pending": [],
                                 "norule": ["forever-multi.bin", "forever.bin"]}


def test_expired_files_are_gone_from_every_region(scenario: Scenario) -> None:
    """Every blob file of an expired object, in every region, is removed; no other."""
    for label in EXPIRED:
        blobs = scenario.objects[label].blob_ids
        assert len(scenario.files_before[label]) == len(blobs) * len(REGIONS), label
        assert scenario.files_after[label] == set(), label
    for label in KEPT:
        assert scenario.files_after[label] == scenario.files_before[label], label


def test_expired_metadata_rows_are_gone(scenario: Scenario) -> None:
    """objects, object_copies, uploads and parts keep no row of an expired object."""
    for label in EXPIRED:
        assert scenario.rows_after[label] == NO_ROWS, label
    for label in KEPT:
        parts = 2 if OBJECTS[label][2] == "multipart" else 0
        assert scenario.rows_after[label] == {"objects": 1, "object_copies": 1,
                                              "uploads": parts // 2, "parts": parts}, label


def test_objects_not_expired_are_intact(scenario: Scenario) -> None:
    """Objects not due and objects of a coffer without rule read back unchanged."""
    for label in KEPT:
        obj = scenario.objects[label]
        assert_intact(scenario.world(label), obj.coffer, obj.key, scenario.data[label])
        assert stored(scenario.worlds["a"].db, obj.coffer, obj.key) == obj


def test_upload_in_progress_survives_the_sweep(scenario: Scenario) -> None:
    """An upload in progress is not an object: the sweep leaves it, and it completes."""
    a, coffer = scenario.worlds["a"], scenario.coffers["pending"]
    upload_id = scenario.pending
    assert [(u.key, u.upload_id) for u in a.sdk.iter_uploads(coffer)] == [
        ("pending.bin", upload_id)]
    parts = list(a.sdk.iter_parts(coffer, "pending.bin", upload_id))
    assert [(p.number, p.etag) for p in parts] == [(1, hashlib.md5(b"pending part").hexdigest())]
    a.sdk.complete_multipart_upload(coffer, "pending.bin", upload_id, parts)
    assert read(a.sdk, coffer, "pending.bin") == b"pending part"
    expiration_of(a.raw.head(f"/{coffer}/pending.bin"), 1)


KEY_REUSE = [("simple", "put"), ("multipart", "multipart"), ("encrypted", "multipart"),
             ("encrypted-multipart", "put"), ("other-account", "put")]


@pytest.mark.parametrize(("label", "how"), KEY_REUSE,
                         ids=[f"{label}-by-{how}" for label, how in KEY_REUSE])
def test_expired_key_is_free_again(scenario: Scenario, label: str, how: str) -> None:
    """PutObject or a multipart upload may take an expired object's key again."""
    world, obj = scenario.world(label), scenario.objects[label]
    if how == "put":
        assert_key_free(world, obj.coffer, obj.key)
    else:
        pieces = [os.urandom(MiB), os.urandom(10)]
        put_multipart(world.sdk, obj.coffer, obj.key, pieces)
        assert_intact(world, obj.coffer, obj.key, b"".join(pieces))
    assert obj.key in listed(world.sdk, obj.coffer)
    expiration_of(world.raw.head(f"/{obj.coffer}/{obj.key}"), 1)


@pytest.mark.parametrize("now", ["2036-01-01", "2036-01-01T00:00:00",
                                 "2036-01-01T08:00:00+08:00", "2036-13-01T00:00:00Z"])
def test_run_lifecycle_refuses_a_time_not_iso8601_utc(quiet: World, now: str) -> None:
    """--now must be ISO 8601 with a time and UTC: else exit 2, nothing on stdout."""
    done = quiet.srv.admin("run", "lifecycle", "--now", now, check=False)
    assert isinstance(done, subprocess.CompletedProcess), done
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: --now: {now!r} is not "), done.stderr


def test_run_lifecycle_help() -> None:
    """`admin run lifecycle --help` documents --now."""
    done = subprocess.run([*BIN, "admin", "run", "lifecycle", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: "), done.stdout
    for word in ("--now", "ISO8601", "--data-dir", "datacoffer admin run lifecycle"):
        assert word in done.stdout, word


def set_created(world: World, obj: Stored, created_ms: int) -> Stored:
    """Give the object another upload time in metadata.db."""
    assert change(world.db, "UPDATE objects SET created_ms = ? WHERE id = ?",
                  created_ms, obj.id) == 1
    return stored(world.db, obj.coffer, obj.key)


def whole_second_upload(world: World, days: int, millis: int) -> tuple[Stored, int]:
    """An object of a fresh coffer with a rule of `days`, uploaded (says metadata.db) three
    days ago at `millis` past a whole second; the object and its due time."""
    coffer = world.coffer(days)
    upload(world, coffer, "edge.bin", "simple")
    obj = stored(world.db, coffer, "edge.bin")
    obj = set_created(world, obj, (obj.created_ms // 1000 - 3 * 86_400) * 1000 + millis)
    return obj, obj.created_ms + days * DAY_MS


def test_sweep_expires_at_the_due_time_not_before(quiet: World) -> None:
    """Due at upload time plus Days exactly: a second earlier the sweep leaves it."""
    obj, due = whole_second_upload(quiet, 2, 0)
    early = sweep(quiet, iso(due - 1000))
    assert early["Now"] == iso(due - 1000)
    assert expired_in(early, obj.coffer) == []
    assert rows_of(quiet.db, obj)["objects"] == 1
    on_time = sweep(quiet, iso(due))
    assert on_time["Now"] == iso(due)
    assert expired_in(on_time, obj.coffer) == [entry(obj, 2)]
    assert rows_of(quiet.db, obj) == NO_ROWS


def test_sweep_now_keeps_its_milliseconds(quiet: World) -> None:
    """--now with milliseconds is evaluated to the millisecond, as Uploaded and Due are
    shown."""
    obj, due = whole_second_upload(quiet, 1, 500)
    doc = sweep(quiet, iso(due + 100))
    assert doc["Now"] == iso(due + 100)
    assert expired_in(doc, obj.coffer) == [entry(obj, 1)]


def test_sweep_follows_the_replaced_rule(quiet: World) -> None:
    """The sweep applies the rule in force: replaced by 3650 days, the object stays."""
    coffer = quiet.coffer(1)
    data = upload(quiet, coffer, "obj.bin", "simple")
    obj = backdate(quiet, stored(quiet.db, coffer, "obj.bin"), 2)
    quiet.sdk.put_coffer_lifecycle(coffer, 3650)
    assert expired_in(sweep(quiet), coffer) == []
    assert_intact(quiet, coffer, "obj.bin", data)
    assert quiet.raw.head(f"/{coffer}/obj.bin").headers["x-cdcs-expiration"] == rfc1123(
        obj.created_ms // 1000 + 3650 * 86_400)


def test_one_sweep_expires_more_than_a_batch(quiet: World) -> None:
    """core/expiry.py marks 200 objects per transaction: one pass takes them all."""
    coffer = quiet.coffer(1)
    keys = [f"k{n:03d}" for n in range(BATCH + 5)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: quiet.sdk.put_object(coffer, key, key.encode()), keys))
    assert change(quiet.db, "UPDATE objects SET created_ms = created_ms - ? WHERE coffer_id = "
                            "(SELECT id FROM coffers WHERE name = ?)",
                  2 * DAY_MS, coffer) == len(keys)
    objs = [stored(quiet.db, coffer, key) for key in keys]
    assert expired_in(sweep(quiet), coffer) == [entry(obj, 1) for obj in objs]
    assert files_of(quiet.srv.data_dir, tuple(b for o in objs for b in o.blob_ids)) == set()
    assert query(quiet.db, "SELECT count(*) FROM objects WHERE coffer_id = "
                           "(SELECT id FROM coffers WHERE name = ?)", coffer) == [(0,)]
    r = quiet.raw.delete(f"/{coffer}")
    assert r.status_code == 204, r.text


# -- 3. a due object is gone before any sweep ----------------------------------------------


def test_due_object_is_hidden_before_any_sweep(quiet: World) -> None:
    """A due object is gone for readers and listings at once; its key is freed by the
    sweep."""
    coffer = quiet.coffer(3)
    upload(quiet, coffer, "due.bin", "multipart")
    fresh = upload(quiet, coffer, "fresh.bin", "simple")
    obj = backdate(quiet, stored(quiet.db, coffer, "due.bin"), 3 + 1)
    files = replicate(quiet.srv.data_dir, obj)
    assert_gone(quiet.raw, coffer, "due.bin")
    assert listed(quiet.sdk, coffer) == ["fresh.bin"]
    # the key is freed by the sweep only
    assert_key_taken(quiet.raw, coffer, "due.bin", "ObjectAlreadyExistsOwnedByYou")
    assert files_of(quiet.srv.data_dir, obj.blob_ids) == files
    assert rows_of(quiet.db, obj) == {"objects": 1, "object_copies": 1, "uploads": 1,
                                      "parts": 2}
    assert expired_in(sweep(quiet), coffer) == [entry(obj, 3)]
    assert files_of(quiet.srv.data_dir, obj.blob_ids) == set()
    assert rows_of(quiet.db, obj) == NO_ROWS
    assert_key_free(quiet, coffer, "due.bin")
    assert_intact(quiet, coffer, "fresh.bin", fresh)
    assert listed(quiet.sdk, coffer) == ["due.bin", "fresh.bin"]


# -- 4. an expiry a crash interrupted ------------------------------------------------------


@pytest.mark.parametrize("finisher", ["admin-run", "restart"])
def test_interrupted_expiry_is_finished(quiet: World, finisher: str) -> None:
    """Rows left "expiring" by a crash: unreadable, key and coffer locked, then finished by
    the next sweep or by the server's start."""
    lone, busy = quiet.coffer(1), quiet.coffer(1)
    upload(quiet, lone, "a.bin", "simple")
    upload(quiet, busy, "b.bin", "multipart")
    kept = upload(quiet, busy, "c.bin", "simple")
    a, b = stored(quiet.db, lone, "a.bin"), stored(quiet.db, busy, "b.bin")
    blobs = a.blob_ids + b.blob_ids
    files = replicate(quiet.srv.data_dir, a) | replicate(quiet.srv.data_dir, b)
    for obj in (a, b):
        mark_expiring(quiet, obj)
        assert_gone(quiet.raw, obj.coffer, obj.key)
        assert_key_taken(quiet.raw, obj.coffer, obj.key, "AlreadyLock")
    assert listed(quiet.sdk, lone) == []
    assert listed(quiet.sdk, busy) == ["c.bin"]
    assert_error(quiet.raw.delete(f"/{lone}"), 409, "AlreadyLock", lone)
    assert files_of(quiet.srv.data_dir, blobs) == files
    if finisher == "admin-run":  # any time: finishing is not deciding what is due
        assert sweep(quiet, "2001-01-01T00:00:00Z")["Now"] == "2001-01-01T00:00:00.000Z"
    else:  # a server without background workers finishes them when it starts
        quiet.srv.stop()
        quiet.srv.start()
    assert files_of(quiet.srv.data_dir, blobs) == set()
    assert rows_of(quiet.db, a) == NO_ROWS
    assert rows_of(quiet.db, b) == NO_ROWS
    r = quiet.raw.delete(f"/{lone}")
    assert r.status_code == 204, r.text
    # a coffer made again under the name starts without the old rule
    quiet.sdk.create_coffer(lone, ["ap-tianjin"])
    assert_error(quiet.raw.get(f"/{lone}", params={"lifecycle": ""}), 404,
                 "NoSuchLifecycleConfiguration", lone)
    assert_key_free(quiet, busy, "b.bin")
    assert_intact(quiet, busy, "c.bin", kept)


# -- 5. the background sweeper -------------------------------------------------------------


@pytest.mark.parametrize("how", ["due", "marked-expiring"])
def test_background_sweeper_expires_by_itself(sweeping: World, how: str) -> None:
    """With lifecycle_interval = 1 the server expires (or finishes expiring) by itself."""
    coffer = sweeping.coffer(1)
    upload(sweeping, coffer, "x.bin", "multipart")
    kept = upload(sweeping, coffer, "keep.bin", "simple")
    obj = stored(sweeping.db, coffer, "x.bin")
    replicate(sweeping.srv.data_dir, obj)
    if how == "due":
        backdate(sweeping, obj, 2)
    else:
        mark_expiring(sweeping, obj)
    assert poll(lambda: not files_of(sweeping.srv.data_dir, obj.blob_ids)
                and rows_of(sweeping.db, obj) == NO_ROWS, 10), sweeping.srv.log()[-2000:]
    assert_gone(sweeping.raw, coffer, "x.bin")
    assert_key_free(sweeping, coffer, "x.bin")
    assert_intact(sweeping, coffer, "keep.bin", kept)


def test_no_background_server_leaves_due_objects_to_admin_run(quiet: World) -> None:
    """`serve --no-background` runs no sweeper: only `admin run lifecycle` expires."""
    coffer = quiet.coffer(1)
    upload(quiet, coffer, "x.bin", "simple")
    obj = backdate(quiet, stored(quiet.db, coffer, "x.bin"), 2)
    files = replicate(quiet.srv.data_dir, obj)
    time.sleep(3)  # three times its lifecycle_interval
    assert files_of(quiet.srv.data_dir, obj.blob_ids) == files
    assert rows_of(quiet.db, obj) == {"objects": 1, "object_copies": 1, "uploads": 0,
                                      "parts": 0}
    assert_gone(quiet.raw, coffer, "x.bin")
    assert listed(quiet.sdk, coffer) == []
    assert expired_in(sweep(quiet), coffer) == [entry(obj, 1)]
    assert files_of(quiet.srv.data_dir, obj.blob_ids) == set()
    assert_key_free(quiet, coffer, "x.bin")


# -- 6. nothing else is ever deleted -------------------------------------------------------


def test_sweep_leaves_every_other_object_intact(quiet: World) -> None:
    """Neighbours of an expired object, and old objects without a rule, keep every byte and
    file."""
    ruled, unruled = quiet.coffer(1), quiet.coffer()
    upload(quiet, ruled, "due.bin", "simple")
    due = backdate(quiet, stored(quiet.db, ruled, "due.bin"), 2)
    kept = {(ruled, "fresh.bin"): upload(quiet, ruled, "fresh.bin", "simple"),
            (ruled, "fresh-multi.bin"): upload(quiet, ruled, "fresh-multi.bin", "multipart"),
            (unruled, "old.bin"): upload(quiet, unruled, "old.bin", "simple"),
            (unruled, "old-multi.bin"): upload(quiet, unruled, "old-multi.bin", "multipart")}
    for coffer, key in [(unruled, "old.bin"), (unruled, "old-multi.bin")]:
        backdate(quiet, stored(quiet.db, coffer, key), 3000)  # no rule: never due
    before = {ck: stored(quiet.db, *ck) for ck in kept}
    files = {ck: replicate(quiet.srv.data_dir, obj) for ck, obj in before.items()}
    # just before the fresh objects' due time
    doc = sweep(quiet, iso(int(time.time() * 1000) + DAY_MS - 3_600_000))
    assert expired_in(doc, ruled, unruled) == [entry(due, 1)]
    for (coffer, key), data in kept.items():
        assert_intact(quiet, coffer, key, data)
        assert stored(quiet.db, coffer, key) == before[coffer, key]
        assert files_of(quiet.srv.data_dir, before[coffer, key].blob_ids) == files[coffer, key]
    assert listed(quiet.sdk, ruled) == ["fresh-multi.bin", "fresh.bin"]
    assert listed(quiet.sdk, unruled) == ["old-multi.bin", "old.bin"]
