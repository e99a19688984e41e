"""Durability (service.md "Durability: what an answer promises"), shown on real server
processes, real files and real SIGKILLs:

- a 200 to PutObject survives a `kill -9`;
- a crash, a refused body or a vanished client before the answer leaves no trace: no listed
  key, no file in any region's `tmp/` or `blobs/`, and the key free again;
- stored bytes are checked against their SHA-256 on every full read, and damage is never
  served as a good answer.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import secrets
import select
import socket
import sqlite3
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from datacoffer import signing
from datacoffer.client import Client, errors
from tests.serverproc import NO_RETRY, ServerProcess, SignedClient

MiB = 1024 * 1024
REGIONS = ("ap-tianjin", "ap-shanghai", "ap-guangzhou")
OWN_APP_ID = "1251000000"
OWN_UIN = "100000000101"


# -- helpers shared with test_concurrency.py ------------------------------------------------


@dataclass
class Answer:
    """A response read from a raw connection, shaped like the bits of httpx.Response we use."""

    status_code: int
    headers: dict[str, str]
    content: bytes


def check_error(r, status: int, code: str) -> None:
    """The exact status, `x-cdcs-error-code` header and `<Code>` of the error document."""
    assert r.status_code == status, (r.status_code, r.headers, r.content[:500])
    assert r.headers.get("x-cdcs-error-code") == code, (r.headers, r.content[:500])
    assert r.headers.get("x-cdcs-trace-id"), r.headers
    root = ET.fromstring(r.content)
    assert root.tag == "Error"
    assert root.findtext("Code") == code


class RawUpload:
    """A PutObject (or, with `params`, e.g. an UploadPart) on its own connection: the request
    line and headers are sent at once, the body only as the test sends it, so an upload can be
    held open, cut short or dropped. `params` are signed and added to the URL's query."""

    def __init__(self, client: SignedClient, path: str, length: int,
                 headers: dict[str, str] | None = None,
                 params: dict[str, str] | None = None) -> None:
        host = client.base_url.split("://", 1)[1]
        address, port = host.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(address, int(port), timeout=60)
        fields = signing.sign(client.secret_id, client.secret_key, "PUT", path, params,
                              {"host": host})
        url = signing.urlencode(path).replace("%2F", "/")
        if params:
            url += "?" + "&".join(f"{signing.urlencode(k)}={signing.urlencode(v)}"
                                  for k, v in params.items())
        self.conn.putrequest("PUT", url, skip_host=True, skip_accept_encoding=True)
        self.conn.putheader("Host", host)
        self.conn.putheader("Authorization", signing.authorization_header(fields))
        self.conn.putheader("Content-Length", str(length))
        for name, value in (headers or {}).items():
            self.conn.putheader(name, value)
        self.conn.endheaders()

    def send(self, data: bytes) -> None:
        self.conn.send(data)

    def answered(self, wait: float = 0) -> bool:
        """Whether the server has sent something (an early answer, or closed)."""
        assert self.conn.sock is not None
        return bool(select.select([self.conn.sock], [], [], wait)[0])

    def response(self) -> Answer:
        r = self.conn.getresponse()
        body = r.read()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, body)

    def close(self) -> None:
        self.conn.close()


def stream_put(client: SignedClient, path: str, data: bytes, *, chunk: int,
               pause: float = 0.0) -> Answer:
    """PutObject `data` in `chunk`-sized pieces with `pause` seconds between them; stops
    sending as soon as the server answers (a refusal comes before the body is read)."""
    up = RawUpload(client, path, len(data))
    try:
        for offset in range(0, len(data), chunk):
            if up.answered():
                break
            try:
                up.send(data[offset:offset + chunk])
            except (BrokenPipeError, ConnectionResetError):
                break
            if pause:
                time.sleep(pause)
        return up.response()
    finally:
        up.close()


def wait_until(predicate: Callable[[], object], timeout: float = 15.0,
               what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def region_files(data_dir: Path) -> set[str]:
    """Every file under the region directories, relative to the data directory."""
    root = data_dir / "regions"
    return {str(p.relative_to(data_dir)) for p in root.rglob("*") if p.is_file()}


def tmp_files(data_dir: Path) -> list[Path]:
    return [p for r in REGIONS for p in (data_dir / "regions" / r / "tmp").glob("*")]


def blob_files(data_dir: Path) -> list[Path]:
    return [p for r in REGIONS for p in (data_dir / "regions" / r / "blobs").rglob("*")
            if p.is_file()]


def db_rows(data_dir: Path, sql: str, *args: object) -> list[tuple]:
    """A read of the real metadata database (SQLite, WAL) beside the running server."""
    conn = sqlite3.connect(f"file:{data_dir / 'metadata.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def writing_rows(data_dir: Path) -> list[tuple]:
    return db_rows(data_dir, "SELECT key, holder, lease_until_ms FROM objects "
                             "WHERE state = 'writing'")


def wait_reserved(data_dir: Path, coffer: str, key: str) -> None:
    """Wait until a PutObject of `key` has taken its reservation (a request sent is not yet
    a request served)."""
    sql = ("SELECT count(*) FROM objects JOIN coffers ON coffers.id = objects.coffer_id"
           " WHERE coffers.name = ? AND objects.key = ? AND objects.state = 'writing'")
    wait_until(lambda: db_rows(data_dir, sql, coffer, key) == [(1,)],
               what=f"the reservation of {coffer}/{key}")


def listed(sdk: Client, coffer: str) -> dict[str, tuple[int, str]]:
    """GetCoffer's listing: key -> (Size, ETag without quotes)."""
    return {o.key: (o.size, o.etag) for o in sdk.list_objects(coffer)}


def fetch(sdk: Client, coffer: str, key: str) -> bytes:
    """GetObject: the whole object."""
    with sdk.get_object(coffer, key) as r:
        return r.read()


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def new_sdk(srv: ServerProcess, app_id: str = OWN_APP_ID, uin: str = OWN_UIN) -> Client:
    """An SDK client of a new account that does not retry: these tests see every answer."""
    return srv.new_sdk(app_id, uin, retry=NO_RETRY)


def uploads_in_progress(srv: ServerProcess) -> int:
    return srv.admin("status")["Counts"]["uploads_in_progress"]


# -- fixtures -------------------------------------------------------------------------------


@dataclass
class Own:
    srv: ServerProcess
    client: SignedClient
    coffer: str
    #: the SDK client (without retries) of the same account
    sdk: Client


def own_server(tmp_path_factory: pytest.TempPathFactory, stem: str) -> Iterator[Own]:
    """A server of one test module alone (so that counting its region files is exact), with
    an account and a coffer."""
    srv = ServerProcess(tmp_path_factory.mktemp(stem) / "data")
    srv.start()
    sdk = new_sdk(srv)
    client = SignedClient.of(sdk)
    coffer = f"{stem}-{OWN_APP_ID}"
    sdk.create_coffer(coffer, ["ap-tianjin"])
    yield Own(srv, client, coffer, sdk)
    client.close()
    sdk.close()
    srv.stop()


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Own]:
    yield from own_server(tmp_path_factory, "durable")


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server this test may kill and restart; stopped whatever happens."""
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    yield srv
    srv.stop()


# -- 1. SIGKILL in the middle of an upload --------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_upload_leaves_no_trace_and_frees_the_key(restartable):
    srv = restartable
    sdk = new_sdk(srv)
    client = SignedClient.of(sdk)
    coffer = f"crash-{OWN_APP_ID}"
    sdk.create_coffer(coffer, ["ap-tianjin"])
    path = f"/{coffer}/big.bin"
    declared, sent = 256 * MiB, 100 * MiB
    piece = os.urandom(MiB)
    up = RawUpload(client, path, declared)
    for _ in range(sent // MiB):
        up.send(piece)

    # The reservation is visible: the bytes are landing in tmp/, another writer is refused.
    tmp = srv.data_dir / "regions" / "ap-tianjin" / "tmp"
    wait_until(lambda: [p for p in tmp.iterdir() if p.stat().st_size >= sent - MiB],
               what="most of the 100 MiB to be written to tmp/")
    with pytest.raises(errors.ObjectAlreadyUploading):
        sdk.put_object(coffer, "big.bin", b"other")
    assert len(tmp_files(srv.data_dir)) == 1
    assert blob_files(srv.data_dir) == []
    assert uploads_in_progress(srv) == 1
    assert not up.answered()

    srv.kill()
    up.close()
    assert len(tmp_files(srv.data_dir)) == 1  # the crash left its half-written file behind
    srv.start()

    assert listed(sdk, coffer) == {}
    with pytest.raises(errors.ObjectNotExists):
        sdk.get_object(coffer, "big.bin")
    with pytest.raises(errors.ObjectNotExists):
        sdk.head_object(coffer, "big.bin")
    assert tmp_files(srv.data_dir) == []
    assert blob_files(srv.data_dir) == []
    assert writing_rows(srv.data_dir) == []
    status = srv.admin("status")
    assert status["Counts"]["uploads_in_progress"] == 0
    assert status["Counts"]["objects"] == 0

    data = os.urandom(3 * MiB + 7)
    assert sdk.put_object(coffer, "big.bin", data).etag == md5_hex(data)
    assert fetch(sdk, coffer, "big.bin") == data
    assert listed(sdk, coffer) == {"big.bin": (len(data), md5_hex(data))}
    assert len(blob_files(srv.data_dir)) == 1
    assert tmp_files(srv.data_dir) == []
    client.close()
    sdk.close()


# -- 2. an acknowledged object survives SIGKILL ---------------------------------------------


def test_acknowledged_objects_survive_sigkill(restartable):
    srv = restartable
    sdk = new_sdk(srv)
    coffer = f"ack-{OWN_APP_ID}"
    sdk.create_coffer(coffer, ["ap-tianjin"])
    objects = {
        "large.bin": (os.urandom(5 * MiB + 11), "application/octet-stream"),
        "small.txt": (b"hello, durable coffer\n", "text/plain"),
        "dir/one-byte": (b"\x00", "application/x-one"),
        "dir/\u6863\u6848.json": (b'{"a": 1}', "application/json"),
    }
    answers = {}
    for key, (data, ctype) in objects.items():
        answers[key] = sdk.put_object(coffer, key, data, content_type=ctype).etag
    srv.kill()  # at once, right after the last 200
    srv.start()

    for key, (data, ctype) in objects.items():
        with sdk.get_object(coffer, key) as r:
            assert r.status == 200
            assert r.read() == data
        assert r.info.etag == answers[key] == md5_hex(data)
        assert r.info.sha256 == hashlib.sha256(data).hexdigest()
        assert r.info.content_type.split(";")[0] == ctype
        assert r.info.size == len(data)
    assert listed(sdk, coffer) == {
        key: (len(data), md5_hex(data)) for key, (data, _) in objects.items()}
    assert tmp_files(srv.data_dir) == []
    assert len(blob_files(srv.data_dir)) == len(objects)
    counts = srv.admin("status")["Counts"]
    assert counts["objects"] == len(objects)
    assert counts["bytes"] == sum(len(d) for d, _ in objects.values())
    assert counts["uploads_in_progress"] == 0
    sdk.close()


# -- 3. a failed write leaves no trace ------------------------------------------------------


def test_content_md5_mismatch_leaves_no_trace(own):
    client, sdk, coffer, data_dir = own.client, own.sdk, own.coffer, own.srv.data_dir
    path = f"/{coffer}/md5-mismatch.bin"
    data = os.urandom(2 * MiB + 5)
    wrong = base64.b64encode(hashlib.md5(data + b"x").digest()).decode()
    before = region_files(data_dir)

    r = client.put(path, content=data, headers={"Content-MD5": wrong})
    check_error(r, 400, "InvalidArgument")
    assert region_files(data_dir) == before
    assert tmp_files(data_dir) == []
    assert writing_rows(data_dir) == []
    with pytest.raises(errors.ObjectNotExists):
        sdk.get_object(coffer, "md5-mismatch.bin")
    assert "md5-mismatch.bin" not in listed(sdk, coffer)

    right = base64.b64encode(hashlib.md5(data).digest()).decode()
    sdk.put_object(coffer, "md5-mismatch.bin", data, content_md5=right)
    added = region_files(data_dir) - before
    assert len(added) == 1
    assert next(iter(added)).startswith("regions/ap-tianjin/blobs/")
    assert region_files(data_dir) - added == before
    assert fetch(sdk, coffer, "md5-mismatch.bin") == data


def test_client_disconnecting_mid_body_leaves_no_trace(own):
    client, sdk, coffer, data_dir = own.client, own.sdk, own.coffer, own.srv.data_dir
    path = f"/{coffer}/dropped.bin"
    data = os.urandom(4 * MiB)
    before = region_files(data_dir)

    up = RawUpload(client, path, len(data))
    up.send(data[: len(data) // 2])
    tmp = data_dir / "regions" / "ap-tianjin" / "tmp"
    wait_until(lambda: [p for p in tmp.iterdir() if p.stat().st_size >= MiB],
               what="the first half to reach tmp/")
    with pytest.raises(errors.ObjectAlreadyUploading):
        sdk.put_object(coffer, "dropped.bin", b"x")
    up.conn.sock.shutdown(socket.SHUT_RDWR)
    up.close()

    wait_until(lambda: writing_rows(data_dir) == [] and tmp_files(data_dir) == [],
               what="the server to drop the abandoned upload")
    assert region_files(data_dir) == before
    with pytest.raises(errors.ObjectNotExists):
        sdk.get_object(coffer, "dropped.bin")
    assert "dropped.bin" not in listed(sdk, coffer)

    sdk.put_object(coffer, "dropped.bin", data)
    assert len(region_files(data_dir) - before) == 1
    assert fetch(sdk, coffer, "dropped.bin") == data


def test_body_shorter_than_content_length_leaves_no_trace(own):
    """The client sends fewer bytes than it declared and then half-closes: refused, no trace."""
    client, sdk, coffer, data_dir = own.client, own.sdk, own.coffer, own.srv.data_dir
    path = f"/{coffer}/short.bin"
    before = region_files(data_dir)
    up = RawUpload(client, path, 3 * MiB)
    up.send(os.urandom(2 * MiB))
    up.conn.sock.shutdown(socket.SHUT_WR)
    try:
        answer = up.response()
        # If the server could still answer, it is a refusal, never a stored object.
        assert answer.status_code == 400, answer
    except (http.client.RemoteDisconnected, ConnectionResetError):
        pass  # the server saw the client go away: no one to answer
    finally:
        up.close()
    wait_until(lambda: writing_rows(data_dir) == [] and tmp_files(data_dir) == [],
               what="the server to drop the short upload")
    assert region_files(data_dir) == before
    with pytest.raises(errors.ObjectNotExists):
        sdk.get_object(coffer, "short.bin")
    sdk.put_object(coffer, "short.bin", b"complete now")
    assert fetch(sdk, coffer, "short.bin") == b"complete now"


# -- 4. corruption is never served silently -------------------------------------------------


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize(("size", "damage_at"), [
    (3 * MiB + 123, 3 * MiB + 100),  # the damage is in the last chunk read
    (3 * MiB + 123, 17),             # ... in the first one
    (4096, 2048),                    # a one-chunk object
])
def test_corrupt_blob_is_never_served_as_a_good_answer(own, size, damage_at):
    """A GetObject checks every MiB it sends against the CRC-32 recorded at upload: at the
    damaged chunk the response is aborted (the client gets an incomplete body, never all
    `Content-Length` bytes with a 200) and the server logs the damaged copy. An object of at
    most 1 MiB is read and checked before its answer starts, so it is refused with 500
    InternalError instead. Of a larger one, the chunks before the damage went out already;
    the cut-off connection tells the client. (With a second region holding a good copy, the
    read goes on from there instead: tests/test_scrub.py.)

    A Range read is checked by the same chunks; a range away from the damage is served.
    """
    client, sdk, coffer, data_dir = own.client, own.sdk, own.coffer, own.srv.data_dir
    key = f"corrupt-{size}-{damage_at}.bin"
    path = f"/{coffer}/{key}"
    data = os.urandom(size)
    before = region_files(data_dir)
    sdk.put_object(coffer, key, data)
    (blob,) = region_files(data_dir) - before
    assert blob.startswith("regions/ap-tianjin/blobs/")
    _flip_byte(data_dir / blob, damage_at)
    on_disk = (data_dir / blob).read_bytes()
    assert on_disk != data
    log_before = own.srv.log()

    for _ in range(2):  # and again: nothing remembers a damaged read as good
        if size <= 1024 * 1024:  # read whole before the answer: refused before any byte
            with pytest.raises(errors.InternalError):  # the SDK client does not retry
                sdk.get_object(coffer, key)
            continue
        got = bytearray()
        with client.http.stream("GET", _signed_url(client, path),
                                headers=_auth(client, "GET", path)) as resp:
            assert resp.status_code == 200  # the headers left before the bytes were read
            assert resp.headers["content-length"] == str(size)
            with pytest.raises(httpx.RemoteProtocolError):
                for part in resp.iter_raw():
                    got += part
        assert len(got) < size  # never the complete body
        assert bytes(got) == on_disk[: len(got)]

    damaged = f"damaged copy of {coffer}/{key} in region ap-tianjin"
    wait_until(lambda: damaged in own.srv.log()[len(log_before):],
               what="the server log to report the damaged copy")

    assert sdk.head_object(coffer, key).sha256 == hashlib.sha256(data).hexdigest()
    first, last = (0, 9) if damage_at > 100 else (size - 10, size - 1)
    if size <= 1024 * 1024:  # one chunk: no range is away from the damage, none is served
        with pytest.raises(errors.InternalError):
            sdk.get_object(coffer, key, byte_range=(first, last))
    else:
        with sdk.get_object(coffer, key, byte_range=(first, last)) as r:
            assert r.status == 206
            assert r.span == (first, last)
            assert r.read() == data[first:last + 1]
    # The server is still healthy for other objects.
    sdk.put_object(coffer, f"after-{key}", b"fine")
    assert fetch(sdk, coffer, f"after-{key}") == b"fine"


def _signed_url(client: SignedClient, path: str) -> str:
    return signing.urlencode(path).replace("%2F", "/")


def _auth(client: SignedClient, method: str, path: str) -> dict[str, str]:
    host = client.base_url.split("://", 1)[1]
    fields = signing.sign(client.secret_id, client.secret_key, method, path, None,
                          {"host": host})
    return {"Authorization": signing.authorization_header(fields)}


# -- 5. a crash between blob rename and metadata commit -------------------------------------


def test_crash_after_blob_rename_before_commit_is_cleaned_at_start(restartable):
    """The crash is staged in the stopped installation: a "writing" reservation whose holder
    process (on this host) is dead, with its blob already renamed into `blobs/`; another whose
    holder is on another host and whose lease has lapsed; a stray tmp file with no row; and,
    as the control, a reservation of a writer on another host whose lease is still running,
    which start-up recovery must leave alone."""
    srv = restartable
    sdk = new_sdk(srv)
    coffer = f"staged-{OWN_APP_ID}"
    sdk.create_coffer(coffer, ["ap-tianjin"])
    srv.stop()

    host = socket.gethostname()
    dead_pid = 999999
    with pytest.raises(ProcessLookupError):
        os.kill(dead_pid, 0)
    now = int(time.time() * 1000)
    staged = {
        # key: (holder, lease_until_ms, where the blob is)
        "renamed.bin": (f"{host}:{dead_pid}:x", now + 3_600_000, "blobs"),
        "lapsed.bin": ("another-host:4242:y", now - 1000, "tmp"),
        "foreign.bin": ("another-host:4243:z", now + 3_600_000, "tmp"),
    }
    db = sqlite3.connect(srv.data_dir / "metadata.db", timeout=10)
    (coffer_id,) = db.execute("SELECT id FROM coffers WHERE name = ?", (coffer,)).fetchone()
    paths = {}
    for key, (holder, lease, where) in staged.items():
        blob_id = secrets.token_hex(16)
        db.execute(
            "INSERT INTO objects (coffer_id, key, state, writer_uin, blob_id, content_type,"
            " size, etag, sha256, encrypt_type, created_ms, holder, lease_until_ms)"
            " VALUES (?, ?, 'writing', ?, ?, '', 0, '', '', 0, ?, ?, ?)",
            (coffer_id, key, OWN_UIN, blob_id, now, holder, lease))
        region = srv.data_dir / "regions" / "ap-tianjin"
        path = (region / "blobs" / blob_id[:2] / blob_id if where == "blobs"
                else region / "tmp" / blob_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"data of a write that was never acknowledged")
        paths[key] = path
    db.commit()
    db.close()
    stray = srv.data_dir / "regions" / "ap-shanghai" / "tmp" / secrets.token_hex(16)
    stray.write_bytes(b"left over")

    srv.start()

    assert not paths["renamed.bin"].exists()
    assert not paths["lapsed.bin"].exists()
    assert not stray.exists()
    assert paths["foreign.bin"].exists()
    assert [k for k, _, _ in writing_rows(srv.data_dir)] == ["foreign.bin"]
    assert blob_files(srv.data_dir) == []
    assert listed(sdk, coffer) == {}
    for key in ("renamed.bin", "lapsed.bin", "foreign.bin"):
        with pytest.raises(errors.ObjectNotExists):
            sdk.get_object(coffer, key)
    for key in ("renamed.bin", "lapsed.bin"):
        sdk.put_object(coffer, key, key.encode())
        assert fetch(sdk, coffer, key) == key.encode()
    with pytest.raises(errors.ObjectAlreadyUploading):
        sdk.put_object(coffer, "foreign.bin", b"no")
    assert set(listed(sdk, coffer)) == {"renamed.bin", "lapsed.bin"}
    assert uploads_in_progress(srv) == 1
    sdk.close()


def test_stalled_upload_is_abandoned_and_frees_the_key(tmp_path):
    """A client that sends headers and part of a body, then nothing, must not hold its key
    forever: after `body_timeout` seconds of silence the upload is dropped with a 400."""
    srv = ServerProcess(tmp_path / "data", env={"DATACOFFER_BODY_TIMEOUT": "1"})
    srv.start()
    try:
        sdk = new_sdk(srv)
        client = SignedClient.of(sdk)
        coffer = f"stall-{OWN_APP_ID}"
        sdk.create_coffer(coffer, ["ap-tianjin"])
        path = f"/{coffer}/stalled.bin"
        up = RawUpload(client, path, 1000)
        up.send(b"x" * 10)
        started = time.monotonic()
        answer = up.response()
        waited = time.monotonic() - started
        up.close()
        check_error(answer, 400, "InvalidArgument")
        assert b"No body bytes arrived for 1 seconds" in answer.content
        assert 0.9 <= waited < 10
        assert writing_rows(srv.data_dir) == [] and tmp_files(srv.data_dir) == []
        sdk.put_object(coffer, "stalled.bin", b"now complete")
        assert fetch(sdk, coffer, "stalled.bin") == b"now complete"
        client.close()
        sdk.close()
    finally:
        srv.stop()


def test_delete_coffer_is_not_locked_by_a_dead_writer(own, tmp_path):
    """A reservation left by a writer that died (staged while the server runs) does not keep
    the coffer locked: DeleteCoffer reclaims it and deletes the coffer; a live one locks it."""
    sdk, srv = own.sdk, own.srv
    coffer = f"dead-writer-{OWN_APP_ID}"
    sdk.create_coffer(coffer, ["ap-tianjin"])
    now = int(time.time() * 1000)
    db = sqlite3.connect(srv.data_dir / "metadata.db", timeout=10)
    (coffer_id,) = db.execute("SELECT id FROM coffers WHERE name = ?", (coffer,)).fetchone()
    for key, holder, lease in (("live.bin", "another-host:1:z", now + 3_600_000),
                               ("dead.bin", f"{socket.gethostname()}:999999:x", now + 3_600_000)):
        db.execute(
            "INSERT INTO objects (coffer_id, key, state, writer_uin, blob_id, content_type,"
            " size, etag, sha256, encrypt_type, created_ms, holder, lease_until_ms)"
            " VALUES (?, ?, 'writing', ?, ?, '', 0, '', '', 0, ?, ?, ?)",
            (coffer_id, key, OWN_UIN, secrets.token_hex(16), now, holder, lease))
    db.commit()
    with pytest.raises(errors.AlreadyLock):  # the live one holds it (the SDK does not retry)
        sdk.delete_coffer(coffer)
    db.execute("DELETE FROM objects WHERE key = 'live.bin'")
    db.commit()
    db.close()
    sdk.delete_coffer(coffer)
    with pytest.raises(errors.NoSuchCoffer):
        sdk.get_coffer(coffer)
    assert [row for row in writing_rows(srv.data_dir) if row[0] == "dead.bin"] == []
