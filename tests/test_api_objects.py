"""Wire shape of PutObject, GetObject and HeadObject, against api.md and errors.md."""

from __future__ import annotations

import base64
import hashlib
import re
import time
import xml.etree.ElementTree as ET
from email.utils import parsedate_to_datetime

import pytest

from datacoffer import signing
from tests.test_api_coffers import RFC1123, assert_common, assert_error

TEN = b"0123456789"


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def send_raw(client, method: str, decoded_path: str, raw_path: str, **kw):
    """Send `raw_path` as is (e.g. with %2E for a dot segment, which httpx would otherwise
    normalise away), signed for its decoded form as security.md says."""
    host = client.base_url.split("://", 1)[1]
    fields = signing.sign(client.secret_id, client.secret_key, method, decoded_path, None,
                          {"host": host})
    headers = {**kw.pop("headers", {}), "Authorization": signing.authorization_header(fields)}
    return client.http.request(method, raw_path, headers=headers, **kw)


def put(client, coffer: str, key: str, data: bytes, **headers: str):
    return client.put(f"/{coffer}/{key}", content=data, headers=headers)


# -- PutObject ------------------------------------------------------------------------------------

def test_put_object_answer(client, coffer):
    data = b"archive me"
    r = put(client, coffer, "doc.bin", data)
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == "0"
    assert r.headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert RFC1123.fullmatch(r.headers["last-modified"])
    assert_common(r, region="ap-tianjin")
    assert "x-cdcs-error-code" not in r.headers
    assert "x-cdcs-trace-id" not in r.headers
    g = client.get(f"/{coffer}/doc.bin")
    assert g.headers["last-modified"] == r.headers["last-modified"]
    assert g.headers["etag"] == r.headers["etag"]


def test_content_type_stored_and_defaulted(client, coffer):
    assert put(client, coffer, "plain", b"x").status_code == 200
    assert put(client, coffer, "typed", b"x", **{"Content-Type": "text/plain"}).status_code == 200
    assert put(client, coffer, "img", b"x", **{"Content-Type": "image/png"}).status_code == 200
    for key, expected in (("plain", "application/octet-stream"), ("typed", "text/plain"),
                          ("img", "image/png")):
        assert client.get(f"/{coffer}/{key}").headers["content-type"] == expected
        assert client.head(f"/{coffer}/{key}").headers["content-type"] == expected


def test_content_md5_verified(client, coffer):
    data = b"checked bytes"
    r = put(client, coffer, "good", data, **{"Content-MD5": md5_b64(data)})
    assert r.status_code == 200
    assert r.headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'

    r = put(client, coffer, "bad", data, **{"Content-MD5": md5_b64(b"other bytes")})
    assert_error(r, 400, "InvalidArgument", f"{coffer}/bad", region="ap-tianjin")
    assert_error(client.get(f"/{coffer}/bad"), 404, "ObjectNotExists", f"{coffer}/bad")
    # The key stays free.
    r = put(client, coffer, "bad", data, **{"Content-MD5": md5_b64(data)})
    assert r.status_code == 200
    assert client.get(f"/{coffer}/bad").content == data


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode(), ""])
def test_malformed_content_md5(client, coffer, value):
    r = put(client, coffer, "k", b"data", **{"Content-MD5": value})
    assert_error(r, 400, "InvalidArgument", f"{coffer}/k")
    assert put(client, coffer, "k", b"data").status_code == 200


def test_missing_content_length(client, coffer):
    def body():
        yield b"chunked "
        yield b"bytes"

    r = client.put(f"/{coffer}/chunked", content=body())
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    message = assert_error(r, 400, "InvalidArgument", f"{coffer}/chunked")
    assert "Content-Length" in message
    assert put(client, coffer, "chunked", b"chunked bytes").status_code == 200


def test_empty_body(client, coffer):
    r = put(client, coffer, "empty", b"")
    assert r.request.headers["content-length"] == "0"
    assert_error(r, 400, "ObjectEmpty", f"{coffer}/empty")
    assert_error(client.head(f"/{coffer}/empty"), 404, "ObjectNotExists", f"{coffer}/empty")


def test_put_into_missing_coffer(client, account):
    name = f"missing-{account.app_id}"
    assert_error(put(client, name, "k", b"x"), 404, "CofferNotFound", f"{name}/k")


def test_immutable(client, coffer):
    first = b"first version"
    r = put(client, coffer, "fixed", first)
    assert r.status_code == 200
    etag = r.headers["etag"]
    r = put(client, coffer, "fixed", b"second version")
    assert_error(r, 409, "ObjectAlreadyExistsOwnedByYou", f"{coffer}/fixed", region="ap-tianjin")
    g = client.get(f"/{coffer}/fixed")
    assert (g.content, g.headers["etag"]) == (first, etag)
    assert g.headers["x-cdcs-checksum-sha256"] == hashlib.sha256(first).hexdigest()


# -- Object keys ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key", [
    "k" * 850,
    "中" * 283 + "k",  # 850 bytes of UTF-8
    "a b.txt", "a+b", "100%", "what?", "#hash", "a%2Fb", "a%20b", "~!$&'()*,;=:@[]",
    "中文/😀 é.txt", "dir/sub/file", "a//b", ".hidden", "..x", "a/.b/..c", "x.", "\u0080",
])
def test_keys_round_trip(client, coffer, key):
    data = key.encode()
    r = put(client, coffer, key, data)
    assert r.status_code == 200, r.text
    g = client.get(f"/{coffer}/{key}")
    assert g.status_code == 200
    assert g.content == data
    h = client.head(f"/{coffer}/{key}")
    assert h.status_code == 200
    assert h.headers["content-length"] == str(len(data))
    listed = [k.text for k in ET.fromstring(client.get(f"/{coffer}").content).iter("Key")]
    assert listed == [key]


@pytest.mark.parametrize("key", [
    "k" * 851,
    "中" * 284,
    "a\x01b", "a\x7fb", "a\nb", "a\tb", "\x00", "a\x1f",
])
def test_bad_keys(client, coffer, key):
    # A control character cannot stand in an XML document: the Resource shows it
    # percent-encoded.
    resource = f"{coffer}/" + re.sub("[\x00-\x1f\x7f]", lambda m: f"%{ord(m.group()):02X}", key)
    assert_error(put(client, coffer, key, b"x"), 400, "InvalidObjectKey", resource)
    assert_error(client.get(f"/{coffer}/{key}"), 400, "InvalidObjectKey", resource)
    assert_error(client.head(f"/{coffer}/{key}"), 400, "InvalidObjectKey", resource)


@pytest.mark.parametrize(("key", "raw"), [
    ("/a", "/a"),
    ("a/./b", "a/%2E/b"),
    ("a/../b", "a/%2E%2E/b"),
    (".", "%2E"),
    ("..", "%2E%2E"),
    ("a/.", "a/%2E"),
    ("./a", "%2E/a"),
])
def test_bad_key_segments(client, coffer, key, raw):
    resource = f"{coffer}/{key}"
    r = send_raw(client, "PUT", f"/{coffer}/{key}", f"/{coffer}/{raw}", content=b"x")
    assert r.request.url.raw_path.decode() == f"/{coffer}/{raw}"
    assert_error(r, 400, "InvalidObjectKey", resource)
    r = send_raw(client, "GET", f"/{coffer}/{key}", f"/{coffer}/{raw}")
    assert_error(r, 400, "InvalidObjectKey", resource)


def test_key_with_invalid_utf8(client, coffer):
    """Bytes that are not UTF-8 break the key rule; the Resource shows them percent-encoded."""
    r = send_raw(client, "PUT", f"/{coffer}/a\udcffb", f"/{coffer}/a%FFb", content=b"x")
    assert_error(r, 400, "InvalidObjectKey", f"{coffer}/a%FFb")
    r = send_raw(client, "GET", f"/{coffer}/a\udcffb", f"/{coffer}/a%FFb",
                 headers={"Accept": "application/json"})
    assert r.status_code == 400
    assert r.json()["Resource"] == f"{coffer}/a%FFb"


# -- GetObject and HeadObject ---------------------------------------------------------------------

@pytest.fixture
def ten(client, coffer):
    """A 10-byte object."""
    r = put(client, coffer, "ten.txt", TEN, **{"Content-Type": "text/plain"})
    assert r.status_code == 200
    return f"/{coffer}/ten.txt"


def test_get_object_headers(client, coffer, ten):
    r = client.get(ten)
    assert r.status_code == 200
    assert r.content == TEN
    assert_common(r, region="ap-tianjin")
    h = r.headers
    assert h["content-length"] == "10"
    assert h["content-type"] == "text/plain"
    assert h["etag"] == f'"{hashlib.md5(TEN).hexdigest()}"'
    assert h["x-cdcs-checksum-sha256"] == hashlib.sha256(TEN).hexdigest()
    assert h["x-cdcs-encrypt-type"] == "0"
    assert "x-cdcs-expiration" not in h  # no lifecycle rule
    assert "content-range" not in h
    assert RFC1123.fullmatch(h["last-modified"])
    # The listing's LastModified is the same instant, with milliseconds.
    listed = ET.fromstring(client.get(f"/{coffer}").content).findtext("Contents/LastModified")
    assert listed[:19].replace("T", " ") == (
        parsedate_to_datetime(h["last-modified"]).strftime("%Y-%m-%d %H:%M:%S"))


def test_head_object_has_get_headers_and_no_body(client, ten):
    g, h = client.get(ten), client.head(ten)
    assert h.status_code == 200
    assert h.content == b""
    assert_common(h, region="ap-tianjin")
    names = ("content-type", "content-length", "etag", "last-modified", "x-cdcs-encrypt-type",
             "x-cdcs-checksum-sha256", "x-cdcs-coffer-region")
    assert {n: h.headers[n] for n in names} == {n: g.headers[n] for n in names}


@pytest.mark.parametrize(("header", "first", "last"), [
    ("bytes=0-0", 0, 0),
    ("bytes=5-", 5, 9),
    ("bytes=-3", 7, 9),
    ("bytes=-1000", 0, 9),
    ("bytes=3-100", 3, 9),
    ("bytes=9-9", 9, 9),
    ("bytes=0-9", 0, 9),
    ("bytes=2-4", 2, 4),
])
def test_range(client, ten, header, first, last):
    r = client.get(ten, headers={"Range": header})
    assert r.status_code == 206
    assert r.content == TEN[first:last + 1]
    assert r.headers["content-range"] == f"bytes {first}-{last}/10"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.headers["etag"] == f'"{hashlib.md5(TEN).hexdigest()}"'
    # The checksum is of the whole object, whatever the range.
    assert r.headers["x-cdcs-checksum-sha256"] == hashlib.sha256(TEN).hexdigest()
    assert_common(r, region="ap-tianjin")


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-20", "bytes=100-"])
def test_unsatisfiable_range(client, coffer, ten, header):
    r = client.get(ten, headers={"Range": header})
    assert_error(r, 416, "InvalidRange", f"{coffer}/ten.txt", region="ap-tianjin")
    assert r.headers["content-range"] == "bytes */10"


@pytest.mark.parametrize("header", ["bytes=abc", "items=0-1", "bytes=5-2", "bytes=0-1,3-4",
                                    "bytes=", "bytes=-", "0-1", "bytes=1-2-3"])
def test_malformed_range_is_ignored(client, ten, header):
    r = client.get(ten, headers={"Range": header})
    assert r.status_code == 200
    assert r.content == TEN
    assert r.headers["content-length"] == "10"
    assert "content-range" not in r.headers


def test_missing_object(client, coffer, account):
    assert_error(client.get(f"/{coffer}/nope"), 404, "ObjectNotExists", f"{coffer}/nope",
                 region="ap-tianjin")
    r = client.head(f"/{coffer}/nope")
    assert_error(r, 404, "ObjectNotExists", f"{coffer}/nope")
    assert r.content == b""
    name = f"nothere-{account.app_id}"
    assert_error(client.get(f"/{name}/k"), 404, "CofferNotFound", f"{name}/k")
    r = client.head(f"/{name}/k")
    assert_error(r, 404, "CofferNotFound", f"{name}/k")


def test_error_document_in_json_on_request(client, coffer):
    r = client.get(f"/{coffer}/nope", headers={"Accept": "application/json"})
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert list(doc) == ["Code", "Message", "Resource", "RequestId", "TraceId"]
    assert doc["Code"] == r.headers["x-cdcs-error-code"] == "ObjectNotExists"
    assert doc["Resource"] == f"{coffer}/nope"
    assert doc["RequestId"] == r.headers["x-cdcs-request-id"]
    assert doc["TraceId"] == r.headers["x-cdcs-trace-id"]


# -- Region addressing ----------------------------------------------------------------------------

def test_region_addressed_by_host(client, coffer_name):
    client.make_coffer(coffer_name, "ap-tianjin", "ap-shanghai")
    data = b"two regions"
    r = put(client, coffer_name, "r.txt", data)
    assert r.status_code == 200
    assert r.headers["x-cdcs-coffer-region"] == "ap-tianjin"
    path = f"/{coffer_name}/r.txt"

    # The secondary answers DataSynchronization until the background replication copied the
    # object (test_replication.py holds that state still on a server without workers).
    shanghai = {"Host": "cdcs.ap-shanghai.example.com"}
    deadline = time.monotonic() + 30
    while True:
        r = client.get(path, headers=shanghai, sign_headers=("host",))
        assert r.request.headers["host"] == "cdcs.ap-shanghai.example.com"
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        assert_error(r, 409, "DataSynchronization", f"{coffer_name}/r.txt", region="ap-shanghai")
        time.sleep(0.1)
    assert (r.status_code, r.content) == (200, data)
    assert_common(r, region="ap-shanghai")
    r = client.head(path, headers=shanghai, sign_headers=("host",))
    assert (r.status_code, r.headers["x-cdcs-coffer-region"]) == (200, "ap-shanghai")

    r = client.get(path, headers={"Host": "cdcs.ap-tianjin.example.com"}, sign_headers=("host",))
    assert r.status_code == 200
    assert r.content == data
    assert_common(r, region="ap-tianjin")
    # A host that names no region: the primary serves.
    r = client.get(path)
    assert (r.status_code, r.headers["x-cdcs-coffer-region"]) == (200, "ap-tianjin")
    # Listing the coffer through the secondary's host names that region.
    r = client.get(f"/{coffer_name}", headers=shanghai, sign_headers=("host",))
    assert r.status_code == 200
    assert r.headers["x-cdcs-coffer-region"] == "ap-shanghai"


def test_write_addressed_to_a_secondary_lands_in_the_primary(client, coffer_name):
    """Writes always land in the primary, whatever the Host: the answer names the primary."""
    client.make_coffer(coffer_name, "ap-tianjin", "ap-shanghai")
    r = client.put(f"/{coffer_name}/w.txt", content=b"written",
                   headers={"Host": "cdcs.ap-shanghai.example.com"}, sign_headers=("host",))
    assert r.status_code == 200, r.text
    assert r.headers["x-cdcs-coffer-region"] == "ap-tianjin"
    r = client.get(f"/{coffer_name}/w.txt",
                   headers={"Host": "cdcs.ap-tianjin.example.com"}, sign_headers=("host",))
    assert (r.status_code, r.content) == (200, b"written")


def test_content_type_longer_than_its_column_is_refused(client, coffer):
    msg = assert_error(put(client, coffer, "ct", b"x", **{"Content-Type": "a/" + "b" * 255}),
                       400, "InvalidArgument", f"{coffer}/ct", region=None)
    assert "256" in msg
    assert put(client, coffer, "ct", b"x", **{"Content-Type": "a/" + "b" * 254}).status_code == 200


def test_host_with_wrong_signed_value_fails(client, coffer):
    """The signature covers the host: a Host header other than the signed one is refused."""
    host = client.base_url.split("://", 1)[1]
    fields = signing.sign(client.secret_id, client.secret_key, "GET", f"/{coffer}", None,
                          {"host": host})
    r = client.http.get(f"/{coffer}", headers={
        "Authorization": signing.authorization_header(fields),
        "Host": "cdcs.ap-tianjin.example.com"})
    assert_error(r, 401, "AuthFailed", coffer)
