"""Encryption at rest (service.md "Encryption at rest"), on the shared server process:

1. EncryptType 1 and 2 coffers store and serve the exact bytes (simple and multipart objects,
   the SDK's file transfers), with the digests of the plaintext;
2. Range reads decrypt exactly the bytes asked for, whatever the chunk boundaries;
3. nothing of the plaintext reaches the disk (an EncryptType 0 coffer, the control, does);
4. damage to a stored blob (altered, reordered, dropped or cut chunks, a damaged or swapped
   header) is an error, never wrong bytes; undamaged chunks stay readable by Range;
5. the KMS checks: AssumeRoleFailed (the service role) before KMSFailed (the key), on
   PutCoffer and on every read and write of an EncryptType 2 coffer, and recovery when the
   key is enabled or the role granted again;
6. the operator's `admin kms …` and `admin role …` commands.

The shared account never gets the service role (test_api_coffers.py relies on that): every
EncryptType 2 test uses accounts of its own.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import struct
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datacoffer.client import Client, TransferConfig, errors
from tests.conftest import Account, new_account
from tests.serverproc import NO_RETRY, ServerProcess, SignedClient
from tests.test_durability import _auth, _signed_url, check_error, db_rows, wait_until

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB
TAG = 16
REGION = "ap-tianjin"
#: GetObject answers up to this many bytes are read (and checked) whole before they are sent
SMALL_READ = MiB
#: a 3-chunk-and-more object that is answered whole (500 when damaged)
SMALL_SIZE = 200_000
#: an object over SMALL_READ, so that its GetObject streams (a cut connection when damaged)
LARGE_SIZE = 20 * CHUNK + 1234
_names = itertools.count(1)


# -- helpers ----------------------------------------------------------------------------------


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def multipart_etag(parts: list[bytes]) -> str:
    return f"{md5_hex(b''.join(hashlib.md5(p).digest() for p in parts))}-{len(parts)}"


def composite_sha256(parts: list[bytes]) -> str:
    return f"{sha_hex(b''.join(hashlib.sha256(p).digest() for p in parts))}-{len(parts)}"


def coffer_for(app_id: str, stem: str = "enc") -> str:
    return f"{stem}{next(_names)}-{os.getpid() % 1000}-{app_id}"


def sdk_of(server: ServerProcess, acc: Account) -> Client:
    """An SDK client of `acc` that never retries: these tests see every answer as given."""
    return Client(server.base_url, acc.secret_id, acc.secret_key, retry=NO_RETRY)


def raw_of(server: ServerProcess, acc: Account) -> SignedClient:
    return SignedClient(server.base_url, acc.secret_id, acc.secret_key)


def put_coffer(raw: SignedClient, name: str, encrypt_type: int, key_id: str = "",
               key_region: str = "") -> httpx.Response:
    doc: dict[str, object] = {"Locations": {"Location": [REGION]}, "EncryptType": encrypt_type}
    if key_id or key_region:
        doc.update(KeyId=key_id, KeyRegion=key_region)
    return raw.put(f"/{name}", content=json.dumps(doc),
                   headers={"Content-Type": "application/json"})


def blob_path(data_dir: Path, coffer: str, key: str) -> Path:
    """The file of a stored simple object, found through the metadata database."""
    ((blob_id,),) = db_rows(
        data_dir, "SELECT objects.blob_id FROM objects JOIN coffers"
                  " ON coffers.id = objects.coffer_id WHERE coffers.name = ? AND objects.key = ?"
                  " AND objects.state = 'stored'", coffer, key)
    assert blob_id
    return data_dir / "regions" / REGION / "blobs" / blob_id[:2] / blob_id


def header_length(blob: bytes) -> int:
    magic, length = struct.unpack(">4sH", blob[:6])
    assert magic == b"DCE\x01"
    return length


def chunk_count(size: int) -> int:
    return max(1, -(-size // CHUNK))


def chunk_offset(header_len: int, index: int) -> int:
    return header_len + index * (CHUNK + TAG)


def error_doc(r: httpx.Response) -> dict[str, str]:
    root = ET.fromstring(r.content)
    assert root.tag == "Error"
    return {child.tag: child.text or "" for child in root}


def admin_fails(server: ServerProcess, *args: str) -> tuple[int, str, str]:
    done = server.admin(*args, check=False)
    assert not isinstance(done, dict | list), f"{args} succeeded: {done}"
    return done.returncode, done.stdout, done.stderr


# -- fixtures ---------------------------------------------------------------------------------


@dataclass
class Ctx:
    """An account with a coffer of one EncryptType (and, for 2, its KMS key)."""

    server: ServerProcess
    account: Account
    sdk: Client
    raw: SignedClient
    coffer: str
    encrypt_type: int
    key_id: str = ""
    key_region: str = ""

    def close(self) -> None:
        self.sdk.close()
        self.raw.close()


def kms_account(server: ServerProcess, *, grant: bool = True,
                region: str | None = None) -> tuple[Account, str, str]:
    """A new account, its service role granted (unless told not to), and a key of its own."""
    acc = new_account(server)
    if grant:
        assert server.admin("role", "grant", "--app-id", acc.app_id) == {
            "AppId": acc.app_id, "ServiceRole": True}
    args = ("kms", "create-key", "--app-id", acc.app_id) + (("--region", region) if region
                                                            else ())
    key = server.admin(*args)
    return acc, key["KeyId"], key["KeyRegion"]


def make_ctx(server: ServerProcess, encrypt_type: int) -> Ctx:
    if encrypt_type == 2:
        acc, key_id, key_region = kms_account(server)
    else:
        acc, key_id, key_region = new_account(server), "", ""
    ctx = Ctx(server, acc, sdk_of(server, acc), raw_of(server, acc),
              coffer_for(acc.app_id), encrypt_type, key_id, key_region)
    r = put_coffer(ctx.raw, ctx.coffer, encrypt_type, key_id, key_region)
    assert r.status_code == 200, r.text
    return ctx


@pytest.fixture(scope="module", params=[1, 2], ids=["type1", "type2"])
def enc(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[Ctx]:
    ctx = make_ctx(server, request.param)
    yield ctx
    ctx.close()


@pytest.fixture
def kms_ctx(server: ServerProcess) -> Iterator[Callable[..., Ctx]]:
    """Makes EncryptType 2 contexts of new accounts; closes their clients afterwards."""
    made: list[Ctx] = []

    def make() -> Ctx:
        ctx = make_ctx(server, 2)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()


# -- 1. round trips ---------------------------------------------------------------------------


def test_get_coffer_reports_the_encryption(enc: Ctx) -> None:
    r = enc.raw.get(f"/{enc.coffer}")
    assert r.status_code == 200, r.text
    root = ET.fromstring(r.content)
    assert root.tag == "ListCofferResult"
    assert root.findtext("EncryptType") == str(enc.encrypt_type)
    if enc.encrypt_type == 2:
        assert root.findtext("KeyId") == enc.key_id
        assert root.findtext("KeyRegion") == enc.key_region == REGION
    else:
        assert root.find("KeyId") is None
        assert root.find("KeyRegion") is None


@pytest.mark.parametrize("size", [1, 100, CHUNK - 1, CHUNK, CHUNK + 1, SMALL_SIZE, 2 * MiB + 3])
def test_simple_object_round_trip(enc: Ctx, size: int) -> None:
    data = os.urandom(size)
    key = f"rt/{size}.bin"
    path = f"/{enc.coffer}/{key}"
    assert enc.sdk.put_object(enc.coffer, key, data, content_type="application/x-test").etag \
        == md5_hex(data)

    r = enc.raw.get(path)
    assert r.status_code == 200, r.text
    assert r.content == data
    expected = {"etag": f'"{md5_hex(data)}"', "content-length": str(size),
                "content-type": "application/x-test",
                "x-cdcs-encrypt-type": str(enc.encrypt_type),
                "x-cdcs-checksum-sha256": sha_hex(data)}
    assert {k: r.headers.get(k) for k in expected} == expected

    h = enc.raw.head(path)
    assert h.status_code == 200
    assert h.content == b""
    assert {k: h.headers.get(k) for k in expected} == expected

    info = enc.sdk.head_object(enc.coffer, key)
    assert (info.size, info.etag, info.sha256, info.encrypt_type) == (
        size, md5_hex(data), sha_hex(data), enc.encrypt_type)
    with enc.sdk.get_object(enc.coffer, key) as got:
        assert got.read() == data
        assert got.info.encrypt_type == enc.encrypt_type
    listed = {o.key: (o.size, o.etag) for o in enc.sdk.list_objects(enc.coffer, f"rt/{size}.")}
    assert listed == {key: (size, md5_hex(data))}


def test_blob_on_disk_has_the_envelope_format(enc: Ctx) -> None:
    """Header, then one sealed chunk of 64 KiB + 16 per chunk; the header names the wrapping
    (1 master key with no key id, 2 the coffer's KMS key) and is the only place of the key."""
    size = 3 * CHUNK + 5
    data = os.urandom(size)
    enc.sdk.put_object(enc.coffer, "format.bin", data)
    blob = blob_path(enc.server.data_dir, enc.coffer, "format.bin").read_bytes()
    hlen = header_length(blob)
    assert len(blob) == hlen + size + TAG * chunk_count(size)
    chunk, kind, id_len = struct.unpack_from(">IBH", blob, 6)
    assert (chunk, kind) == (CHUNK, enc.encrypt_type)
    assert blob[13:13 + id_len].decode() == enc.key_id
    (wrapped_len,) = struct.unpack_from(">H", blob, 13 + id_len)
    assert hlen == 13 + id_len + 2 + wrapped_len
    assert data[:CHUNK] not in blob


def test_multipart_object_round_trip(enc: Ctx) -> None:
    parts = [os.urandom(MiB), os.urandom(MiB), os.urandom(1234)]
    whole = b"".join(parts)
    key = "mp/three-parts.bin"
    path = f"/{enc.coffer}/{key}"
    up = enc.sdk.initiate_multipart_upload(enc.coffer, key)
    stored = []
    for number, data in enumerate(parts, 1):
        part = enc.sdk.upload_part(enc.coffer, key, up.upload_id, number, data, length=len(data))
        assert part.etag == md5_hex(data)
        stored.append(part)
    done = enc.sdk.complete_multipart_upload(enc.coffer, key, up.upload_id, stored)
    assert done.etag == multipart_etag(parts)

    r = enc.raw.get(path)
    assert r.status_code == 200
    assert r.content == whole
    expected = {"etag": f'"{multipart_etag(parts)}"', "content-length": str(len(whole)),
                "x-cdcs-encrypt-type": str(enc.encrypt_type),
                "x-cdcs-checksum-sha256": composite_sha256(parts)}
    assert {k: r.headers.get(k) for k in expected} == expected
    h = enc.raw.head(path)
    assert h.status_code == 200
    assert {k: h.headers.get(k) for k in expected} == expected

    offset = 0
    for number, data in enumerate(parts, 1):
        r = enc.raw.get(path, params={"partNumber": str(number)})
        assert r.status_code == 206, r.text
        assert r.content == data
        assert r.headers["content-range"] == \
            f"bytes {offset}-{offset + len(data) - 1}/{len(whole)}"
        assert r.headers["x-cdcs-mp-parts-count"] == "3"
        assert r.headers["x-cdcs-part-checksum-sha256"] == sha_hex(data)
        assert r.headers["x-cdcs-encrypt-type"] == str(enc.encrypt_type)
        offset += len(data)

    # ranges across part and chunk boundaries
    for first, last in [(MiB - 10, MiB + 10), (CHUNK - 1, 2 * MiB + 5),
                        (2 * MiB - 1, len(whole) - 1), (MiB + CHUNK, MiB + CHUNK)]:
        with enc.sdk.get_object(enc.coffer, key, byte_range=(first, last)) as got:
            assert got.status == 206
            assert got.span == (first, last)
            assert got.read() == whole[first:last + 1]
    assert {o.key: o.size for o in enc.sdk.list_objects(enc.coffer, "mp/")} == {key: len(whole)}


def test_sdk_file_transfers(enc: Ctx, tmp_path: Path) -> None:
    config = TransferConfig(threshold=MiB, part_size=MiB, concurrency=3)
    for name, size, parts in (("small", 300 * KiB + 1, 1), ("large", 2 * MiB + MiB // 2 + 7, 3)):
        data = os.urandom(size)
        src = tmp_path / f"{name}.src"
        src.write_bytes(data)
        key = f"files/{name}.bin"
        up = enc.sdk.upload_file(enc.coffer, key, src, config=config)
        assert (up.size, up.parts) == (size, parts)
        if parts == 1:
            assert (up.etag, up.sha256) == (md5_hex(data), sha_hex(data))
        info = enc.sdk.head_object(enc.coffer, key)
        assert (info.size, info.etag, info.encrypt_type) == (size, up.etag, enc.encrypt_type)
        dst = tmp_path / f"{name}.dst"
        down = enc.sdk.download_file(enc.coffer, key, dst, config=config)
        assert down.size == size
        assert dst.read_bytes() == data


# -- 2. range reads ---------------------------------------------------------------------------

RANGE_SIZES = sorted({k * CHUNK + d for k in range(4) for d in (-3, -1, 0, 1, 3)
                      if k * CHUNK + d > 0})


@pytest.fixture(scope="module")
def range_objects(enc: Ctx) -> dict[int, bytes]:
    objects = {size: os.urandom(size) for size in RANGE_SIZES}
    for size, data in objects.items():
        enc.sdk.put_object(enc.coffer, f"range/{size}", data)
    return objects


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(draw=st.data())
def test_range_reads_decrypt_exactly(enc: Ctx, range_objects: dict[int, bytes],
                                     draw: st.DataObject) -> None:
    size = draw.draw(st.sampled_from(RANGE_SIZES), label="size")
    data = range_objects[size]
    near = sorted({min(max(b + d, 0), size - 1) for b in range(0, size + CHUNK, CHUNK)
                   for d in (-2, -1, 0, 1)})
    first = draw.draw(st.one_of(st.sampled_from(near), st.integers(0, size - 1)), label="first")
    form = draw.draw(st.sampled_from(["closed", "open", "suffix"]), label="form")
    if form == "closed":
        last_asked = draw.draw(st.one_of(
            st.sampled_from([n for n in near if n >= first] + [size + 5]),
            st.integers(first, size + 5)), label="last")
        header, span = f"bytes={first}-{last_asked}", (first, min(last_asked, size - 1))
    elif form == "open":
        header, span = f"bytes={first}-", (first, size - 1)
    else:
        n = draw.draw(st.integers(1, size + 5), label="suffix")
        header, span = f"bytes=-{n}", (max(0, size - n), size - 1)
    r = enc.raw.get(f"/{enc.coffer}/range/{size}", headers={"Range": header})
    assert r.status_code == 206, (header, r.text)
    assert r.headers["content-range"] == f"bytes {span[0]}-{span[1]}/{size}"
    assert r.headers["content-length"] == str(span[1] - span[0] + 1)
    assert r.headers["x-cdcs-encrypt-type"] == str(enc.encrypt_type)
    assert r.content == data[span[0]:span[1] + 1]


def test_range_beyond_the_end_is_refused(enc: Ctx, range_objects: dict[int, bytes]) -> None:
    size = RANGE_SIZES[-1]
    r = enc.raw.get(f"/{enc.coffer}/range/{size}", headers={"Range": f"bytes={size}-"})
    check_error(r, 416, "InvalidRange")
    assert r.headers["content-range"] == f"bytes */{size}"


# -- 3. nothing in plaintext on disk ----------------------------------------------------------


def _marker(label: str) -> bytes:
    m = f"<<DATACOFFER-{label}-{uuid.uuid4().hex}>>".encode()
    return (m * 4)[:64]


def _files_holding(data_dir: Path, needle: bytes) -> set[Path]:
    return {p for p in data_dir.rglob("*") if p.is_file() and needle in p.read_bytes()}


def test_no_plaintext_on_disk(server: ServerProcess, enc: Ctx) -> None:
    marker = _marker(f"T{enc.encrypt_type}")
    data = marker * 3000  # 192,000 bytes: three chunks of the same plaintext and a short one
    enc.sdk.put_object(enc.coffer, "marker/simple.bin", data)
    key = "marker/multipart.bin"
    up = enc.sdk.initiate_multipart_upload(enc.coffer, key)
    part_data = [marker * (MiB // 64), marker * 10]
    parts = [enc.sdk.upload_part(enc.coffer, key, up.upload_id, n, d, length=len(d))
             for n, d in enumerate(part_data, 1)]
    enc.sdk.complete_multipart_upload(enc.coffer, key, up.upload_id, parts)
    assert enc.sdk.get_object(enc.coffer, "marker/simple.bin").read() == data
    assert enc.sdk.get_object(enc.coffer, key).read() == b"".join(part_data)

    # the control: the same on an EncryptType 0 coffer is found, in its blob only
    control = _marker("T0")
    plain_coffer = coffer_for(enc.account.app_id, "plain")
    enc.sdk.create_coffer(plain_coffer, [REGION])
    enc.sdk.put_object(plain_coffer, "marker.bin", control * 3000)

    data_dir = server.data_dir
    assert (data_dir / "metadata.db").is_file()
    assert _files_holding(data_dir, control) == {blob_path(data_dir, plain_coffer, "marker.bin")}
    assert _files_holding(data_dir, marker) == set()
    assert _files_holding(data_dir, marker[:32]) == set()


# -- 4. damaged blobs -------------------------------------------------------------------------


def _flip(blob: bytearray, offset: int) -> None:
    blob[offset] ^= 0x01


def bit_flip(blob: bytearray, hlen: int, size: int, donor: bytes) -> bytearray:
    _flip(blob, chunk_offset(hlen, 1) + 100)
    return blob


def swap_chunks(blob: bytearray, hlen: int, size: int, donor: bytes) -> bytearray:
    a, b, c = chunk_offset(hlen, 0), chunk_offset(hlen, 1), chunk_offset(hlen, 2)
    return blob[:a] + blob[b:c] + blob[a:b] + blob[c:]


def drop_middle_chunk(blob: bytearray, hlen: int, size: int, donor: bytes) -> bytearray:
    return blob[:chunk_offset(hlen, 1)] + blob[chunk_offset(hlen, 2):]


def truncate_final_chunk(blob: bytearray, hlen: int, size: int, donor: bytes) -> bytearray:
    return blob[:-7]


def damage_magic(blob: bytearray, hlen: int, size: int, donor: bytes) -> bytearray:
    _flip(blob, 0)
    return blob


def swap_header(blob: bytearray, hlen: int, size: int, donor: bytes) -> bytearray:
    assert header_length(donor) == hlen and donor[:hlen] != blob[:hlen]
    return bytearray(donor[:hlen]) + blob[hlen:]


def append_garbage(blob: bytearray, hlen: int, size: int, donor: bytes) -> bytearray:
    return blob + os.urandom(100)


DAMAGES = {f.__name__: f for f in (bit_flip, swap_chunks, drop_middle_chunk,
                                   truncate_final_chunk, damage_magic, swap_header)}


@dataclass
class Damaged:
    ctx: Ctx
    key: str
    data: bytes


def store_damaged(ctx: Ctx, size: int, damage: Callable[..., bytearray], label: str) -> Damaged:
    data = os.urandom(size)
    key = f"damaged/{label}-{size}.bin"
    donor_key = f"damaged/{label}-{size}.donor"
    ctx.sdk.put_object(ctx.coffer, key, data)
    ctx.sdk.put_object(ctx.coffer, donor_key, os.urandom(size))
    path = blob_path(ctx.server.data_dir, ctx.coffer, key)
    donor = blob_path(ctx.server.data_dir, ctx.coffer, donor_key).read_bytes()
    original = path.read_bytes()
    hlen = header_length(original)
    assert len(original) == hlen + size + TAG * chunk_count(size)
    damaged = bytes(damage(bytearray(original), hlen, size, donor))
    assert damaged != original
    path.write_bytes(damaged)
    return Damaged(ctx, key, data)


def streamed_get(raw: SignedClient, path: str) -> tuple[int, dict[str, str], bytes, bool]:
    """(status, headers, body bytes received, whether the connection broke off)."""
    got = bytearray()
    with raw.http.stream("GET", _signed_url(raw, path), headers=_auth(raw, "GET", path)) as r:
        try:
            for piece in r.iter_raw():
                got += piece
            broke = False
        except httpx.RemoteProtocolError:
            broke = True
        return r.status_code, dict(r.headers), bytes(got), broke


def assert_full_get_fails(d: Damaged) -> None:
    """A full GetObject of a damaged object: 500 InternalError when it is read whole before
    answering, else a 200 whose body breaks off before its end, its bytes a true prefix."""
    path = f"/{d.ctx.coffer}/{d.key}"
    for _ in range(2):  # nothing remembers a damaged read as good
        if len(d.data) <= SMALL_READ:
            r = d.ctx.raw.get(path)
            check_error(r, 500, "InternalError")
            with pytest.raises(errors.InternalError):
                d.ctx.sdk.get_object(d.ctx.coffer, d.key)
            continue
        status, headers, got, broke = streamed_get(d.ctx.raw, path)
        assert status == 200  # the headers left before the damage was met
        assert headers["content-length"] == str(len(d.data))
        assert broke
        assert len(got) < len(d.data)
        assert got == d.data[:len(got)]
        with pytest.raises(errors.TransportError), \
                d.ctx.sdk.get_object(d.ctx.coffer, d.key) as reader:
            reader.read()


@pytest.mark.parametrize("size", [SMALL_SIZE, LARGE_SIZE], ids=["small", "large"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_blob_is_never_served(enc: Ctx, damage: str, size: int) -> None:
    d = store_damaged(enc, size, DAMAGES[damage], damage)
    log_before = len(enc.server.log())
    assert_full_get_fails(d)
    # HeadObject does not read the blob; the stored digests are those of the plaintext
    info = enc.sdk.head_object(enc.coffer, d.key)
    assert (info.size, info.sha256) == (size, sha_hex(d.data))
    wait_until(lambda: "encrypted blob" in enc.server.log()[log_before:],
               what="the server log to name the decryption failure")
    # the server is fine for other objects
    enc.sdk.put_object(enc.coffer, f"{d.key}.after", b"fine")
    assert enc.sdk.get_object(enc.coffer, f"{d.key}.after").read() == b"fine"


@pytest.mark.parametrize("size", [SMALL_SIZE, LARGE_SIZE], ids=["small", "large"])
def test_range_reads_only_the_chunks_they_need(enc: Ctx, size: int) -> None:
    """Chunk 1 is damaged: ranges within other chunks still answer the right bytes; a range
    that touches chunk 1 is refused (500: a range is read whole before the answer)."""
    d = store_damaged(enc, size, bit_flip, "range")
    last = chunk_count(size) - 1
    for first, end in [(0, 10), (CHUNK - 5, CHUNK - 1), (2 * CHUNK, 2 * CHUNK + 1000),
                       (last * CHUNK, size - 1), (3 * CHUNK + 7, size - 1)]:
        with enc.sdk.get_object(enc.coffer, d.key, byte_range=(first, end)) as r:
            assert r.status == 206
            assert r.span == (first, end)
            assert r.read() == d.data[first:end + 1]
    for first, end in [(CHUNK, CHUNK), (CHUNK - 1, CHUNK), (0, 2 * CHUNK)]:
        r = enc.raw.get(f"/{enc.coffer}/{d.key}", headers={"Range": f"bytes={first}-{end}"})
        check_error(r, 500, "InternalError")


@pytest.mark.parametrize("size", [SMALL_SIZE, LARGE_SIZE], ids=["small", "large"])
def test_appended_garbage_never_changes_the_bytes(enc: Ctx, size: int) -> None:
    """Bytes after the final chunk are never served: a full read gives the object or fails."""
    d = store_damaged(enc, size, append_garbage, "garbage-bytes")
    path = f"/{enc.coffer}/{d.key}"
    if size <= SMALL_READ:
        r = enc.raw.get(path)
        assert r.status_code in (200, 500)
        if r.status_code == 200:
            assert r.content == d.data
    else:
        status, headers, got, broke = streamed_get(enc.raw, path)
        assert status == 200 and headers["content-length"] == str(size)
        assert got == d.data[:len(got)]
        assert broke or got == d.data


@pytest.mark.parametrize("size", [SMALL_SIZE, LARGE_SIZE], ids=["small", "large"])
def test_appended_garbage_is_detected(enc: Ctx, size: int) -> None:
    d = store_damaged(enc, size, append_garbage, "garbage")
    assert_full_get_fails(d)


def test_blob_of_another_object_is_not_served(enc: Ctx) -> None:
    size = SMALL_SIZE
    mine, theirs = os.urandom(size), os.urandom(size)
    enc.sdk.put_object(enc.coffer, "moved/mine.bin", mine)
    enc.sdk.put_object(enc.coffer, "moved/theirs.bin", theirs)
    data_dir = enc.server.data_dir
    blob_path(data_dir, enc.coffer, "moved/mine.bin").write_bytes(
        blob_path(data_dir, enc.coffer, "moved/theirs.bin").read_bytes())
    check_error(enc.raw.get(f"/{enc.coffer}/moved/mine.bin"), 500, "InternalError")
    r = enc.raw.get(f"/{enc.coffer}/moved/mine.bin", headers={"Range": "bytes=0-99"})
    assert r.content != theirs[:100]
    check_error(r, 500, "InternalError")


def part_blob_paths(data_dir: Path, coffer: str, key: str) -> list[Path]:
    rows = db_rows(
        data_dir, "SELECT parts.blob_id FROM parts"
                  " JOIN uploads ON uploads.upload_id = parts.upload_id"
                  " JOIN objects ON objects.id = uploads.object_id"
                  " JOIN coffers ON coffers.id = objects.coffer_id"
                  " WHERE coffers.name = ? AND objects.key = ? AND parts.state = 'stored'"
                  " ORDER BY parts.part_number", coffer, key)
    return [data_dir / "regions" / REGION / "blobs" / b[:2] / b for (b,) in rows]


def test_damaged_part_of_a_multipart_object(enc: Ctx) -> None:
    """Each part is a blob of its own, with its own data key: damage to part 2 fails the
    whole read (streamed: cut off) and that part's read (500); parts 1 and 3 and ranges
    within part 2's undamaged chunks still read right."""
    parts = [os.urandom(MiB), os.urandom(MiB), os.urandom(1234)]
    whole = b"".join(parts)
    key = "damaged/multipart.bin"
    up = enc.sdk.initiate_multipart_upload(enc.coffer, key)
    done = [enc.sdk.upload_part(enc.coffer, key, up.upload_id, n, d, length=len(d))
            for n, d in enumerate(parts, 1)]
    enc.sdk.complete_multipart_upload(enc.coffer, key, up.upload_id, done)
    paths = part_blob_paths(enc.server.data_dir, enc.coffer, key)
    assert len(paths) == 3
    blobs = [p.read_bytes() for p in paths]
    headers = [b[:header_length(b)] for b in blobs]
    assert len(set(headers)) == 3  # a fresh wrapped data key per part
    for blob, data in zip(blobs, parts, strict=True):
        assert len(blob) == header_length(blob) + len(data) + TAG * chunk_count(len(data))

    damaged = bytearray(blobs[1])
    _flip(damaged, chunk_offset(header_length(blobs[1]), 3) + 5)
    paths[1].write_bytes(bytes(damaged))

    path = f"/{enc.coffer}/{key}"
    status, headers_, got, broke = streamed_get(enc.raw, path)
    assert (status, headers_["content-length"], broke) == (200, str(len(whole)), True)
    assert len(got) < len(whole) and got == whole[:len(got)]
    for number in (1, 3):
        r = enc.raw.get(path, params={"partNumber": str(number)})
        assert r.status_code == 206 and r.content == parts[number - 1]
    check_error(enc.raw.get(path, params={"partNumber": "2"}), 500, "InternalError")
    for first, last in [(MiB, MiB + 3 * CHUNK - 1), (MiB + 4 * CHUNK, 2 * MiB + 100)]:
        with enc.sdk.get_object(enc.coffer, key, byte_range=(first, last)) as r:
            assert r.read() == whole[first:last + 1]
    r = enc.raw.get(path, headers={"Range": f"bytes={MiB + 3 * CHUNK}-{MiB + 3 * CHUNK}"})
    check_error(r, 500, "InternalError")


# -- 5. the KMS and the service role ----------------------------------------------------------


def assert_refused(r: httpx.Response, code: str, *, names: str = "",
                   leaks: tuple[str, ...] = (), resource: str | None = None) -> None:
    """The exact refusal; its message names `names` and none of `leaks` nor server insides.
    Its Resource is the coffer (whose key was refused), for object requests too."""
    check_error(r, 409, code)
    doc = error_doc(r)
    assert doc["RequestId"] == r.headers["x-cdcs-request-id"]
    assert doc["TraceId"] == r.headers["x-cdcs-trace-id"]
    if resource is None:
        resource = r.request.url.path.split("/")[1]
    assert doc["Resource"] == resource, doc
    message = doc["Message"]
    assert message
    if names:
        assert names in message, message
    for word in (*leaks, "Traceback", "built-in KMS", "sqlite", "InvalidTag", "belongs",
                 "metadata", "/tmp", "KmsError"):
        assert word not in r.text, (word, r.text)


def test_put_coffer_with_a_missing_key_is_kms_failed(server: ServerProcess) -> None:
    acc, _, _ = kms_account(server)
    raw = raw_of(server, acc)
    missing = str(uuid.uuid4())
    name = coffer_for(acc.app_id)
    r = put_coffer(raw, name, 2, missing, REGION)
    assert_refused(r, "KMSFailed", names=missing)
    assert error_doc(r)["Message"] == f"The KMS key {missing} cannot be used."
    assert_refused(put_coffer(raw, name, 2, "not-a-key", REGION), "KMSFailed",
                   names="not-a-key")
    check_error(raw.get(f"/{name}"), 404, "NoSuchCoffer")  # nothing was created
    raw.close()


def test_put_coffer_with_another_accounts_key_is_kms_failed(server: ServerProcess) -> None:
    acc, _, _ = kms_account(server)
    other, other_key, _ = kms_account(server)
    raw = raw_of(server, acc)
    name = coffer_for(acc.app_id)
    r = put_coffer(raw, name, 2, other_key, REGION)
    assert_refused(r, "KMSFailed", names=other_key, leaks=(other.app_id, other.uin))
    # the same words as for a key that does not exist: no oracle of other accounts' keys
    assert error_doc(r)["Message"] == f"The KMS key {other_key} cannot be used."
    # the operator's log has the detail, under the TraceId
    trace = r.headers["x-cdcs-trace-id"]
    wait_until(lambda: f"trace {trace}: KMSFailed {name}" in server.log()
               and f"belongs to account {other.app_id}" in server.log(),
               what="the log line of the refusal")
    check_error(raw.get(f"/{name}"), 404, "NoSuchCoffer")
    # the owner can use it
    other_raw = raw_of(server, other)
    assert put_coffer(other_raw, coffer_for(other.app_id), 2, other_key, REGION).status_code \
        == 200
    raw.close()
    other_raw.close()


def test_put_coffer_with_another_key_region_is_kms_failed(server: ServerProcess) -> None:
    acc, key_id, key_region = kms_account(server)
    assert key_region == REGION
    raw = raw_of(server, acc)
    name = coffer_for(acc.app_id)
    r = put_coffer(raw, name, 2, key_id, "ap-shanghai")
    assert_refused(r, "KMSFailed", names=key_id)
    assert "ap-shanghai" in error_doc(r)["Message"]
    check_error(raw.get(f"/{name}"), 404, "NoSuchCoffer")
    # a key made in ap-shanghai is good with KeyRegion ap-shanghai (the coffer's data may be
    # anywhere) and refused with ap-tianjin
    sh = server.admin("kms", "create-key", "--app-id", acc.app_id, "--region", "ap-shanghai")
    assert_refused(put_coffer(raw, name, 2, sh["KeyId"], REGION), "KMSFailed",
                   names=sh["KeyId"])
    assert put_coffer(raw, name, 2, sh["KeyId"], "ap-shanghai").status_code == 200
    raw.close()


def test_put_coffer_without_the_role_is_assume_role_failed(server: ServerProcess) -> None:
    acc, key_id, _ = kms_account(server, grant=False)
    raw = raw_of(server, acc)
    name = coffer_for(acc.app_id)
    for kid, region in ((key_id, REGION), (str(uuid.uuid4()), REGION), (key_id, "ap-shanghai")):
        r = put_coffer(raw, name, 2, kid, region)
        assert_refused(r, "AssumeRoleFailed", names=acc.app_id)
    with sdk_of(server, acc) as sdk, pytest.raises(errors.AssumeRoleFailed):
        sdk.create_coffer(name, [REGION], encrypt_type=2, key_id=key_id, key_region=REGION)
    check_error(raw.get(f"/{name}"), 404, "NoSuchCoffer")
    # EncryptType 1 needs no role
    assert put_coffer(raw, coffer_for(acc.app_id), 1).status_code == 200
    server.admin("role", "grant", "--app-id", acc.app_id)
    assert put_coffer(raw, name, 2, key_id, REGION).status_code == 200
    raw.close()


def _start_upload(ctx: Ctx, key: str) -> str:
    return ctx.sdk.initiate_multipart_upload(ctx.coffer, key).upload_id


def _writes_and_reads_refused(ctx: Ctx, code: str, stored_key: str, upload_id: str) -> None:
    names = ctx.key_id if code == "KMSFailed" else ctx.account.app_id
    base = f"/{ctx.coffer}"
    # PutObject
    assert_refused(ctx.raw.put(f"{base}/new.bin", content=b"new bytes"), code, names=names)
    # InitiateMultipartUpload
    assert_refused(ctx.raw.request("POST", f"{base}/new-mp.bin", params={"uploads": ""}),
                   code, names=names)
    # UploadPart to an upload begun before
    assert_refused(ctx.raw.put(f"{base}/mp.bin", params={"partNumber": "2",
                                                        "uploadId": upload_id},
                               content=b"x" * 100), code, names=names)
    # GetObject, whole and ranged, small and streamed
    for key in (stored_key, "big.bin"):
        assert_refused(ctx.raw.get(f"{base}/{key}"), code, names=names)
        assert_refused(ctx.raw.get(f"{base}/{key}", headers={"Range": "bytes=0-9"}), code,
                       names=names)
    err = {"KMSFailed": errors.KMSFailed, "AssumeRoleFailed": errors.AssumeRoleFailed}[code]
    with pytest.raises(err):
        ctx.sdk.get_object(ctx.coffer, stored_key)
    with pytest.raises(err):
        ctx.sdk.put_object(ctx.coffer, "new.bin", b"new bytes")
    # HeadObject does not need the key
    h = ctx.raw.head(f"{base}/{stored_key}")
    assert h.status_code == 200
    assert h.headers["x-cdcs-encrypt-type"] == "2"
    # no key was taken, no upload begun
    assert {o.key for o in ctx.sdk.list_objects(ctx.coffer)} == {stored_key, "big.bin"}
    assert [u.key for u in ctx.sdk.iter_uploads(ctx.coffer)] == ["mp.bin"]


def _writes_and_reads_work(ctx: Ctx, stored: dict[str, bytes], upload_id: str,
                           part1: bytes) -> None:
    for key, data in stored.items():
        assert ctx.sdk.get_object(ctx.coffer, key).read() == data
        with ctx.sdk.get_object(ctx.coffer, key, byte_range=(5, 70_000)) as r:
            assert r.read() == data[5:70_001]
    ctx.sdk.put_object(ctx.coffer, "new.bin", b"new bytes")
    assert ctx.sdk.get_object(ctx.coffer, "new.bin").read() == b"new bytes"
    ctx.sdk.abort_multipart_upload(ctx.coffer, "new-mp.bin",
                                   _start_upload(ctx, "new-mp.bin"))
    part2 = os.urandom(100)
    parts = [ctx.sdk.upload_part(ctx.coffer, "mp.bin", upload_id, 1, part1, length=len(part1)),
             ctx.sdk.upload_part(ctx.coffer, "mp.bin", upload_id, 2, part2, length=100)]
    ctx.sdk.complete_multipart_upload(ctx.coffer, "mp.bin", upload_id, parts)
    assert ctx.sdk.get_object(ctx.coffer, "mp.bin").read() == part1 + part2


def _prepare(ctx: Ctx) -> tuple[dict[str, bytes], str, bytes]:
    stored = {"small.bin": os.urandom(SMALL_SIZE), "big.bin": os.urandom(LARGE_SIZE)}
    for key, data in stored.items():
        ctx.sdk.put_object(ctx.coffer, key, data)
    upload_id = _start_upload(ctx, "mp.bin")
    part1 = os.urandom(MiB)
    ctx.sdk.upload_part(ctx.coffer, "mp.bin", upload_id, 1, part1, length=MiB)
    return stored, upload_id, part1


def test_disabled_key_refuses_reads_and_writes_until_enabled(
        server: ServerProcess, kms_ctx: Callable[..., Ctx]) -> None:
    ctx = kms_ctx()
    stored, upload_id, part1 = _prepare(ctx)
    doc = server.admin("kms", "disable-key", "--key-id", ctx.key_id)
    assert doc == {"KeyId": ctx.key_id, "KeyRegion": REGION, "AppId": ctx.account.app_id,
                   "Enabled": False}
    _writes_and_reads_refused(ctx, "KMSFailed", "small.bin", upload_id)
    r = ctx.raw.get(f"/{ctx.coffer}/small.bin")
    assert "disabled" in error_doc(r)["Message"]
    # a new coffer with the disabled key is refused too
    assert_refused(put_coffer(ctx.raw, coffer_for(ctx.account.app_id), 2, ctx.key_id, REGION),
                   "KMSFailed", names=ctx.key_id)

    doc = server.admin("kms", "enable-key", "--key-id", ctx.key_id)
    assert doc["Enabled"] is True
    _writes_and_reads_work(ctx, stored, upload_id, part1)


def test_revoked_role_refuses_reads_and_writes_until_granted(
        server: ServerProcess, kms_ctx: Callable[..., Ctx]) -> None:
    ctx = kms_ctx()
    stored, upload_id, part1 = _prepare(ctx)
    assert server.admin("role", "revoke", "--app-id", ctx.account.app_id) == {
        "AppId": ctx.account.app_id, "ServiceRole": False}
    _writes_and_reads_refused(ctx, "AssumeRoleFailed", "small.bin", upload_id)
    # the role is checked before the key: a disabled key still says AssumeRoleFailed
    server.admin("kms", "disable-key", "--key-id", ctx.key_id)
    assert_refused(ctx.raw.get(f"/{ctx.coffer}/small.bin"), "AssumeRoleFailed")
    server.admin("kms", "enable-key", "--key-id", ctx.key_id)

    server.admin("role", "grant", "--app-id", ctx.account.app_id)
    _writes_and_reads_work(ctx, stored, upload_id, part1)


# -- 6. the admin commands --------------------------------------------------------------------


def test_admin_create_key(server: ServerProcess) -> None:
    acc = new_account(server)
    doc = server.admin("kms", "create-key", "--app-id", acc.app_id)
    assert set(doc) == {"KeyId", "KeyRegion"}
    assert str(uuid.UUID(doc["KeyId"])) == doc["KeyId"]
    assert doc["KeyRegion"] == "ap-tianjin"  # the first configured region
    other = server.admin("kms", "create-key", "--app-id", acc.app_id, "--region", "ap-guangzhou")
    assert set(other) == {"KeyId", "KeyRegion"}
    assert other["KeyRegion"] == "ap-guangzhou"
    assert other["KeyId"] != doc["KeyId"]

    code, out, err = admin_fails(server, "kms", "create-key", "--app-id", acc.app_id,
                                 "--region", "mars-1")
    assert code == 2 and out == ""
    assert "unknown region 'mars-1'" in err and "ap-tianjin" in err

    code, out, err = admin_fails(server, "kms", "create-key", "--app-id", "1999999999")
    assert code == 1 and out == ""
    assert err.strip() == "error: no account with AppID 1999999999"
    assert [k["KeyId"] for k in server.admin("kms", "list-keys", "--app-id", acc.app_id)] == [
        doc["KeyId"], other["KeyId"]]


def test_admin_disable_enable_and_list_keys(server: ServerProcess) -> None:
    acc, key_id, _ = kms_account(server, grant=False)
    expected = {"KeyId": key_id, "KeyRegion": REGION, "AppId": acc.app_id}
    assert server.admin("kms", "disable-key", "--key-id", key_id) == {**expected,
                                                                      "Enabled": False}
    assert server.admin("kms", "list-keys", "--app-id", acc.app_id) == [
        {**expected, "Enabled": False}]
    assert server.admin("kms", "enable-key", "--key-id", key_id) == {**expected,
                                                                     "Enabled": True}

    everyone = server.admin("kms", "list-keys")
    assert {**expected, "Enabled": True} in everyone
    assert len({k["AppId"] for k in everyone}) > 1  # other tests' keys too
    assert all(set(k) == {"KeyId", "KeyRegion", "AppId", "Enabled"} for k in everyone)
    # no key material in the listing, in any spelling of what the database holds
    printed = json.dumps(everyone)
    sealed = db_rows(server.data_dir, "SELECT sealed_material FROM kms_keys")
    assert len(sealed) == len(everyone)
    for (material,) in sealed:
        material = bytes(material)
        for form in (material.hex(), base64.b64encode(material).decode(),
                     material[:16].hex()):
            assert form not in printed

    code, out, err = admin_fails(server, "kms", "disable-key", "--key-id", "no-such-key")
    assert code == 1 and out == ""
    assert err.strip() == "error: no key 'no-such-key' in the KMS"


def test_admin_role_grant_and_revoke(server: ServerProcess) -> None:
    acc = new_account(server)
    assert server.admin("role", "grant", "--app-id", acc.app_id) == {
        "AppId": acc.app_id, "ServiceRole": True}
    assert db_rows(server.data_dir, "SELECT count(*) FROM service_roles WHERE app_id = ?",
                   acc.app_id) == [(1,)]
    assert server.admin("role", "revoke", "--app-id", acc.app_id) == {
        "AppId": acc.app_id, "ServiceRole": False}
    assert db_rows(server.data_dir, "SELECT count(*) FROM service_roles WHERE app_id = ?",
                   acc.app_id) == [(0,)]
    code, out, err = admin_fails(server, "role", "grant", "--app-id", "1999999998")
    assert code == 1 and out == ""
    assert err.strip() == "error: no account with AppID 1999999998"


def test_shared_account_has_no_service_role(server: ServerProcess, account: Account) -> None:
    """The guard of the other modules' assumption: nothing here granted it."""
    rows = db_rows(server.data_dir, "SELECT app_id FROM service_roles WHERE app_id = ?",
                   account.app_id)
    assert rows == []
