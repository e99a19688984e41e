"""The SDK's `Client`, one method per operation, against the real server: results as models,
errors as the exception of their code with everything the server said."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from datacoffer.client import Client, ObjectReader, errors, models
from datacoffer.errors import CODES
from tests.conftest import UIN
from tests.test_api_coffers import fresh_name

MiB = 1024 * 1024
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
OWNER = models.Owner(f"qcs::cam::uin/{UIN}:uin/{UIN}", UIN)
#: keys that need encoding in a path, a query or XML; all must come back exactly
ODD_KEYS = ["a b.txt", "ünïcødé/名前.bin", "100%", "50%25", "a+b", "q?x=1", "h#y", "d/e/f",
            "d/g", "&<>\"'", "~tilde", "semi;colon", "plus+and space "]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utf8_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: k.encode())


class Recorder:
    """A Client whose every HTTP answer is kept, to compare with what the exceptions say."""

    def __init__(self, server, account, **kw) -> None:
        self.responses: list[httpx.Response] = []
        self.sdk = Client(server.base_url, account.secret_id, account.secret_key, **kw)
        self.sdk._http.event_hooks = {"request": [], "response": [self.responses.append]}

    @property
    def last(self) -> httpx.Response:
        return self.responses[-1]


@pytest.fixture
def rec(server, account):
    r = Recorder(server, account)
    yield r
    r.sdk.close()


class SmallPages(Client):
    """Every listing asks for pages of at most 2 or 3 entries, so that `list_objects`,
    `iter_parts` and `iter_uploads` must follow their markers."""

    def get_coffer(self, coffer, **kw):
        kw["max_keys"] = min(kw.get("max_keys", 1000), 3)
        return super().get_coffer(coffer, **kw)

    def list_parts(self, coffer, key, upload_id, **kw):
        kw["max_parts"] = 2
        return super().list_parts(coffer, key, upload_id, **kw)

    def list_multipart_uploads(self, coffer, **kw):
        kw["max_uploads"] = 2
        return super().list_multipart_uploads(coffer, **kw)


@pytest.fixture
def small_pages(server, account):
    with SmallPages(server.base_url, account.secret_id, account.secret_key) as c:
        yield c


def assert_service_error(err: errors.ServiceError, cls: type, code: str, status: int,
                         response: httpx.Response, *, resource: str,
                         message: str | None = None) -> None:
    """Everything the exception carries, against the answer it was made from."""
    assert type(err) is cls
    assert isinstance(err, errors.ServiceError)
    assert isinstance(err, errors.DataCofferError)
    assert err.code == code
    assert err.status == status
    assert response.status_code == status
    assert response.headers["x-cdcs-error-code"] == code
    if response.request.method == "HEAD":  # no body: the default sentence of the code
        assert response.content == b""
        assert err.message == CODES[code].message
    else:  # what the error document says, field by field
        doc = ET.fromstring(response.content)
        assert doc.findtext("Code") == code
        assert err.message == doc.findtext("Message")
        assert err.resource == doc.findtext("Resource")
        assert err.request_id == doc.findtext("RequestId")
        assert err.trace_id == doc.findtext("TraceId")
    if message is not None:
        assert err.message == message
    assert REQUEST_ID.fullmatch(err.request_id)
    assert err.request_id == response.headers["x-cdcs-request-id"]
    assert err.trace_id == response.headers["x-cdcs-trace-id"]
    assert err.trace_id and err.trace_id != err.request_id
    assert err.resource == resource
    assert str(err) == f"{code}: {err.message} (request {err.request_id})"


# -- coffers ------------------------------------------------------------------------------------

def test_create_coffer_with_two_locations_and_list_coffers(sdk, coffer_name):
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert sdk.create_coffer(coffer_name, ["ap-tianjin", "ap-shanghai"]) is None
    after = datetime.now(UTC) + timedelta(seconds=1)

    listing = sdk.list_coffers()
    assert isinstance(listing, models.ServiceListing)
    assert listing.owner == OWNER
    names = [c.name for c in listing.coffers]
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    (mine,) = [c for c in listing.coffers if c.name == coffer_name]
    assert mine.locations == ["ap-tianjin", "ap-shanghai"]
    assert mine.created.tzinfo is not None
    assert before <= mine.created <= after

    page = sdk.get_coffer(coffer_name)
    assert page == models.CofferListing(
        name=coffer_name, encrypt_type=0, key_id="", key_region="",
        locations=["ap-tianjin", "ap-shanghai"], prefix="", marker="", max_keys=1000,
        is_truncated=False, next_marker="", objects=[], common_prefixes=[])


def test_create_coffer_errors(rec, coffer_name, other):
    sdk = rec.sdk
    sdk.create_coffer(coffer_name, ["ap-guangzhou"])
    with pytest.raises(errors.CofferAlreadyOwnedByYou) as caught:
        sdk.create_coffer(coffer_name, ["ap-guangzhou"])
    err = caught.value
    assert isinstance(err, errors.Conflict)
    assert not isinstance(err, errors.NotFound | errors.InvalidRequest)
    assert_service_error(err, errors.CofferAlreadyOwnedByYou, "CofferAlreadyOwnedByYou", 409,
                         rec.last, resource=coffer_name)
    assert sdk.get_coffer(coffer_name).locations == ["ap-guangzhou"]

    acc, other_client = other
    theirs = fresh_name(acc.app_id, "theirs")
    other_client.make_coffer(theirs)
    with pytest.raises(errors.CofferAlreadyExists) as caught:
        sdk.create_coffer(theirs, ["ap-tianjin"])
    assert_service_error(caught.value, errors.CofferAlreadyExists, "CofferAlreadyExists", 409,
                         rec.last, resource=theirs)

    fresh = fresh_name("1250000000", "bad")
    with pytest.raises(errors.InvalidArgument) as caught:
        sdk.create_coffer(fresh, ["ap-nowhere"])
    assert isinstance(caught.value, errors.InvalidRequest)
    assert_service_error(caught.value, errors.InvalidArgument, "InvalidArgument", 400, rec.last,
                         resource=fresh)
    assert caught.value.message != CODES["InvalidArgument"].message  # the server's own sentence

    with pytest.raises(errors.InvalidCofferName) as caught:
        sdk.create_coffer("Upper-1250000000", ["ap-tianjin"])
    assert caught.value.status == 400
    assert caught.value.resource == "Upper-1250000000"


def test_get_coffer_pages_prefixes_and_odd_keys(sdk, coffer):
    for key in ODD_KEYS:
        assert sdk.put_object(coffer, key, key.encode()).etag == md5(key.encode())
    everything = utf8_sorted(ODD_KEYS)

    whole = sdk.get_coffer(coffer)
    assert [o.key for o in whole.objects] == everything
    for o in whole.objects:
        assert o.size == len(o.key.encode())
        assert o.etag == md5(o.key.encode())
        assert o.owner == models.Owner("1250000000", "1250000000")
        assert o.last_modified.tzinfo is not None
    assert whole.is_truncated is False
    assert whole.next_marker == ""

    # pages of 4, each after the previous page's NextMarker
    pages, marker = [], ""
    while True:
        page = sdk.get_coffer(coffer, max_keys=4, marker=marker)
        assert page.max_keys == 4
        assert page.marker == marker
        pages.append([o.key for o in page.objects])
        if not page.is_truncated:
            assert page.next_marker == ""
            break
        assert page.next_marker == page.objects[-1].key
        marker = page.next_marker
    assert pages == [everything[i:i + 4] for i in range(0, len(everything), 4)]

    # a marker that is itself an odd key
    page = sdk.get_coffer(coffer, marker="a b.txt")
    assert [o.key for o in page.objects] == [k for k in everything if k.encode() > b"a b.txt"]
    assert page.marker == "a b.txt"

    # delimiter: keys with a "/" after the prefix fold into common prefixes
    page = sdk.get_coffer(coffer, delimiter="/")
    assert page.common_prefixes == ["d/", "ünïcødé/"]
    assert [o.key for o in page.objects] == [k for k in everything if "/" not in k]

    page = sdk.get_coffer(coffer, prefix="d/")
    assert page.prefix == "d/"
    assert [o.key for o in page.objects] == ["d/e/f", "d/g"]
    page = sdk.get_coffer(coffer, prefix="d/", delimiter="/")
    assert [o.key for o in page.objects] == ["d/g"]
    assert page.common_prefixes == ["d/e/"]
    page = sdk.get_coffer(coffer, prefix="ünïcødé/")
    assert [o.key for o in page.objects] == ["ünïcødé/名前.bin"]
    for prefix in ("100%", "50%", "a+", "q?", "h#", "&<", "plus+and space"):
        page = sdk.get_coffer(coffer, prefix=prefix)
        assert page.prefix == prefix
        assert [o.key for o in page.objects] == [k for k in everything if k.startswith(prefix)]

    # and every key reads back, by GET and HEAD
    for key in ODD_KEYS:
        with sdk.get_object(coffer, key) as reader:
            assert reader.read() == key.encode()
        assert sdk.head_object(coffer, key).size == len(key.encode())


def test_iter_coffer_and_list_objects_paginate(sdk, small_pages, coffer):
    keys = [f"k{i}" for i in range(7)]
    for key in keys:
        sdk.put_object(coffer, key, key.encode() * 3)
    pages = list(sdk.iter_coffer(coffer, page_size=3))
    assert [[o.key for o in p.objects] for p in pages] == [keys[0:3], keys[3:6], keys[6:7]]
    assert [p.is_truncated for p in pages] == [True, True, False]
    assert [p.marker for p in pages] == ["", "k2", "k5"]
    assert [p.next_marker for p in pages] == ["k2", "k5", ""]
    assert all(p.max_keys == 3 for p in pages)

    listed = list(sdk.list_objects(coffer))
    assert [o.key for o in listed] == keys
    assert [o.size for o in listed] == [6] * 7
    assert [o.etag for o in listed] == [md5(k.encode() * 3) for k in keys]

    # list_objects follows the markers (its pages are of 3 here)
    assert [o.key for o in small_pages.list_objects(coffer)] == keys
    assert [o.key for o in small_pages.list_objects(coffer, prefix="k")] == keys
    assert list(small_pages.list_objects(coffer, prefix="x")) == []

    # common prefixes are paged too
    for key in ("p/1", "p/2", "q/1", "r/1", "s/1"):
        sdk.put_object(coffer, key, b"x")
    pages = list(sdk.iter_coffer(coffer, delimiter="/", page_size=3))
    assert sum(len(p.objects) + len(p.common_prefixes) for p in pages) == 7 + 4
    assert [o.key for p in pages for o in p.objects] == keys
    assert [c for p in pages for c in p.common_prefixes] == ["p/", "q/", "r/", "s/"]
    assert all(len(p.objects) + len(p.common_prefixes) <= 3 for p in pages)
    assert pages[-1].is_truncated is False


def test_delete_coffer(rec, coffer_name):
    sdk = rec.sdk
    sdk.create_coffer(coffer_name, ["ap-tianjin"])
    assert sdk.delete_coffer(coffer_name) is None
    assert coffer_name not in [c.name for c in sdk.list_coffers().coffers]
    with pytest.raises(errors.NoSuchCoffer) as caught:
        sdk.get_coffer(coffer_name)
    assert isinstance(caught.value, errors.NotFound)
    assert_service_error(caught.value, errors.NoSuchCoffer, "NoSuchCoffer", 404, rec.last,
                         resource=coffer_name)
    with pytest.raises(errors.NoSuchCoffer):
        sdk.delete_coffer(coffer_name)

    sdk.create_coffer(coffer_name, ["ap-tianjin"])
    sdk.put_object(coffer_name, "keep", b"x")
    with pytest.raises(errors.CofferNotEmpty) as caught:
        sdk.delete_coffer(coffer_name)
    assert_service_error(caught.value, errors.CofferNotEmpty, "CofferNotEmpty", 409, rec.last,
                         resource=coffer_name)


# -- PutObject ----------------------------------------------------------------------------------

def test_put_object_from_every_kind_of_source(sdk, coffer, tmp_path):
    expected: dict[str, bytes] = {}

    data = b"from bytes"
    assert sdk.put_object(coffer, "bytes", data) == models.PutResult(md5(data))
    expected["bytes"] = data

    data = bytearray(b"from a bytearray")
    assert sdk.put_object(coffer, "bytearray", data).etag == md5(bytes(data))
    expected["bytearray"] = bytes(data)

    buf = io.BytesIO(b"SKIP-from BytesIO after its position")
    buf.seek(5)
    assert sdk.put_object(coffer, "bytesio", buf).etag == md5(b"from BytesIO after its position")
    expected["bytesio"] = b"from BytesIO after its position"

    buf = io.BytesIO(b"0123456789abcdef")
    buf.seek(4)
    assert sdk.put_object(coffer, "bytesio-length", buf, length=6).etag == md5(b"456789")
    expected["bytesio-length"] = b"456789"

    content = os.urandom(MiB + 12345)
    path = tmp_path / "real.bin"
    path.write_bytes(b"HEADER" + content)
    with open(path, "rb") as fh:
        fh.seek(6)
        assert sdk.put_object(coffer, "file", fh, content_type="image/png").etag == md5(content)
    expected["file"] = content

    chunks = [b"one ", b"two ", b"three"]
    assert sdk.put_object(coffer, "iterator", iter(chunks), length=13).etag == md5(b"one two three")
    expected["iterator"] = b"one two three"

    calls = []

    def make() -> list[bytes]:
        calls.append(1)
        return [b"made ", b"by a ", b"callable"]
    assert sdk.put_object(coffer, "callable", make, length=18).etag == md5(b"made by a callable")
    assert len(calls) == 1
    expected["callable"] = b"made by a callable"

    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"through a pipe")
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        assert sdk.put_object(coffer, "pipe", pipe, length=14).etag == md5(b"through a pipe")
    expected["pipe"] = b"through a pipe"

    for key, data in expected.items():
        with sdk.get_object(coffer, key) as reader:
            assert reader.read() == data, key
        info = sdk.head_object(coffer, key)
        assert info.size == len(data)
        assert info.sha256 == sha256(data)
        assert info.content_type == ("image/png" if key == "file"
                                     else "application/octet-stream")


def test_put_object_needs_a_length_for_iterators(sdk, coffer):
    with pytest.raises(ValueError, match="length"):
        sdk.put_object(coffer, "no-length", iter([b"x"]))
    with pytest.raises(ValueError, match="length"):
        sdk.put_object(coffer, "no-length", lambda: [b"x"])
    with pytest.raises(errors.ObjectNotExists):
        sdk.head_object(coffer, "no-length")


def test_put_object_refusals(rec, coffer, account):
    sdk = rec.sdk
    sdk.put_object(coffer, "once", b"first")
    with pytest.raises(errors.ObjectAlreadyExistsOwnedByYou) as caught:
        sdk.put_object(coffer, "once", b"second")
    assert isinstance(caught.value, errors.Conflict)
    assert_service_error(caught.value, errors.ObjectAlreadyExistsOwnedByYou,
                         "ObjectAlreadyExistsOwnedByYou", 409, rec.last,
                         resource=f"{coffer}/once")
    with sdk.get_object(coffer, "once") as reader:
        assert reader.read() == b"first"

    upload = sdk.initiate_multipart_upload(coffer, "uploading")
    with pytest.raises(errors.ObjectAlreadyUploading) as caught:
        sdk.put_object(coffer, "uploading", b"x")
    assert_service_error(caught.value, errors.ObjectAlreadyUploading, "ObjectAlreadyUploading",
                         409, rec.last, resource=f"{coffer}/uploading")
    sdk.abort_multipart_upload(coffer, "uploading", upload.upload_id)

    with pytest.raises(errors.ObjectEmpty) as caught:
        sdk.put_object(coffer, "empty", b"")
    assert caught.value.status == 400

    with pytest.raises(errors.InvalidArgument) as caught:
        sdk.put_object(coffer, "bad-md5", b"data", content_md5="AAAAAAAAAAAAAAAAAAAAAA==")
    assert caught.value.resource == f"{coffer}/bad-md5"

    with pytest.raises(errors.InvalidObjectKey):
        sdk.put_object(coffer, "a/../b", b"x")

    missing = fresh_name(account.app_id, "gone")
    with pytest.raises(errors.CofferNotFound) as caught:
        sdk.put_object(missing, "k", b"x")
    assert_service_error(caught.value, errors.CofferNotFound, "CofferNotFound", 404, rec.last,
                         resource=f"{missing}/k")


# -- GetObject and HeadObject -------------------------------------------------------------------

def test_get_object_whole_range_and_part(sdk, coffer):
    data = bytes(range(256)) * 40  # 10240 bytes
    sdk.put_object(coffer, "obj", data, content_type="text/csv")
    put_at = sdk.head_object(coffer, "obj").last_modified

    with sdk.get_object(coffer, "obj") as reader:
        assert isinstance(reader, ObjectReader)
        assert reader.status == 200
        assert reader.span == (0, 10239)
        assert reader.info == models.ObjectInfo(
            size=10240, etag=md5(data), content_type="text/csv", last_modified=put_at,
            encrypt_type=0, sha256=sha256(data), expiration=None, parts_count=None,
            part_sha256=None)
        assert reader.info.multipart is False
        assert reader.read() == data

    with sdk.get_object(coffer, "obj") as reader:
        chunks = list(reader.iter_bytes(4096))
    assert [len(c) for c in chunks] == [4096, 4096, 2048]
    assert b"".join(chunks) == data

    with sdk.get_object(coffer, "obj", byte_range=(100, 199)) as reader:
        assert reader.status == 206
        assert reader.span == (100, 199)
        assert reader.info.size == 10240  # the whole object's size, from Content-Range
        assert reader.info.sha256 == sha256(data)
        assert reader.read() == data[100:200]

    with sdk.get_object(coffer, "obj", byte_range=(10000, None)) as reader:
        assert reader.status == 206
        assert reader.span == (10000, 10239)
        assert reader.read() == data[10000:]

    with sdk.get_object(coffer, "obj", byte_range=(10239, 99999)) as reader:
        assert reader.span == (10239, 10239)
        assert reader.read() == data[-1:]

    with sdk.get_object(coffer, "obj", part_number=1) as reader:
        assert reader.status == 206
        assert reader.span == (0, 10239)
        assert reader.info.parts_count == 1
        assert reader.info.part_sha256 == sha256(data)
        assert reader.read() == data

    with pytest.raises(errors.InvalidRange) as caught:
        sdk.get_object(coffer, "obj", byte_range=(10240, None))
    assert isinstance(caught.value, errors.InvalidRequest)
    assert caught.value.status == 416
    with pytest.raises(errors.InvalidRange):
        sdk.get_object(coffer, "obj", part_number=2)
    with pytest.raises(errors.InvalidArgument):
        sdk.get_object(coffer, "obj", part_number=0)
    with pytest.raises(errors.InvalidArgument):
        sdk.get_object(coffer, "obj", byte_range=(0, 1), part_number=1)


def test_get_object_parts_of_a_multipart_object(sdk, coffer):
    parts = [os.urandom(MiB), b"the last part"]
    upload = sdk.initiate_multipart_upload(coffer, "mp", content_type="application/x-tar")
    done = [sdk.upload_part(coffer, "mp", upload.upload_id, n, d, length=len(d))
            for n, d in enumerate(parts, 1)]
    sdk.complete_multipart_upload(coffer, "mp", upload.upload_id, done)
    size = MiB + 13
    composite = sha256(b"".join(hashlib.sha256(p).digest() for p in parts)) + "-2"
    etag = md5(b"".join(hashlib.md5(p).digest() for p in parts)) + "-2"

    info = sdk.head_object(coffer, "mp")
    assert (info.size, info.etag, info.sha256, info.content_type) == (
        size, etag, composite, "application/x-tar")
    assert info.multipart is True
    assert info.parts_count is None

    for number, (first, last) in ((1, (0, MiB - 1)), (2, (MiB, MiB + 12))):
        head = sdk.head_object(coffer, "mp", part_number=number)
        assert head.size == size
        assert head.parts_count == 2
        assert head.part_sha256 == sha256(parts[number - 1])
        assert head.sha256 == composite
        with sdk.get_object(coffer, "mp", part_number=number) as reader:
            assert reader.status == 206
            assert reader.span == (first, last)
            assert reader.info == head
            assert reader.read() == parts[number - 1]

    with sdk.get_object(coffer, "mp", byte_range=(MiB - 3, MiB + 2)) as reader:
        assert reader.read() == (parts[0] + parts[1])[MiB - 3:MiB + 3]
    with sdk.get_object(coffer, "mp") as reader:
        assert reader.status == 200
        assert reader.read() == parts[0] + parts[1]


def test_head_object_fields(sdk, coffer):
    data = b"head me, please"
    before = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    sdk.put_object(coffer, "h", data, content_type="text/plain")
    after = datetime.now(UTC) + timedelta(seconds=1)
    info = sdk.head_object(coffer, "h")
    assert isinstance(info, models.ObjectInfo)
    assert info.size == 15
    assert info.etag == md5(data)
    assert info.content_type == "text/plain"
    assert info.sha256 == sha256(data)
    assert info.encrypt_type == 0
    assert info.expiration is None
    assert info.parts_count is None
    assert info.part_sha256 is None
    assert info.multipart is False
    assert info.last_modified.tzinfo is not None
    assert info.last_modified.utcoffset() == timedelta(0)
    assert before <= info.last_modified <= after
    listed = sdk.get_coffer(coffer, prefix="h").objects[0]
    assert info.last_modified == listed.last_modified.replace(microsecond=0)


def test_missing_object_errors(rec, coffer):
    sdk = rec.sdk
    # HEAD has no body: the code comes from x-cdcs-error-code, the message is the default,
    # the resource is the request's own coffer/key
    with pytest.raises(errors.ObjectNotExists) as caught:
        sdk.head_object(coffer, "nothing")
    assert isinstance(caught.value, errors.NotFound)
    assert rec.last.request.method == "HEAD"
    assert rec.last.content == b""
    assert_service_error(caught.value, errors.ObjectNotExists, "ObjectNotExists", 404, rec.last,
                         resource=f"{coffer}/nothing",
                         message="The specified object does not exist.")
    assert "ObjectNotExists" in str(caught.value)
    assert caught.value.request_id in str(caught.value)

    with pytest.raises(errors.ObjectNotExists) as caught:
        sdk.get_object(coffer, "nothing")
    assert rec.last.request.method == "GET"
    assert_service_error(caught.value, errors.ObjectNotExists, "ObjectNotExists", 404, rec.last,
                         resource=f"{coffer}/nothing")

    # each answer its own request id
    ids = {r.headers["x-cdcs-request-id"] for r in rec.responses}
    assert len(ids) == len(rec.responses)


def test_wrong_secret_key_is_auth_failed(server, account, coffer):
    with Client(server.base_url, account.secret_id, "not-the-key") as bad:
        with pytest.raises(errors.AuthFailed) as caught:
            bad.list_coffers()
        assert isinstance(caught.value, errors.AccessDenied)
        assert caught.value.status == 401
        assert caught.value.resource == ""
        with pytest.raises(errors.AuthFailed) as caught:
            bad.head_object(coffer, "k")
        assert caught.value.message == CODES["AuthFailed"].message


# -- multipart uploads --------------------------------------------------------------------------

def test_multipart_upload_methods(rec, small_pages, coffer):
    sdk = rec.sdk
    key = "big file/ü 100%.bin"
    upload = sdk.initiate_multipart_upload(coffer, key, content_type="video/mp4")
    assert isinstance(upload, models.Upload)
    assert (upload.coffer, upload.key) == (coffer, key)
    assert re.fullmatch(r"[0-9a-f]{32}", upload.upload_id)

    bodies = [os.urandom(MiB), os.urandom(MiB), os.urandom(MiB), b"tail of the file"]
    parts = []
    for number, body in enumerate(bodies, 1):
        part = sdk.upload_part(coffer, key, upload.upload_id, number, body, length=len(body))
        assert part == models.Part(number, md5(body), len(body))
        parts.append(part)
    # a part from a callable, re-uploaded over part 4 (the last upload wins)
    bodies[3] = b"the real tail"
    part = sdk.upload_part(coffer, key, upload.upload_id, 4, lambda: [b"the real", b" tail"],
                           length=13)
    assert part == models.Part(4, md5(b"the real tail"), 13)
    parts[3] = part

    listing = sdk.list_parts(coffer, key, upload.upload_id)
    assert (listing.coffer, listing.key, listing.upload_id) == (coffer, key, upload.upload_id)
    assert [(p.number, p.etag, p.size) for p in listing.parts] == [
        (p.number, p.etag, p.size) for p in parts]
    assert all(p.last_modified is not None and p.last_modified.tzinfo is not None
               for p in listing.parts)
    assert listing.is_truncated is False
    assert listing.owner == OWNER
    assert listing.initiator == OWNER

    first = sdk.list_parts(coffer, key, upload.upload_id, max_parts=3)
    assert [p.number for p in first.parts] == [1, 2, 3]
    assert (first.is_truncated, first.next_marker) == (True, 3)
    rest = sdk.list_parts(coffer, key, upload.upload_id, marker=3, max_parts=3)
    assert [p.number for p in rest.parts] == [4]
    assert rest.is_truncated is False
    assert [p.number for p in sdk.iter_parts(coffer, key, upload.upload_id)] == [1, 2, 3, 4]
    # pages of 2: iter_parts follows NextMarker
    assert [(p.number, p.etag) for p in small_pages.iter_parts(coffer, key, upload.upload_id)] \
        == [(p.number, p.etag) for p in parts]

    (found,) = [u for u in sdk.iter_uploads(coffer) if u.key == key]
    assert found.upload_id == upload.upload_id
    assert found.initiator == OWNER
    assert found.owner == OWNER
    assert found.initiated is not None
    assert abs(found.initiated - datetime.now(UTC)) < timedelta(seconds=60)

    result = sdk.complete_multipart_upload(coffer, key, upload.upload_id, reversed(parts))
    etag = md5(b"".join(hashlib.md5(b).digest() for b in bodies)) + "-4"
    assert result == models.CompleteResult(coffer, key, etag, ["ap-tianjin"])
    assert [u for u in sdk.iter_uploads(coffer) if u.key == key] == []

    info = sdk.head_object(coffer, key)
    assert info.size == 3 * MiB + 13
    assert info.etag == etag
    assert info.content_type == "video/mp4"
    assert info.sha256 == sha256(b"".join(hashlib.sha256(b).digest() for b in bodies)) + "-4"
    with sdk.get_object(coffer, key) as reader:
        assert reader.read() == b"".join(bodies)

    with pytest.raises(errors.MultipartAlreadyCompleted) as caught:
        sdk.complete_multipart_upload(coffer, key, upload.upload_id, parts)
    assert_service_error(caught.value, errors.MultipartAlreadyCompleted,
                         "MultipartAlreadyCompleted", 409, rec.last, resource=f"{coffer}/{key}")
    with pytest.raises(errors.MultipartAlreadyCompleted):
        sdk.abort_multipart_upload(coffer, key, upload.upload_id)


def test_abort_and_complete_refusals(rec, coffer):
    sdk = rec.sdk
    upload = sdk.initiate_multipart_upload(coffer, "k")
    small = sdk.upload_part(coffer, "k", upload.upload_id, 1, b"too small", length=9)
    last = sdk.upload_part(coffer, "k", upload.upload_id, 2, b"last", length=4)
    with pytest.raises(errors.EntityTooSmall):
        sdk.complete_multipart_upload(coffer, "k", upload.upload_id, [small, last])
    with pytest.raises(errors.InvalidPart):
        sdk.complete_multipart_upload(coffer, "k", upload.upload_id,
                                      [models.Part(1, md5(b"other"), 5)])
    with pytest.raises(errors.MultipartNotExists):
        sdk.complete_multipart_upload(coffer, "k", upload.upload_id,
                                      [small, last, models.Part(3, md5(b"x"), 1)])
    assert sdk.abort_multipart_upload(coffer, "k", upload.upload_id) is None
    for call in (lambda: sdk.list_parts(coffer, "k", upload.upload_id),
                 lambda: sdk.abort_multipart_upload(coffer, "k", upload.upload_id),
                 lambda: sdk.upload_part(coffer, "k", upload.upload_id, 1, b"x", length=1)):
        with pytest.raises(errors.NoSuchUpload) as caught:
            call()
        assert_service_error(caught.value, errors.NoSuchUpload, "NoSuchUpload", 404, rec.last,
                             resource=f"{coffer}/k")
    # the key is free again
    assert sdk.put_object(coffer, "k", b"now a simple object").etag == md5(b"now a simple object")


def test_list_multipart_uploads_pages_with_odd_keys(sdk, small_pages, coffer):
    keys = ["a b/1", "a b/2", "a b/3", "ü%/x", "q?#/y"]
    ids = {}
    for key in keys:
        ids[key] = sdk.initiate_multipart_upload(coffer, key).upload_id
    expected = [(k, ids[k]) for k in utf8_sorted(keys)]

    whole = sdk.list_multipart_uploads(coffer)
    assert whole.coffer == coffer
    assert [(u.key, u.upload_id) for u in whole.uploads] == expected
    assert whole.is_truncated is False
    assert all(u.coffer == coffer for u in whole.uploads)

    page = sdk.list_multipart_uploads(coffer, max_uploads=2)
    assert [(u.key, u.upload_id) for u in page.uploads] == expected[:2]
    assert page.is_truncated is True
    assert page.next_key_marker == "a b/2"  # decoded, ready to be sent back
    assert page.next_upload_id_marker == ids["a b/2"]
    page = sdk.list_multipart_uploads(coffer, max_uploads=2, key_marker=page.next_key_marker,
                                      upload_id_marker=page.next_upload_id_marker)
    assert [(u.key, u.upload_id) for u in page.uploads] == expected[2:4]

    assert [(u.key, u.upload_id) for u in small_pages.iter_uploads(coffer)] == expected
    assert [u.key for u in small_pages.iter_uploads(coffer, prefix="a b/")] == keys[:3]
    assert [u.key for u in sdk.list_multipart_uploads(coffer, prefix="ü%").uploads] == ["ü%/x"]

    for key in keys:
        sdk.abort_multipart_upload(coffer, key, ids[key])
    assert sdk.list_multipart_uploads(coffer).uploads == []


# -- presigned URLs -----------------------------------------------------------------------------

def test_presigned_get_works_without_credentials(sdk, coffer):
    data = os.urandom(3000)
    key = "shared/ü file+1.bin"
    sdk.put_object(coffer, key, data)
    url = sdk.presign("GET", coffer, key, expires=600)
    query = dict(parse_qsl(urlsplit(url).query))
    assert query["q-sign-algorithm"] == "sha1"
    assert query["q-ak"] == sdk.profile.secret_id
    start, end = (int(v) for v in query["q-sign-time"].split(";"))
    assert end - start == 600
    assert abs(start - time.time()) < 60
    assert sdk.profile.secret_key not in url

    r = httpx.get(url)
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["x-cdcs-checksum-sha256"] == sha256(data)

    if shutil.which("curl"):
        done = subprocess.run(["curl", "-s", url], capture_output=True, timeout=30, check=True)
        assert done.stdout == data

    # a presigned part of the object
    r = httpx.get(sdk.presign("GET", coffer, key, params={"partNumber": "1"}))
    assert r.status_code == 206
    assert r.headers["x-cdcs-mp-parts-count"] == "1"
    assert r.content == data


def test_presigned_url_refused_when_tampered_or_expired(sdk, coffer):
    sdk.put_object(coffer, "secret", b"not for everyone")
    url = sdk.presign("GET", coffer, "secret")
    signature = dict(parse_qsl(urlsplit(url).query))["q-signature"]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    r = httpx.get(url.replace(f"q-signature={signature}", f"q-signature={flipped}"))
    assert r.status_code == 401
    assert r.headers["x-cdcs-error-code"] == "AuthFailed"
    assert b"<Code>AuthFailed</Code>" in r.content
    assert b"not for everyone" not in r.content

    # another key, or a longer validity, under the same signature
    r = httpx.get(url.replace("/secret?", "/other?"))
    assert r.status_code == 401
    assert r.headers["x-cdcs-error-code"] == "AuthFailed"

    # expired beyond the server's 300 s of clock skew
    r = httpx.get(sdk.presign("GET", coffer, "secret", expires=-400))
    assert r.status_code == 401
    assert r.headers["x-cdcs-error-code"] == "AuthFailed"


def test_presigned_put(sdk, coffer):
    url = sdk.presign("PUT", coffer, "uploaded by url")
    r = httpx.put(url, content=b"sent with a URL")
    assert r.status_code == 200
    assert r.headers["etag"] == f'"{md5(b"sent with a URL")}"'
    with sdk.get_object(coffer, "uploaded by url") as reader:
        assert reader.read() == b"sent with a URL"
    # the signature is for PUT only
    r = httpx.get(url)
    assert r.status_code == 401


def test_presigned_url_of_a_client_with_a_region(server, account, sdk, coffer):
    """A URL cannot carry the region's Host name: it is signed for the host it names."""
    sdk.put_object(coffer, "regional", b"via a region")
    with Client(server.base_url, account.secret_id, account.secret_key,
                region="ap-tianjin") as regional:
        assert regional.host == f"cdcs.ap-tianjin.127.0.0.1:{server.port}"
        url = regional.presign("GET", coffer, "regional")
        assert url.startswith(f"{server.base_url}/{coffer}/regional?")
        r = httpx.get(url)
        assert r.status_code == 200
        assert r.content == b"via a region"


# -- lifecycle: the SDK's refusals (the round trip: test_lifecycle_api.py) --------------------

@pytest.mark.parametrize(("method", "args", "cls", "status", "group"), [
    ("get_coffer_lifecycle", (), errors.NoSuchLifecycleConfiguration, 404, errors.NotFound),
    ("put_coffer_lifecycle", (0,), errors.InvalidLifeCycle, 400, errors.InvalidRequest),
], ids=["no-rule", "days-0"])
def test_lifecycle_refusals(rec, coffer, method, args, cls, status, group):
    with pytest.raises(cls) as caught:
        getattr(rec.sdk, method)(coffer, *args)
    assert isinstance(caught.value, group)
    assert len(rec.responses) == 1  # neither is retried
    assert_service_error(caught.value, cls, cls.__name__, status, rec.last, resource=coffer)


# -- the error classes --------------------------------------------------------------------------

def test_one_class_per_server_code():
    assert set(errors.BY_CODE) == set(CODES)
    assert len(CODES) == 35
    groups = {401: errors.AccessDenied, 404: errors.NotFound, 409: errors.Conflict,
              500: errors.ServerFailure}
    for name, spec in CODES.items():
        cls = getattr(errors, name)
        assert cls is errors.BY_CODE[name]
        assert cls.__name__ == name
        assert cls.code == name
        assert cls.status == spec.status
        assert cls.__doc__ == spec.message
        assert issubclass(cls, groups.get(spec.status, errors.InvalidRequest))
        assert issubclass(cls, errors.ServiceError)
    from datacoffer.client.errors import NoSuchCoffer
    assert NoSuchCoffer is errors.BY_CODE["NoSuchCoffer"]
    assert "NoSuchCoffer" in dir(errors)
    with pytest.raises(AttributeError):
        errors.NoSuchThing  # noqa: B018
    assert {"DataSynchronization", "AlreadyLock", "InternalError"} == errors.RETRYABLE


def test_from_response():
    err = errors.from_response(404, "NoSuchUpload", "", request_id="r", trace_id="t",
                               resource="c/k")
    assert type(err) is errors.NoSuchUpload
    assert (err.message, err.request_id, err.trace_id, err.resource) == (
        "The specified multipart upload does not exist.", "r", "t", "c/k")
    assert str(err) == "NoSuchUpload: The specified multipart upload does not exist. (request r)"

    err = errors.from_response(503, "SlowDown", "Please slow down.")
    assert isinstance(err, errors.ServerFailure)
    assert (type(err).__name__, err.code, err.status, err.message) == (
        "SlowDown", "SlowDown", 503, "Please slow down.")
    assert str(err) == "SlowDown: Please slow down."

    err = errors.from_response(502, "", "")
    assert isinstance(err, errors.ServerFailure)
    assert (type(err).__name__, err.code, err.status, err.message) == (
        "HTTP502", "", 502, "HTTP 502")
    assert str(err) == "HTTP 502"

    err = errors.from_response(403, "Forbidden", "no")
    assert isinstance(err, errors.InvalidRequest)
    assert err.status == 403


def test_client_is_thread_safe(sdk, coffer):
    """Threads share one Client (and its pool), as the transfers do."""
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            data = f"thread {i}".encode() * 100
            sdk.put_object(coffer, f"t{i}", data)
            with sdk.get_object(coffer, f"t{i}") as reader:
                assert reader.read() == data
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert [o.key for o in sdk.list_objects(coffer)] == [f"t{i}" for i in range(8)]
