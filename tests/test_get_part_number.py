"""GetObject/HeadObject `?partNumber=N` (the server extension that the SDK's verified download
relies on): 206 with the part's Content-Range, `x-cdcs-mp-parts-count` and
`x-cdcs-part-checksum-sha256`; a simple object is one part; the refusals (416, 400)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import pytest

from tests.test_api_coffers import assert_common, assert_error, fresh_name

MiB = 1024 * 1024
REGION = "ap-tianjin"


def multipart_etag(parts: list[bytes]) -> str:
    joined = b"".join(hashlib.md5(p).digest() for p in parts)
    return f'"{hashlib.md5(joined).hexdigest()}-{len(parts)}"'


def composite_sha256(parts: list[bytes]) -> str:
    joined = b"".join(hashlib.sha256(p).digest() for p in parts)
    return f"{hashlib.sha256(joined).hexdigest()}-{len(parts)}"


def store_multipart(client, coffer: str, key: str, parts: list[bytes]) -> None:
    """InitiateMultipartUpload, UploadPart for each part, CompleteMultipartUpload: raw HTTP."""
    path = f"/{coffer}/{key}"
    r = client.request("POST", path, params={"uploads": ""})
    assert r.status_code == 200, r.text
    upload_id = r.json()["UploadId"]
    items = []
    for number, data in enumerate(parts, 1):
        r = client.put(path, params={"partNumber": str(number), "uploadId": upload_id},
                       content=data)
        assert r.status_code == 200, r.text
        assert r.headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
        items.append(f"<Part><PartNumber>{number}</PartNumber>"
                     f"<ETag>{r.headers['etag']}</ETag></Part>")
    body = f"<CompleteMultipartUpload>{''.join(items)}</CompleteMultipartUpload>"
    r = client.request("POST", path, params={"uploadId": upload_id}, content=body.encode(),
                       headers={"Content-Type": "application/xml"})
    assert r.status_code == 200, r.text


@dataclass(frozen=True)
class Stored:
    coffer: str
    mp_key: str
    parts: list[bytes]
    simple_key: str
    simple: bytes

    @property
    def whole(self) -> bytes:
        return b"".join(self.parts)


@pytest.fixture(scope="module")
def stored(client, account) -> Stored:
    """A coffer with a 3-part multipart object (1 MiB, 1 MiB, 10 bytes) and a simple one."""
    coffer = fresh_name(account.app_id, "pn")
    client.make_coffer(coffer)
    parts = [os.urandom(MiB), os.urandom(MiB), b"0123456789"]
    key = "multi part/ü.bin"
    store_multipart(client, coffer, key, parts)
    simple = b"a simple object of 31 bytes...!"
    assert len(simple) == 31
    r = client.put(f"/{coffer}/simple.txt", content=simple, headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    return Stored(coffer, key, parts, "simple.txt", simple)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# (part number, first byte, last byte) of the multipart object
SPANS = [(1, 0, MiB - 1), (2, MiB, 2 * MiB - 1), (3, 2 * MiB, 2 * MiB + 9)]


@pytest.mark.parametrize(("number", "first", "last"), SPANS)
def test_get_each_part_of_a_multipart_object(client, stored, number, first, last):
    r = client.get(f"/{stored.coffer}/{stored.mp_key}", params={"partNumber": str(number)})
    assert r.status_code == 206
    assert_common(r, region=REGION)
    part = stored.parts[number - 1]
    size = 2 * MiB + 10
    assert r.headers["content-range"] == f"bytes {first}-{last}/{size}"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.headers["x-cdcs-mp-parts-count"] == "3"
    assert r.headers["x-cdcs-part-checksum-sha256"] == sha(part)
    # the whole object's headers are still those of the whole object
    assert r.headers["x-cdcs-checksum-sha256"] == composite_sha256(stored.parts)
    assert r.headers["etag"] == multipart_etag(stored.parts)
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-cdcs-encrypt-type"] == "0"
    assert r.content == part
    assert r.content == stored.whole[first:last + 1]


@pytest.mark.parametrize(("number", "first", "last"), SPANS)
def test_head_each_part_has_the_same_headers_and_no_body(client, stored, number, first, last):
    path = f"/{stored.coffer}/{stored.mp_key}"
    g = client.get(path, params={"partNumber": str(number)})
    h = client.head(path, params={"partNumber": str(number)})
    assert h.status_code == 206
    assert_common(h, region=REGION)
    assert h.content == b""
    assert h.headers["content-range"] == f"bytes {first}-{last}/{2 * MiB + 10}"
    assert h.headers["content-length"] == str(last - first + 1)
    assert h.headers["x-cdcs-mp-parts-count"] == "3"
    assert h.headers["x-cdcs-part-checksum-sha256"] == sha(stored.parts[number - 1])
    for name in ("content-range", "content-length", "content-type", "etag", "last-modified",
                 "x-cdcs-checksum-sha256", "x-cdcs-encrypt-type", "x-cdcs-mp-parts-count",
                 "x-cdcs-part-checksum-sha256"):
        assert h.headers[name] == g.headers[name], name


def test_a_simple_object_is_one_part(client, stored):
    path = f"/{stored.coffer}/{stored.simple_key}"
    r = client.get(path, params={"partNumber": "1"})
    assert r.status_code == 206
    assert_common(r, region=REGION)
    assert r.headers["content-range"] == "bytes 0-30/31"
    assert r.headers["content-length"] == "31"
    assert r.headers["x-cdcs-mp-parts-count"] == "1"
    assert r.headers["x-cdcs-part-checksum-sha256"] == sha(stored.simple)
    assert r.headers["x-cdcs-checksum-sha256"] == sha(stored.simple)
    assert r.headers["etag"] == f'"{hashlib.md5(stored.simple).hexdigest()}"'
    assert r.headers["content-type"] == "text/plain"
    assert r.content == stored.simple

    h = client.head(path, params={"partNumber": "1"})
    assert h.status_code == 206
    assert h.content == b""
    assert h.headers["content-range"] == "bytes 0-30/31"
    assert h.headers["content-length"] == "31"
    assert h.headers["x-cdcs-mp-parts-count"] == "1"
    assert h.headers["x-cdcs-part-checksum-sha256"] == sha(stored.simple)

    r = client.get(path, params={"partNumber": "2"})
    assert_error(r, 416, "InvalidRange", f"{stored.coffer}/{stored.simple_key}", region=REGION)
    assert r.headers["x-cdcs-mp-parts-count"] == "1"


def test_lower_case_parameter_name(client, stored):
    r = client.get(f"/{stored.coffer}/{stored.mp_key}", params={"partnumber": "3"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {2 * MiB}-{2 * MiB + 9}/{2 * MiB + 10}"
    assert r.content == b"0123456789"


def test_part_number_beyond_the_count(client, stored):
    path = f"/{stored.coffer}/{stored.mp_key}"
    resource = f"{stored.coffer}/{stored.mp_key}"
    for number in ("4", "10000"):
        r = client.get(path, params={"partNumber": number})
        assert_error(r, 416, "InvalidRange", resource, region=REGION)
        assert r.headers["x-cdcs-mp-parts-count"] == "3"
        assert "x-cdcs-part-checksum-sha256" not in r.headers
        assert "content-range" not in r.headers
    h = client.head(path, params={"partNumber": "4"})
    assert_error(h, 416, "InvalidRange", resource, region=REGION)
    assert h.headers["x-cdcs-mp-parts-count"] == "3"


@pytest.mark.parametrize("value", ["0", "10001", "x", "", "-1", "1.0", " 1", "²", "٣",
                                   "1" * 5000])
def test_part_number_not_an_integer_from_1_to_10000(client, stored, value):
    path = f"/{stored.coffer}/{stored.mp_key}"
    resource = f"{stored.coffer}/{stored.mp_key}"
    r = client.get(path, params={"partNumber": value})
    message = assert_error(r, 400, "InvalidArgument", resource)
    assert message == "partNumber must be 1 to 10000."
    assert "x-cdcs-mp-parts-count" not in r.headers
    # request syntax is checked before the coffer is looked up (errors.md): no region yet
    assert "x-cdcs-coffer-region" not in r.headers
    h = client.head(path, params={"partNumber": value})
    assert_error(h, 400, "InvalidArgument", resource)


@pytest.mark.parametrize("value", ["1", "3", "4"])
def test_part_number_with_a_range_header(client, stored, value):
    path = f"/{stored.coffer}/{stored.mp_key}"
    resource = f"{stored.coffer}/{stored.mp_key}"
    r = client.get(path, params={"partNumber": value}, headers={"Range": "bytes=0-9"})
    message = assert_error(r, 400, "InvalidArgument", resource)
    assert message == "partNumber and Range cannot be used together."
    h = client.head(path, params={"partNumber": value}, headers={"Range": "bytes=0-9"})
    assert_error(h, 400, "InvalidArgument", resource)


def test_syntax_is_checked_before_existence(client, stored, account):
    """errors.md: request syntax (400) before coffer existence (404) and state (404)."""
    missing_key = f"/{stored.coffer}/nothing-here"
    r = client.get(missing_key, params={"partNumber": "0"})
    assert_error(r, 400, "InvalidArgument", f"{stored.coffer}/nothing-here")
    r = client.get(missing_key, params={"partNumber": "1"}, headers={"Range": "bytes=0-0"})
    assert_error(r, 400, "InvalidArgument", f"{stored.coffer}/nothing-here")
    missing_coffer = fresh_name(account.app_id, "nope")
    r = client.get(f"/{missing_coffer}/k", params={"partNumber": "x"})
    assert_error(r, 400, "InvalidArgument", f"{missing_coffer}/k")
    r = client.get(f"/{missing_coffer}/k", params={"partNumber": "1"})
    assert_error(r, 404, "CofferNotFound", f"{missing_coffer}/k")


def test_ordinary_get_and_head_have_no_part_headers(client, stored):
    path = f"/{stored.coffer}/{stored.mp_key}"
    r = client.get(path)
    assert r.status_code == 200
    assert_common(r, region=REGION)
    assert "x-cdcs-mp-parts-count" not in r.headers
    assert "x-cdcs-part-checksum-sha256" not in r.headers
    assert "content-range" not in r.headers
    assert r.headers["content-length"] == str(2 * MiB + 10)
    assert r.headers["x-cdcs-checksum-sha256"] == composite_sha256(stored.parts)
    assert r.content == stored.whole

    h = client.head(path)
    assert h.status_code == 200
    assert "x-cdcs-mp-parts-count" not in h.headers
    assert "x-cdcs-part-checksum-sha256" not in h.headers
    assert h.headers["content-length"] == str(2 * MiB + 10)

    r = client.get(path, headers={"Range": "bytes=1048570-1048585"})
    assert r.status_code == 206
    assert "x-cdcs-mp-parts-count" not in r.headers
    assert r.headers["content-range"] == f"bytes 1048570-1048585/{2 * MiB + 10}"
    assert r.content == stored.whole[1048570:1048586]


def test_missing_object_with_part_number(client, stored):
    r = client.get(f"/{stored.coffer}/nothing-here", params={"partNumber": "1"})
    assert_error(r, 404, "ObjectNotExists", f"{stored.coffer}/nothing-here", region=REGION)
    assert "x-cdcs-mp-parts-count" not in r.headers
