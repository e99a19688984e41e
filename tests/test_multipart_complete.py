"""CompleteMultipartUpload (api.md 16) and its errors (errors.md), on real server processes.

- the answer (CompleteMultipartUploadResult) and the object it makes: bytes, ETag
  (`"<md5 of the part MD5s>-<N>"`), Content-Type of the initiate, the composite
  `x-cdcs-checksum-sha256` (`<sha256 of the part SHA-256s>-<N>`, docs/decisions.md), listing;
- the part list checks in errors.md's order (InvalidPartOrder, InvalidPart for the numbering,
  MultipartNotExists, InvalidPart for an ETag, EntityTooSmall, ObjectEmpty), malformed bodies,
  unknown upload IDs; a refused complete changes nothing;
- after completion: the upload ID answers MultipartAlreadyCompleted (NoSuchUpload to ListParts),
  the key is taken, unlisted parts (and their files) are gone;
- Range reads across part boundaries (a hypothesis property), damage in one part's blob never
  served as a good answer, races of complete against complete and against abort, a part
  streaming during the complete, SIGKILL right after the complete, and 10,000 parts.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datacoffer.client import Client, errors
from tests.serverproc import NO_RETRY, ServerProcess, SignedClient
from tests.test_api_coffers import XML_DECLARATION, assert_common, assert_error
from tests.test_durability import (
    MiB,
    Own,
    _auth,
    _flip_byte,
    _signed_url,
    blob_files,
    fetch,
    listed,
    tmp_files,
    wait_until,
)
from tests.test_multipart_api import (
    EMPTY_MD5,
    REGION,
    abort,
    list_parts,
    md5_hex,
    put_part,
)
from tests.test_multipart_durability import finish_body, raw_part, wait_part_streaming

#: the min_part_size of the module's own server (DATACOFFER_MIN_PART_SIZE)
SMALL_MIN = 1000
SMALL_APP_ID = "1250000066"
SMALL_UIN = "100000000066"
XML = {"Content-Type": "application/xml"}


# -- helpers --------------------------------------------------------------------------------------

def complete_xml(parts: Iterable[tuple[object, object]], *, declaration: bool = False) -> bytes:
    """The CompleteMultipartUpload document listing (PartNumber, ETag) in the order given."""
    items = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"
                    for n, e in parts)
    head = '<?xml version="1.0" encoding="UTF-8"?>\n' if declaration else ""
    return f"{head}<CompleteMultipartUpload>{items}</CompleteMultipartUpload>".encode()


def post_complete(client: SignedClient, coffer: str, key: str, upload_id: str,
                  body: bytes | Iterator[bytes], *,
                  params: dict[str, str] | None = None) -> httpx.Response:
    return client.request("POST", f"/{coffer}/{key}",
                          params=params if params is not None else {"uploadId": upload_id},
                          headers=XML, content=body)


def complete(client: SignedClient, coffer: str, key: str, upload_id: str,
             parts: Iterable[tuple[object, object]], **kw: bool) -> httpx.Response:
    return post_complete(client, coffer, key, upload_id, complete_xml(parts, **kw))


def multipart_etag(bodies: list[bytes]) -> str:
    joined = b"".join(hashlib.md5(b).digest() for b in bodies)
    return f'"{hashlib.md5(joined).hexdigest()}-{len(bodies)}"'


def composite_sha256(bodies: list[bytes]) -> str:
    joined = b"".join(hashlib.sha256(b).digest() for b in bodies)
    return f"{hashlib.sha256(joined).hexdigest()}-{len(bodies)}"


def result_etag(r: httpx.Response, coffer: str, key: str,
                locations: tuple[str, ...] = (REGION,)) -> str:
    """Check a CompleteMultipartUploadResult answer; return its ETag."""
    assert r.status_code == 200, (r.status_code, r.headers, r.text[:2000])
    assert_common(r, region=locations[0])
    assert r.headers["content-type"].split(";")[0] == "application/xml"
    assert "x-cdcs-error-code" not in r.headers
    assert "x-cdcs-trace-id" not in r.headers
    assert r.content.startswith(XML_DECLARATION)
    root = ET.fromstring(r.content)
    assert root.tag == "CompleteMultipartUploadResult"
    assert [c.tag for c in root] == ["Locations", "Coffer", "Key", "ETag"]
    assert [(c.tag, c.text) for c in root[0]] == [("Location", loc) for loc in locations]
    assert root.findtext("Coffer") == coffer
    assert root.findtext("Key") == key
    return root.findtext("ETag") or ""


@dataclass
class Staged:
    """An initiated upload and the parts uploaded to it."""

    upload_id: str
    bodies: dict[int, bytes]
    etags: dict[int, str]

    def listing(self, *numbers: int) -> list[tuple[int, str]]:
        """(PartNumber, ETag) of these parts (all of them by default), ascending."""
        return [(n, self.etags[n]) for n in (numbers or sorted(self.bodies))]

    def data(self, *numbers: int) -> list[bytes]:
        return [self.bodies[n] for n in (numbers or sorted(self.bodies))]

    def replace(self, sdk: Client, coffer: str, key: str, number: int, body: bytes) -> None:
        """Upload part `number` again with `body`, and remember both."""
        self.bodies[number] = body
        self.etags[number] = upload_part(sdk, coffer, key, self.upload_id, number, body)


def initiate(sdk: Client, coffer: str, key: str, content_type: str | None = None) -> str:
    return sdk.initiate_multipart_upload(coffer, key, content_type=content_type).upload_id


def upload_part(sdk: Client, coffer: str, key: str, upload_id: str, number: int,
                data: bytes) -> str:
    """UploadPart; the ETag answered (the part's MD5), in quotes as a complete lists it."""
    part = sdk.upload_part(coffer, key, upload_id, number, data, length=len(data))
    assert part.etag == md5_hex(data), number
    return f'"{part.etag}"'


def stage(sdk: Client, coffer: str, key: str, bodies: dict[int, bytes],
          content_type: str | None = None) -> Staged:
    """Initiate an upload and upload `bodies` (in the dict's order)."""
    upload_id = initiate(sdk, coffer, key, content_type)
    etags = {n: upload_part(sdk, coffer, key, upload_id, n, b) for n, b in bodies.items()}
    return Staged(upload_id, dict(bodies), etags)


def listed_parts(sdk: Client, coffer: str, key: str,
                 staged: Staged) -> list[tuple[int, str, int]]:
    """ListParts: (PartNumber, ETag without quotes, Size) of every part, in the order listed."""
    return [(p.number, p.etag, p.size) for p in sdk.iter_parts(coffer, key, staged.upload_id)]


def expected_parts(staged: Staged) -> list[tuple[int, str, int]]:
    return [(n, md5_hex(b), len(b)) for n, b in sorted(staged.bodies.items())]


def uploads(sdk: Client, coffer: str) -> list[tuple[str, str]]:
    """ListMultipartUploads: (Key, UploadId) of every upload in progress."""
    return [(u.key, u.upload_id) for u in sdk.iter_uploads(coffer)]


def check_missing(sdk: Client, coffer: str, key: str) -> None:
    """GetObject answers ObjectNotExists."""
    with pytest.raises(errors.ObjectNotExists) as missing:
        sdk.get_object(coffer, key)
    assert missing.value.resource == f"{coffer}/{key}"


def check_unchanged(sdk: Client, coffer: str, key: str, staged: Staged) -> None:
    """A refused complete changed nothing: the upload is in progress with the same parts."""
    assert listed_parts(sdk, coffer, key, staged) == expected_parts(staged)
    assert (key, staged.upload_id) in uploads(sdk, coffer)
    check_missing(sdk, coffer, key)


def check_object(sdk: Client, coffer: str, key: str, bodies: list[bytes], etag: str,
                 content_type: str = "application/octet-stream") -> None:
    """GetObject, HeadObject and GetCoffer show the completed object made of `bodies`;
    `etag` is the one CompleteMultipartUploadResult gave (in quotes)."""
    data = b"".join(bodies)
    with sdk.get_object(coffer, key) as r:
        assert (r.status, r.span) == (200, (0, len(data) - 1))
        assert r.read() == data
    info = r.info
    assert f'"{info.etag}"' == etag == multipart_etag(bodies)
    assert info.size == len(data)
    assert info.content_type == content_type
    assert info.sha256 == composite_sha256(bodies)
    assert info.encrypt_type == 0
    assert sdk.head_object(coffer, key) == info
    assert listed(sdk, coffer)[key] == (len(data), info.etag)


def blob_bytes(data_dir: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in blob_files(data_dir)}


def file_holding(data_dir: Path, body: bytes) -> Path:
    """The one blob file whose bytes are `body`."""
    (path,) = [p for p in blob_files(data_dir) if p.read_bytes() == body]
    return path


def error_code(r: httpx.Response) -> str:
    return r.headers.get("x-cdcs-error-code", "")


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Own]:
    """A server of this module alone (its blob files can be counted exactly) whose parts need
    only be SMALL_MIN bytes."""
    srv = ServerProcess(tmp_path_factory.mktemp("complete") / "data",
                        env={"DATACOFFER_MIN_PART_SIZE": str(SMALL_MIN)})
    srv.start()
    sdk = srv.new_sdk(SMALL_APP_ID, SMALL_UIN, retry=NO_RETRY)
    client = SignedClient.of(sdk)
    coffer = f"cmp-{SMALL_APP_ID}"
    sdk.create_coffer(coffer, ["ap-tianjin"])
    yield Own(srv, client, coffer, sdk)
    client.close()
    sdk.close()
    srv.stop()


# -- the answer and the object --------------------------------------------------------------------

def test_complete_answer_and_the_object(client, sdk, coffer):
    key = "dir/中文 é+%.bin"
    bodies = {1: os.urandom(MiB), 2: os.urandom(MiB + 17), 3: b"tail"}
    upload_id = initiate(sdk, coffer, key)
    etags = {}
    for n in (3, 1, 2):  # parts arrive in any order
        etags[n] = upload_part(sdk, coffer, key, upload_id, n, bodies[n])
    r = complete(client, coffer, key, upload_id, [(n, etags[n]) for n in (1, 2, 3)],
                 declaration=True)
    ordered = [bodies[1], bodies[2], bodies[3]]
    etag = result_etag(r, coffer, key)
    assert etag == multipart_etag(ordered)
    check_object(sdk, coffer, key, ordered, etag)

    # Ranges across the part boundaries, short (read whole) and long (streamed).
    data = b"".join(ordered)
    size = len(data)
    for first, last in ((MiB - 3, MiB + 2), (MiB - 1, MiB), (2 * MiB + 10, size - 1),
                        (0, size - 1), (10, size - 2), (MiB - 100, 2 * MiB + 20),
                        (2 * MiB + 17, 2 * MiB + 17)):
        r = client.get(f"/{coffer}/{key}", headers={"Range": f"bytes={first}-{last}"})
        assert r.status_code == 206, (first, last, r.text[:500])
        assert_common(r, region=REGION)  # the headers of every answer (check_object uses the SDK)
        assert r.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert r.content == data[first:last + 1], (first, last)
        assert r.headers["etag"] == etag
        assert r.headers["x-cdcs-checksum-sha256"] == composite_sha256(ordered)
    r = client.get(f"/{coffer}/{key}", headers={"Range": f"bytes={size}-"})
    assert_error(r, 416, "InvalidRange", f"{coffer}/{key}", region=REGION)
    assert r.headers["content-range"] == f"bytes */{size}"


def test_result_lists_every_location(client, sdk, coffer_name):
    regions = ("ap-shanghai", "ap-tianjin", "ap-guangzhou")
    sdk.create_coffer(coffer_name, list(regions))
    staged = stage(sdk, coffer_name, "k", {1: b"only part"})
    r = complete(client, coffer_name, "k", staged.upload_id, staged.listing())
    assert result_etag(r, coffer_name, "k", regions) == multipart_etag([b"only part"])
    assert fetch(sdk, coffer_name, "k") == b"only part"


@pytest.mark.parametrize("content_type", ["text/plain; charset=utf-8", "image/png",
                                          "application/x-thing"])
def test_content_type_of_the_initiate(client, sdk, coffer, content_type):
    staged = stage(sdk, coffer, "typed", {1: b"typed bytes"}, content_type)
    r = complete(client, coffer, "typed", staged.upload_id, staged.listing())
    check_object(sdk, coffer, "typed", staged.data(), result_etag(r, coffer, "typed"),
                 content_type)


def test_reuploaded_parts_use_the_last_upload(client, sdk, coffer):
    key = "again"
    upload_id = initiate(sdk, coffer, key)
    first_one = os.urandom(MiB)
    old_etag = upload_part(sdk, coffer, key, upload_id, 1, first_one)
    upload_part(sdk, coffer, key, upload_id, 2, b"old two")
    upload_part(sdk, coffer, key, upload_id, 1, os.urandom(MiB + 3))
    last_one, last_two = os.urandom(MiB + 1), b"new two, longer"
    etags = {1: upload_part(sdk, coffer, key, upload_id, 1, last_one),
             2: upload_part(sdk, coffer, key, upload_id, 2, last_two)}
    # the ETag of a replaced upload no longer names the part
    r = complete(client, coffer, key, upload_id, [(1, old_etag), (2, etags[2])])
    assert_error(r, 400, "InvalidPart", f"{coffer}/{key}")
    r = complete(client, coffer, key, upload_id, sorted(etags.items()))
    check_object(sdk, coffer, key, [last_one, last_two], result_etag(r, coffer, key))


# -- the part list checks, in errors.md's order ---------------------------------------------------

def test_part_list_checks_in_order_and_a_refusal_changes_nothing(client, sdk, coffer):
    key = "checks"
    res = f"{coffer}/{key}"
    staged = stage(sdk, coffer, key, {1: os.urandom(MiB), 2: b"two", 3: b"three",
                                      4: b"four"})
    e = staged.etags
    wrong = f'"{md5_hex(b"something else")}"'
    cases = [
        # not strictly ascending (a repeat counts); this beats every later check
        ("InvalidPartOrder", [(2, e[2]), (1, e[1])]),
        ("InvalidPartOrder", [(1, e[1]), (1, e[1])]),
        ("InvalidPartOrder", [(1, e[1]), (2, e[2]), (2, e[2]), (3, e[3])]),
        ("InvalidPartOrder", [(1, e[1]), (3, e[3]), (2, e[2])]),
        ("InvalidPartOrder", [(1, wrong), (9, e[2]), (3, e[3]), (3, e[3])]),
        ("InvalidPartOrder", [(4, e[4]), (3, e[3]), (2, e[2]), (1, e[1])]),
        # numbering: a gap, or not starting at 1; beats a part never uploaded, a wrong ETag
        # and a part too small
        ("InvalidPart", [(1, e[1]), (3, e[3])]),
        ("InvalidPart", [(2, e[2]), (3, e[3])]),
        ("InvalidPart", [(3, e[3])]),
        ("InvalidPart", [(1, e[1]), (2, e[2]), (6, e[3])]),
        ("InvalidPart", [(1, wrong), (2, e[2]), (3, e[3]), (4, e[4]), (6, e[4])]),
        # a listed number never uploaded; beats a wrong ETag and parts too small
        ("MultipartNotExists", [(1, e[1]), (2, e[2]), (3, e[3]), (4, e[4]), (5, e[4])]),
        ("MultipartNotExists", [(1, wrong), (2, wrong), (3, e[3]), (4, e[4]), (5, wrong)]),
        # an ETag differs (another part's, an earlier one, empty); beats the part too small
        ("InvalidPart", [(1, wrong), (2, e[2]), (3, e[3])]),
        ("InvalidPart", [(1, e[1]), (2, e[3]), (3, e[3])]),
        ("InvalidPart", [(1, e[1]), (2, '""')]),
        ("InvalidPart", [(1, e[1]), (2, e[2]), (3, e[3]), (4, e[4][:-2] + '"')]),
        ("InvalidPart", [(1, e[1]), (2, e[2]), (3, e[3]), (4, e[4][1:-1] + "0")]),
        # a part other than the last smaller than 1 MiB
        ("EntityTooSmall", [(1, e[1]), (2, e[2]), (3, e[3])]),
        ("EntityTooSmall", [(1, e[1]), (2, e[2]), (3, e[3]), (4, e[4])]),
    ]
    status = {"InvalidPartOrder": 400, "InvalidPart": 400, "MultipartNotExists": 404,
              "EntityTooSmall": 400}
    for code, listing in cases:
        r = complete(client, coffer, key, staged.upload_id, listing)
        assert r.status_code == status[code] and error_code(r) == code, (
            listing, r.status_code, error_code(r), code)
        assert_error(r, status[code], code, res)
        check_unchanged(sdk, coffer, key, staged)
    # after all those refusals, a correct complete works (and leaves parts 3 and 4 out)
    r = complete(client, coffer, key, staged.upload_id, staged.listing(1, 2))
    check_object(sdk, coffer, key, staged.data(1, 2), result_etag(r, coffer, key))


def test_part_one_never_uploaded(client, sdk, coffer):
    staged = stage(sdk, coffer, "no-one", {2: os.urandom(MiB), 3: b"three"})
    r = complete(client, coffer, "no-one", staged.upload_id,
                 [(1, staged.etags[2]), (2, staged.etags[2]), (3, staged.etags[3])])
    assert_error(r, 404, "MultipartNotExists", f"{coffer}/no-one")
    check_unchanged(sdk, coffer, "no-one", staged)


def test_entity_too_small_at_the_default_limit(client, sdk, coffer):
    """1 MiB = 1,048,576 bytes unless configured: one byte less is too small for a part that
    is not the last; the last may be as small as one byte."""
    key = "limit"
    staged = stage(sdk, coffer, key, {1: os.urandom(MiB - 1), 2: b"x"})
    r = complete(client, coffer, key, staged.upload_id, staged.listing())
    assert_error(r, 400, "EntityTooSmall", f"{coffer}/{key}")
    check_unchanged(sdk, coffer, key, staged)
    staged.replace(sdk, coffer, key, 1, os.urandom(MiB))
    r = complete(client, coffer, key, staged.upload_id, staged.listing())
    check_object(sdk, coffer, key, staged.data(), result_etag(r, coffer, key))


def test_a_single_small_part_is_a_whole_object(client, sdk, coffer):
    staged = stage(sdk, coffer, "one", {1: b"z"})
    r = complete(client, coffer, "one", staged.upload_id, staged.listing())
    check_object(sdk, coffer, "one", [b"z"], result_etag(r, coffer, "one"))


def test_object_empty(client, sdk, coffer):
    key = "empty"
    staged = stage(sdk, coffer, key, {1: b""})
    assert staged.etags[1] == f'"{EMPTY_MD5}"'
    r = complete(client, coffer, key, staged.upload_id, staged.listing())
    assert_error(r, 400, "ObjectEmpty", f"{coffer}/{key}")
    check_unchanged(sdk, coffer, key, staged)
    # two empty parts: the first is too small, and that check comes before ObjectEmpty
    staged.replace(sdk, coffer, key, 2, b"")
    r = complete(client, coffer, key, staged.upload_id, staged.listing())
    assert_error(r, 400, "EntityTooSmall", f"{coffer}/{key}")
    check_unchanged(sdk, coffer, key, staged)
    # an empty part as the last one is fine when the object is not empty
    staged.replace(sdk, coffer, key, 1, os.urandom(MiB))
    r = complete(client, coffer, key, staged.upload_id, staged.listing())
    check_object(sdk, coffer, key, staged.data(), result_etag(r, coffer, key))


def test_min_part_size_is_configurable(small):
    c, s, coffer = small.client, small.sdk, small.coffer
    staged = stage(s, coffer, "conf", {1: os.urandom(SMALL_MIN - 1), 2: b"last"})
    r = complete(c, coffer, "conf", staged.upload_id, staged.listing())
    message = assert_error(r, 400, "EntityTooSmall", f"{coffer}/conf")
    # the sentence for a person names the limit in force, not the default
    assert str(SMALL_MIN) in message.replace(",", ""), message
    staged.replace(s, coffer, "conf", 1, os.urandom(SMALL_MIN))
    r = complete(c, coffer, "conf", staged.upload_id, staged.listing())
    check_object(s, coffer, "conf", staged.data(), result_etag(r, coffer, "conf"))


def test_etags_with_or_without_quotes_in_any_case(small):
    c, s, coffer = small.client, small.sdk, small.coffer
    bodies = {n: os.urandom(SMALL_MIN + n) for n in (1, 2, 3)} | {4: b"end"}
    staged = stage(s, coffer, "quotes", bodies)
    e = {n: staged.etags[n].strip('"') for n in bodies}
    listing = [(1, f'"{e[1]}"'), (2, e[2]), (3, f'"{e[3].upper()}"'), (4, e[4].upper())]
    r = complete(c, coffer, "quotes", staged.upload_id, listing)
    check_object(s, coffer, "quotes", staged.data(), result_etag(r, coffer, "quotes"))


# -- malformed requests ---------------------------------------------------------------------------

PART = "<Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part>"
MALFORMED = {
    "empty": "",
    "not xml": "not xml at all",
    "truncated": "<CompleteMultipartUpload>" + PART,
    "unclosed part": "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber>"
                     "<ETag>{etag}</ETag></CompleteMultipartUpload>",
    "wrong root": "<CompleteMultipart>" + PART + "</CompleteMultipart>",
    "part as root": PART,
    "two roots": "<CompleteMultipartUpload>" + PART + "</CompleteMultipartUpload>"
                 "<CompleteMultipartUpload/>",
    "no part number": "<CompleteMultipartUpload><Part><ETag>{etag}</ETag></Part>"
                      "</CompleteMultipartUpload>",
    "no etag": "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part>"
               "</CompleteMultipartUpload>",
    "part number text": "<CompleteMultipartUpload><Part><PartNumber>one</PartNumber>"
                        "<ETag>{etag}</ETag></Part></CompleteMultipartUpload>",
    "part number fraction": "<CompleteMultipartUpload><Part><PartNumber>1.0</PartNumber>"
                            "<ETag>{etag}</ETag></Part></CompleteMultipartUpload>",
    "part number empty": "<CompleteMultipartUpload><Part><PartNumber></PartNumber>"
                         "<ETag>{etag}</ETag></Part></CompleteMultipartUpload>",
    "part number hex": "<CompleteMultipartUpload><Part><PartNumber>0x1</PartNumber>"
                       "<ETag>{etag}</ETag></Part></CompleteMultipartUpload>",
    "part number underscore": "<CompleteMultipartUpload><Part><PartNumber>0_1</PartNumber>"
                              "<ETag>{etag}</ETag></Part></CompleteMultipartUpload>",
    "part number non-ascii digit": "<CompleteMultipartUpload><Part><PartNumber>\u0661"
                                   "</PartNumber><ETag>{etag}</ETag></Part>"
                                   "</CompleteMultipartUpload>",
    "doctype": '<?xml version="1.0"?><!DOCTYPE CompleteMultipartUpload>'
               "<CompleteMultipartUpload>" + PART + "</CompleteMultipartUpload>",
    "entity": '<?xml version="1.0"?><!DOCTYPE c [<!ENTITY one "1">]><CompleteMultipartUpload>'
              "<Part><PartNumber>&one;</PartNumber><ETag>{etag}</ETag></Part>"
              "</CompleteMultipartUpload>",
    "billion laughs": '<?xml version="1.0"?><!DOCTYPE c [<!ENTITY a "aaaaaaaaaa">'
                      + "".join(f'<!ENTITY {chr(98 + i)} "' + f"&{chr(97 + i)};" * 10 + '">'
                                for i in range(8))
                      + "]><CompleteMultipartUpload><Part><PartNumber>1</PartNumber>"
                        "<ETag>&i;</ETag></Part></CompleteMultipartUpload>",
    "external entity": '<?xml version="1.0"?><!DOCTYPE c [<!ENTITY x SYSTEM '
                       '"file:///etc/passwd">]><CompleteMultipartUpload><Part><PartNumber>1'
                       "</PartNumber><ETag>&x;</ETag></Part></CompleteMultipartUpload>",
    "not utf-8": "<CompleteMultipartUpload>\udcff" + PART + "</CompleteMultipartUpload>",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_body_is_invalid_argument(client, sdk, coffer, case):
    key = "malformed"
    staged = stage(sdk, coffer, key, {1: b"data"})
    body = MALFORMED[case].format(etag=staged.etags[1]).encode("utf-8", "surrogateescape")
    started = time.monotonic()
    r = post_complete(client, coffer, key, staged.upload_id, body)
    assert time.monotonic() - started < 5
    assert_error(r, 400, "InvalidArgument", f"{coffer}/{key}")
    check_unchanged(sdk, coffer, key, staged)
    r = complete(client, coffer, key, staged.upload_id, staged.listing())
    check_object(sdk, coffer, key, [b"data"], result_etag(r, coffer, key))


def test_bodies_as_clients_write_them(client, sdk, coffer):
    """The COS SDK's own document (declaration in lower case, `&quot;` escapes), and an
    indented one with whitespace around the values."""
    from qcloud_cos.cos_comm import dict_to_xml

    staged = stage(sdk, coffer, "sdk", {1: os.urandom(MiB), 2: b"two"})
    body = dict_to_xml({"Part": [{"PartNumber": n, "ETag": e} for n, e in staged.listing()]})
    assert b"&quot;" in body
    r = post_complete(client, coffer, "sdk", staged.upload_id, body)
    check_object(sdk, coffer, "sdk", staged.data(), result_etag(r, coffer, "sdk"))

    staged = stage(sdk, coffer, "pretty", {1: os.urandom(MiB), 2: b"two"})
    body = "\n".join(["<?xml version='1.0' encoding='UTF-8'?>", "<CompleteMultipartUpload>",
                      *(f"  <Part>\n    <PartNumber> {n} </PartNumber>\n    <ETag>{e}</ETag>"
                        "\n  </Part>" for n, e in staged.listing()),
                      "</CompleteMultipartUpload>\n"]).encode()
    r = post_complete(client, coffer, "pretty", staged.upload_id, body)
    check_object(sdk, coffer, "pretty", staged.data(), result_etag(r, coffer, "pretty"))


@pytest.mark.parametrize("number", ["1" * 5000, "9" * 30, "10001"])
def test_part_numbers_of_many_digits_are_a_client_error(client, sdk, coffer, number):
    """All digits, so an integer, but no part number (1-10000): a 400 about the list, never a
    server failure (Python's int() refuses more than 4300 digits with a ValueError)."""
    key = "digits"
    staged = stage(sdk, coffer, key, {1: b"data"})
    body = complete_xml([(number, staged.etags[1])])
    r = post_complete(client, coffer, key, staged.upload_id, body)
    assert r.status_code == 400, (r.status_code, r.text[:500])
    assert error_code(r) in ("InvalidArgument", "InvalidPart"), r.text[:500]
    assert_error(r, 400, error_code(r), f"{coffer}/{key}")
    check_unchanged(sdk, coffer, key, staged)


def test_empty_part_list_is_refused(client, sdk, coffer):
    """No Part at all: not a valid list (the code is not fixed by errors.md: a 400 of the
    request's list, never a 200 and never a server failure)."""
    staged = stage(sdk, coffer, "none", {1: b"data"})
    for body in (b"<CompleteMultipartUpload/>",
                 b"<CompleteMultipartUpload></CompleteMultipartUpload>"):
        r = post_complete(client, coffer, "none", staged.upload_id, body)
        assert r.status_code == 400, r.text
        assert error_code(r) in ("InvalidArgument", "InvalidPart", "ObjectEmpty"), r.text
        assert_error(r, 400, error_code(r), f"{coffer}/none")
        check_unchanged(sdk, coffer, "none", staged)


def _padded(listing: list[tuple[int, str]], size: int) -> bytes:
    """A valid document of exactly `size` bytes (whitespace inside the root element)."""
    body = complete_xml(listing)
    close = b"</CompleteMultipartUpload>"
    assert body.endswith(close)
    return body[:-len(close)] + b" " * (size - len(body)) + close


def test_body_size_limit(client, sdk, coffer):
    key = "big-body"
    limit = 4 * MiB
    staged = stage(sdk, coffer, key, {1: b"data"})
    r = post_complete(client, coffer, key, staged.upload_id,
                      _padded(staged.listing(), limit + 1))
    assert_error(r, 400, "InvalidArgument", f"{coffer}/{key}")
    check_unchanged(sdk, coffer, key, staged)

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds all the same
        body = _padded(staged.listing(), limit + 1)
        for offset in range(0, len(body), 64 * 1024):
            yield body[offset:offset + 64 * 1024]

    r = post_complete(client, coffer, key, staged.upload_id, chunked())
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert_error(r, 400, "InvalidArgument", f"{coffer}/{key}")
    check_unchanged(sdk, coffer, key, staged)
    # exactly 4 MiB is within the limit
    r = post_complete(client, coffer, key, staged.upload_id, _padded(staged.listing(), limit))
    check_object(sdk, coffer, key, [b"data"], result_etag(r, coffer, key))


def test_upload_id_missing_or_unknown(client, sdk, account, coffer):
    key = "ids"
    res = f"{coffer}/{key}"
    staged = stage(sdk, coffer, key, {1: b"data"})
    body = complete_xml(staged.listing())
    r = post_complete(client, coffer, key, "", body, params={"uploadId": ""})
    assert_error(r, 400, "InvalidArgument", res)

    other_key = initiate(sdk, coffer, "other-key")
    aborted = initiate(sdk, coffer, key + "-gone")
    sdk.abort_multipart_upload(coffer, key + "-gone", aborted)
    second = f"second{secrets.token_hex(4)}-{account.app_id}"
    sdk.create_coffer(second, ["ap-tianjin"])
    other_coffer = initiate(sdk, second, key)
    for wrong in (secrets.token_hex(16), other_key, aborted, other_coffer,
                  staged.upload_id.upper(), staged.upload_id + "0", "x"):
        r = post_complete(client, coffer, key, wrong, body)
        assert_error(r, 404, "NoSuchUpload", res)
    r = post_complete(client, coffer, key + "-gone", aborted, body)
    assert_error(r, 404, "NoSuchUpload", f"{res}-gone")

    # request syntax before the coffer's existence and before the upload's state
    missing = f"missing{secrets.token_hex(4)}-{account.app_id}"
    assert_error(post_complete(client, missing, key, staged.upload_id, body), 404,
                 "CofferNotFound", f"{missing}/{key}")
    assert_error(post_complete(client, missing, key, staged.upload_id, b"<bad"), 400,
                 "InvalidArgument", f"{missing}/{key}")
    assert_error(post_complete(client, coffer, key, secrets.token_hex(16), b"<bad"), 400,
                 "InvalidArgument", res)
    assert_error(post_complete(client, coffer, "a\x7f", staged.upload_id, body), 400,
                 "InvalidObjectKey", f"{coffer}/a%7F")

    check_unchanged(sdk, coffer, key, staged)
    # the parameter name in lower case is the same parameter
    r = post_complete(client, coffer, key, staged.upload_id, body,
                      params={"uploadid": staged.upload_id})
    check_object(sdk, coffer, key, [b"data"], result_etag(r, coffer, key))


def test_other_identities_are_refused(client, sdk, coffer, other):
    staged = stage(sdk, coffer, "mine", {1: b"mine"})
    _, theirs = other
    r = complete(theirs, coffer, "mine", staged.upload_id, staged.listing())
    assert_error(r, 401, "PolicyCheckFailed", f"{coffer}/mine")
    check_unchanged(sdk, coffer, "mine", staged)
    r = complete(client, coffer, "mine", staged.upload_id, staged.listing())
    check_object(sdk, coffer, "mine", [b"mine"], result_etag(r, coffer, "mine"))


# -- after completion -----------------------------------------------------------------------------

def test_a_completed_upload(client, sdk, coffer):
    key = "done"
    res = f"{coffer}/{key}"
    staged = stage(sdk, coffer, key, {1: os.urandom(MiB), 2: b"second"})
    keep = initiate(sdk, coffer, "still-open")
    r = complete(client, coffer, key, staged.upload_id, staged.listing())
    etag = result_etag(r, coffer, key)
    check_object(sdk, coffer, key, staged.data(), etag)

    r = complete(client, coffer, key, staged.upload_id, staged.listing())
    assert_error(r, 409, "MultipartAlreadyCompleted", res)
    r = put_part(client, coffer, key, staged.upload_id, 3, b"late part")
    assert_error(r, 409, "MultipartAlreadyCompleted", res)
    r = put_part(client, coffer, key, staged.upload_id, 1, b"replacement")
    assert_error(r, 409, "MultipartAlreadyCompleted", res)
    assert_error(abort(client, coffer, key, staged.upload_id), 409, "MultipartAlreadyCompleted",
                 res)
    assert_error(list_parts(client, coffer, key, staged.upload_id), 404, "NoSuchUpload", res)
    assert_error(client.put(f"/{coffer}/{key}", content=b"over"), 409,
                 "ObjectAlreadyExistsOwnedByYou", res)
    r = client.request("POST", f"/{coffer}/{key}", params={"uploads": ""})
    assert_error(r, 409, "ObjectAlreadyExistsOwnedByYou", res)
    assert uploads(sdk, coffer) == [("still-open", keep)]
    assert_error(client.delete(f"/{coffer}"), 409, "CofferNotEmpty", coffer)
    sdk.abort_multipart_upload(coffer, "still-open", keep)
    assert uploads(sdk, coffer) == []
    assert_error(client.delete(f"/{coffer}"), 409, "CofferNotEmpty", coffer)
    # none of that touched the object
    check_object(sdk, coffer, key, staged.data(), etag)


def test_unlisted_parts_and_their_files_are_discarded(small):
    c, s, coffer, data_dir = small.client, small.sdk, small.coffer, small.srv.data_dir
    key = "discard"
    before = blob_bytes(data_dir)
    bodies = {n: os.urandom(SMALL_MIN + n) for n in (5, 1, 4, 2, 3)}
    staged = stage(s, coffer, key, bodies)
    # the old part 2's file goes at once
    staged.replace(s, coffer, key, 2, os.urandom(SMALL_MIN + 50))
    added = set(blob_bytes(data_dir)) - set(before)
    assert sorted(blob_bytes(data_dir)[p] for p in added) == sorted(staged.bodies.values())

    # a refused complete leaves every file as it was
    r = complete(c, coffer, key, staged.upload_id, staged.listing(1, 3))
    assert_error(r, 400, "InvalidPart", f"{coffer}/{key}")
    assert set(blob_bytes(data_dir)) == set(before) | added

    r = complete(c, coffer, key, staged.upload_id, staged.listing(1, 2, 3))
    check_object(s, coffer, key, staged.data(1, 2, 3), result_etag(r, coffer, key))
    # no copy of the data: the object's files are the listed parts' own; 4 and 5 are gone
    after = blob_bytes(data_dir)
    assert set(after) - set(before) <= added
    assert sorted(after[p] for p in set(after) - set(before)) == sorted(staged.data(1, 2, 3))
    assert {p: after[p] for p in before} == before
    assert tmp_files(data_dir) == []


# -- Range reads across part boundaries -----------------------------------------------------------

RANGED_SIZES = (SMALL_MIN, SMALL_MIN + 17, SMALL_MIN, 3)


@dataclass
class Ranged:
    client: SignedClient
    path: str
    data: bytes
    etag: str
    boundaries: list[int]


@pytest.fixture(scope="module")
def ranged(small) -> Ranged:
    c, s, coffer = small.client, small.sdk, small.coffer
    bodies = {n + 1: os.urandom(size) for n, size in enumerate(RANGED_SIZES)}
    staged = stage(s, coffer, "ranged", dict(reversed(bodies.items())))
    r = complete(c, coffer, "ranged", staged.upload_id, staged.listing())
    etag = result_etag(r, coffer, "ranged")
    data = b"".join(staged.data())
    ends, total = [], 0
    for size in RANGED_SIZES:
        total += size
        ends.append(total)
    points = sorted({p for end in [0, *ends] for p in (end - 2, end - 1, end, end + 1)
                     if 0 <= p < len(data)})
    return Ranged(c, f"/{coffer}/ranged", data, etag, points)


def _check_range(rg: Ranged, header: str, first: int, last: int) -> None:
    r = rg.client.get(rg.path, headers={"Range": header})
    size = len(rg.data)
    assert r.status_code == 206, (header, r.status_code, r.text[:300])
    assert r.headers["content-range"] == f"bytes {first}-{last}/{size}", header
    assert r.headers["content-length"] == str(last - first + 1), header
    assert r.content == rg.data[first:last + 1], header
    assert r.headers["etag"] == rg.etag


def test_ranges_at_every_part_boundary(ranged):
    size = len(ranged.data)
    r = ranged.client.get(ranged.path)
    assert r.status_code == 200
    assert r.content == ranged.data
    for first in ranged.boundaries:
        for last in ranged.boundaries:
            if first <= last:
                _check_range(ranged, f"bytes={first}-{last}", first, last)
        _check_range(ranged, f"bytes={first}-", first, size - 1)
        _check_range(ranged, f"bytes=-{size - first}", first, size - 1)
    r = ranged.client.get(ranged.path, headers={"Range": f"bytes={size}-{size + 5}"})
    assert r.status_code == 416


@st.composite
def ranges(draw: st.DrawFn, size: int, points: list[int]) -> tuple[str, int, int]:
    """(Range header, first, last) of a satisfiable range, boundaries drawn often."""
    offset = st.one_of(st.sampled_from(points), st.integers(0, size - 1))
    kind = draw(st.sampled_from(["closed", "open", "suffix"]))
    if kind == "suffix":
        n = draw(st.one_of(st.integers(1, size + 20), st.sampled_from([size - p for p in points])))
        return f"bytes=-{n}", max(0, size - n), size - 1
    first = draw(offset)
    if kind == "open":
        return f"bytes={first}-", first, size - 1
    last = draw(st.one_of(offset, st.integers(first, size + 20)).filter(lambda x: x >= first))
    return f"bytes={first}-{last}", first, min(last, size - 1)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_ranges_match_the_python_slice(ranged, data):
    header, first, last = data.draw(ranges(len(ranged.data), ranged.boundaries))
    _check_range(ranged, header, first, last)


_shapes = itertools.count()


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(SMALL_MIN, SMALL_MIN + 64), min_size=1, max_size=3),
       last=st.integers(0, 40), data=st.data())
def test_part_sizes_and_ranges(small, sizes, last, data):
    """Over drawn part sizes (every part but the last at least min_part_size, the last any
    size, even empty) and drawn ranges: the object is the parts' concatenation."""
    c, s, coffer = small.client, small.sdk, small.coffer
    key = f"shape-{next(_shapes)}"
    bodies = {n + 1: os.urandom(size) for n, size in enumerate([*sizes, last])}
    staged = stage(s, coffer, key, bodies)
    etag = result_etag(complete(c, coffer, key, staged.upload_id, staged.listing()),
                       coffer, key)
    whole = b"".join(staged.data())
    ends = list(itertools.accumulate(len(b) for b in staged.data()))
    points = sorted({p for e in [0, *ends] for p in (e - 1, e, e + 1) if 0 <= p < len(whole)})
    shape = Ranged(c, f"/{coffer}/{key}", whole, etag, points)
    assert fetch(s, coffer, key) == whole
    for _ in range(3):
        header, first, last_byte = data.draw(ranges(len(whole), points))
        _check_range(shape, header, first, last_byte)


# -- damage in one part ---------------------------------------------------------------------------

def test_damaged_part_of_a_small_object_is_refused(small):
    c, s, coffer, srv = small.client, small.sdk, small.coffer, small.srv
    key = "damaged-small"
    staged = stage(s, coffer, key, {1: os.urandom(SMALL_MIN), 2: os.urandom(SMALL_MIN),
                                    3: os.urandom(5)})
    r = complete(c, coffer, key, staged.upload_id, staged.listing())
    etag = result_etag(r, coffer, key)
    _flip_byte(file_holding(srv.data_dir, staged.bodies[2]), 500)
    log_before = len(srv.log())
    for _ in range(2):  # and again: nothing remembers a damaged read as good
        assert_error(c.get(f"/{coffer}/{key}"), 500, "InternalError", f"{coffer}/{key}")
    wait_until(lambda: f"damaged copy of {coffer}/{key} in region ap-tianjin"
               in srv.log()[log_before:], what="the server log to report the damaged copy")
    head = s.head_object(coffer, key)
    assert f'"{head.etag}"' == etag
    assert head.sha256 == composite_sha256(staged.data())
    # a range away from the damage reads the intact bytes
    with s.get_object(coffer, key, byte_range=(0, 99)) as ranged_read:
        assert (ranged_read.status, ranged_read.span) == (206, (0, 99))
        assert ranged_read.read() == staged.bodies[1][:100]


@pytest.mark.parametrize("damaged", [1, 2])
def test_damaged_part_of_a_large_object_is_cut_off(small, damaged):
    c, s, coffer, srv = small.client, small.sdk, small.coffer, small.srv
    key = f"damaged-large-{damaged}"
    path = f"/{coffer}/{key}"
    staged = stage(s, coffer, key, {1: os.urandom(700 * 1024), 2: os.urandom(700 * 1024 + 5)})
    size = sum(len(b) for b in staged.data())
    assert size > MiB  # streamed, not read whole before the answer
    r = complete(c, coffer, key, staged.upload_id, staged.listing())
    result_etag(r, coffer, key)
    files = [file_holding(srv.data_dir, body) for body in staged.data()]
    _flip_byte(files[damaged - 1], 17 if damaged == 1 else len(staged.bodies[2]) - 3)
    on_disk = b"".join(p.read_bytes() for p in files)
    assert len(on_disk) == size and on_disk != b"".join(staged.data())
    log_before = len(srv.log())
    for _ in range(2):
        got = bytearray()
        with c.http.stream("GET", _signed_url(c, path), headers=_auth(c, "GET", path)) as resp:
            assert resp.status_code == 200  # the headers left before the bytes were read
            assert resp.headers["content-length"] == str(size)
            with pytest.raises(httpx.RemoteProtocolError):
                for chunk in resp.iter_raw():
                    got += chunk
        assert len(got) < size  # never the complete body
        assert bytes(got) == on_disk[:len(got)]
    wait_until(lambda: f"damaged copy of {coffer}/{key} in region ap-tianjin"
               in srv.log()[log_before:], what="the server log to report the damaged copy")
    # the server is still healthy
    s.put_object(coffer, f"after-{key}", b"fine")
    assert fetch(s, coffer, f"after-{key}") == b"fine"


# -- races ----------------------------------------------------------------------------------------

def _together(*calls) -> list[httpx.Response]:
    """Run the calls in threads released at the same instant."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


@pytest.fixture
def racers(small) -> Iterator[list[SignedClient]]:
    c = small.client
    clients = [SignedClient(c.base_url, c.secret_id, c.secret_key) for _ in range(2)]
    yield clients
    for one in clients:
        one.close()


def test_two_concurrent_completes_one_wins(small, racers):
    coffer = small.coffer
    seen = []
    for round_ in range(5):
        key = f"race-complete-{round_}"
        staged = stage(small.sdk, coffer, key, {1: os.urandom(SMALL_MIN), 2: b"tail"})
        answers = _together(*(partial(complete, cl, coffer, key, staged.upload_id,
                                      staged.listing()) for cl in racers))
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200, 409], [(r.status_code, r.text) for r in answers]
        (winner,) = [r for r in answers if r.status_code == 200]
        (loser,) = [r for r in answers if r.status_code == 409]
        assert error_code(loser) in ("MultipartAlreadyCompleted", "AlreadyLock"), loser.text
        assert_error(loser, 409, error_code(loser), f"{coffer}/{key}")
        seen.append(error_code(loser))
        check_object(small.sdk, coffer, key, staged.data(),
                     result_etag(winner, coffer, key))
        assert (key, staged.upload_id) not in uploads(small.sdk, coffer)
    print("losing codes of concurrent completes:", seen)


def test_complete_racing_an_abort(small, racers):
    s, coffer, data_dir = small.sdk, small.coffer, small.srv.data_dir
    outcomes = []
    for round_ in range(8):
        key = f"race-abort-{round_}"
        before = set(blob_files(data_dir))
        staged = stage(s, coffer, key, {1: os.urandom(SMALL_MIN), 2: b"tail"})
        first, second = racers if round_ % 2 else racers[::-1]
        done, aborted = _together(
            partial(complete, first, coffer, key, staged.upload_id, staged.listing()),
            partial(abort, second, coffer, key, staged.upload_id))
        ok = [done.status_code == 200, aborted.status_code == 204]
        assert ok.count(True) == 1, (done.status_code, done.text, aborted.status_code,
                                     aborted.text)
        res = f"{coffer}/{key}"
        if done.status_code == 200:
            assert (aborted.status_code, error_code(aborted)) in (
                (409, "AlreadyLock"), (409, "MultipartAlreadyCompleted")), aborted.text
            assert_error(aborted, 409, error_code(aborted), res)
            check_object(s, coffer, key, staged.data(), result_etag(done, coffer, key))
            assert len(set(blob_files(data_dir)) - before) == 2
            outcomes.append(("completed", error_code(aborted)))
        else:
            assert (done.status_code, error_code(done)) in (
                (404, "NoSuchUpload"), (409, "AlreadyLock")), done.text
            assert_error(done, done.status_code, error_code(done), res)
            check_missing(s, coffer, key)
            assert key not in listed(s, coffer)
            assert set(blob_files(data_dir)) == before
            s.put_object(coffer, key, b"free again")
            outcomes.append(("aborted", error_code(done)))
        assert (key, staged.upload_id) not in uploads(s, coffer)
    print("complete vs abort:", outcomes)


def test_two_processes_complete_one_upload(two_servers):
    """Two server processes on one data directory: the lock is in the metadata store, so
    exactly one complete wins there too, and both processes then read the same object."""
    a, b = two_servers
    a.start()
    b.start()
    sa = a.new_sdk(SMALL_APP_ID, SMALL_UIN, retry=NO_RETRY)
    sb = b.sdk_like(sa)
    ca, cb = SignedClient.of(sa), SignedClient.of(sb)
    try:
        coffer = f"two-{SMALL_APP_ID}"
        sa.create_coffer(coffer, ["ap-tianjin"])
        for round_ in range(3):
            key = f"shared-{round_}"
            staged = stage(sa, coffer, key, {1: os.urandom(MiB), 2: b"tail"})
            answers = _together(*(partial(complete, cl, coffer, key, staged.upload_id,
                                          staged.listing()) for cl in (ca, cb)))
            assert sorted(r.status_code for r in answers) == [200, 409], [
                (r.status_code, r.text) for r in answers]
            (winner,) = [r for r in answers if r.status_code == 200]
            (loser,) = [r for r in answers if r.status_code == 409]
            assert error_code(loser) in ("MultipartAlreadyCompleted", "AlreadyLock")
            etag = result_etag(winner, coffer, key)
            check_object(sa, coffer, key, staged.data(), etag)
            check_object(sb, coffer, key, staged.data(), etag)
    finally:
        for one in (ca, cb, sa, sb):
            one.close()


def test_a_part_streaming_during_the_complete(small):
    """A part write still streaming when the complete commits never becomes part of the
    object, and leaves no file once it ends."""
    c, s, coffer, data_dir = small.client, small.sdk, small.coffer, small.srv.data_dir
    key = "streaming"
    before = set(blob_files(data_dir))
    staged = stage(s, coffer, key, {1: os.urandom(SMALL_MIN), 2: b"tail"})
    held = os.urandom(3 * MiB)
    up = raw_part(c, coffer, key, staged.upload_id, 3, len(held))
    try:
        up.send(held[:MiB + 512 * 1024])
        wait_part_streaming(data_dir, staged.upload_id, MiB)
        r = complete(c, coffer, key, staged.upload_id, staged.listing())
        if r.status_code == 409:  # the server may refuse while a part streams
            assert_error(r, 409, "AlreadyLock", f"{coffer}/{key}")
        answer = finish_body(up, held[MiB + 512 * 1024:])
    finally:
        up.close()
    print("complete with a part streaming:", r.status_code, error_code(r) or "",
          "; the streaming part:", answer.status_code if answer else "connection closed",
          answer.headers.get("x-cdcs-error-code", "") if answer else "")
    if r.status_code == 409:
        assert answer is not None and answer.status_code == 200
        r = complete(c, coffer, key, staged.upload_id, staged.listing(1, 2))
    else:
        if answer is not None:
            assert answer.status_code == 409, answer
            assert answer.headers.get("x-cdcs-error-code") == "MultipartAlreadyCompleted"
    check_object(s, coffer, key, staged.data(), result_etag(r, coffer, key))
    wait_until(lambda: tmp_files(data_dir) == [] and len(set(blob_files(data_dir)) - before) == 2,
               what="the streaming part's file to go")
    assert sorted(p.read_bytes() for p in set(blob_files(data_dir)) - before) == sorted(
        staged.data())


# -- SIGKILL right after the complete -------------------------------------------------------------

def test_completed_object_survives_sigkill(tmp_path):
    config = tmp_path / "datacoffer.toml"
    config.write_text(f"min_part_size = {SMALL_MIN}\n")  # the TOML setting, this time
    srv = ServerProcess(tmp_path / "data", config=config)
    srv.start()
    try:
        s = srv.new_sdk(SMALL_APP_ID, SMALL_UIN, retry=NO_RETRY)
        c = SignedClient.of(s)
        coffer, key = f"crash-{SMALL_APP_ID}", "crash/complete.bin"
        s.create_coffer(coffer, ["ap-tianjin"])
        staged = stage(s, coffer, key, {2: os.urandom(SMALL_MIN * 3), 1: os.urandom(SMALL_MIN),
                                        4: b"unlisted", 3: b"end"})
        staged.replace(s, coffer, key, 1, os.urandom(SMALL_MIN - 1))
        r = complete(c, coffer, key, staged.upload_id, staged.listing(1, 2, 3))
        assert_error(r, 400, "EntityTooSmall", f"{coffer}/{key}")
        staged.replace(s, coffer, key, 1, os.urandom(SMALL_MIN))

        r = complete(c, coffer, key, staged.upload_id, staged.listing(1, 2, 3))
        etag = result_etag(r, coffer, key)
        srv.kill()
        srv.start()

        check_object(s, coffer, key, staged.data(1, 2, 3), etag)
        assert_error(complete(c, coffer, key, staged.upload_id, staged.listing(1, 2, 3)), 409,
                     "MultipartAlreadyCompleted", f"{coffer}/{key}")
        with pytest.raises(errors.NoSuchUpload) as gone:
            s.list_parts(coffer, key, staged.upload_id)
        assert gone.value.resource == f"{coffer}/{key}"
        assert uploads(s, coffer) == []
        assert tmp_files(srv.data_dir) == []
        assert sorted(p.read_bytes() for p in blob_files(srv.data_dir)) == sorted(
            staged.data(1, 2, 3))
        c.close()
        s.close()
    finally:
        srv.stop()


# -- 10,000 parts ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_ten_thousand_parts(tmp_path):
    parts, threads = 10_000, 8
    srv = ServerProcess(tmp_path / "data", env={"DATACOFFER_MIN_PART_SIZE": "1"})
    srv.start()
    try:
        s = srv.new_sdk(SMALL_APP_ID, SMALL_UIN, retry=NO_RETRY)
        c = SignedClient.of(s)
        coffer, key = f"many-{SMALL_APP_ID}", "ten-thousand"
        s.create_coffer(coffer, ["ap-tianjin"])
        upload_id = initiate(s, coffer, key)
        bodies = [f"{n:09d}\n".encode() for n in range(1, parts + 1)]
        assert {len(b) for b in bodies} == {10}

        def upload_share(i: int) -> None:  # the threads share the SDK client's pool
            for n in range(i + 1, parts + 1, threads):
                upload_part(s, coffer, key, upload_id, n, bodies[n - 1])

        started = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(upload_share, range(threads)))
        uploading = time.monotonic() - started
        print(f"\nuploaded {parts} parts of 10 bytes with {threads} threads in "
              f"{uploading:.1f} s ({parts / uploading:.0f} parts/s)")

        body = complete_xml((n, f'"{md5_hex(b)}"') for n, b in enumerate(bodies, 1))
        assert len(body) < 4 * MiB
        started = time.monotonic()
        r = post_complete(c, coffer, key, upload_id, body)
        completing = time.monotonic() - started
        print(f"completed {parts} parts in {completing:.2f} s ({len(body)} byte list)")
        etag = result_etag(r, coffer, key)
        assert completing < 10

        started = time.monotonic()
        check_object(s, coffer, key, bodies, etag)
        print(f"read back {parts * 10} bytes from {parts} parts in "
              f"{time.monotonic() - started:.2f} s")
        first, last = 10 * 4321 + 3, 10 * 8765 + 6
        with s.get_object(coffer, key, byte_range=(first, last)) as ranged_read:
            assert (ranged_read.status, ranged_read.span) == (206, (first, last))
            assert ranged_read.read() == b"".join(bodies)[first:last + 1]
        assert len(blob_files(srv.data_dir)) == parts
        c.close()
        s.close()
    finally:
        srv.stop()


# -- SIGKILL during CompleteMultipartUpload, and a 2 GiB upload -----------------------------------

def _upload_many(sdk: Client, coffer: str, key: str, count: int) -> Staged:
    """An upload of `count` small distinct parts, sent by 8 threads."""
    upload_id = initiate(sdk, coffer, key)
    bodies = {n: f"part {n:05d}|".encode() for n in range(1, count + 1)}
    with ThreadPoolExecutor(8) as pool:
        etags = dict(zip(bodies, pool.map(
            lambda n: upload_part(sdk, coffer, key, upload_id, n, bodies[n]), bodies),
            strict=True))
    return Staged(upload_id, bodies, etags)


@pytest.mark.parametrize("delay", [0.0, 0.02])
def test_sigkill_during_complete_leaves_it_complete_or_resumable(tmp_path, delay):
    """Killed while a complete of 600 parts runs: after the restart the upload is either the
    object (intact, no longer listed) or still listed with every part, and completes then."""
    srv = ServerProcess(tmp_path / "data", env={"DATACOFFER_MIN_PART_SIZE": "1"})
    srv.start()
    try:
        sdk = srv.new_sdk(retry=NO_RETRY)
        client = SignedClient.of(sdk)
        coffer, key = "killcomplete-1250000000", "k.bin"
        sdk.create_coffer(coffer, ["ap-tianjin"])
        staged = _upload_many(sdk, coffer, key, 600)
        body = complete_xml(staged.listing())
        worker = threading.Thread(target=lambda: _swallow(
            lambda: post_complete(client, coffer, key, staged.upload_id, body)))
        worker.start()
        time.sleep(delay)
        srv.kill()
        worker.join(30)
        srv.start()
        whole = b"".join(staged.data())
        try:
            r = sdk.get_object(coffer, key)
        except errors.ObjectNotExists as missing:
            assert missing.resource == f"{coffer}/{key}"
            assert listed_parts(sdk, coffer, key, staged) == expected_parts(staged)
            result_etag(post_complete(client, coffer, key, staged.upload_id, body), coffer, key)
            assert fetch(sdk, coffer, key) == whole
        else:
            with r:
                assert r.read() == whole
            assert r.info.sha256 == composite_sha256(staged.data())
            assert key not in [k for k, _ in uploads(sdk, coffer)]
        client.close()
        sdk.close()
    finally:
        srv.stop()


def _swallow(call) -> None:
    """Run a request that the test kills the server under; its failure is expected."""
    with contextlib.suppress(httpx.TransportError):
        call()


@pytest.mark.slow
def test_two_gib_upload_completes_without_touching_the_bytes(tmp_path):
    """2 GiB in 32 parts of 64 MiB, 4 uploaders: the complete call costs milliseconds, not the
    seconds that copying or re-reading 2 GiB would; the object reads back whole and checked."""
    part_size, count = 64 * MiB, 32
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    try:
        sdk = srv.new_sdk(retry=NO_RETRY)
        client = SignedClient.of(sdk)
        coffer, key = "twogib-1250000000", "big.bin"
        sdk.create_coffer(coffer, ["ap-tianjin"])
        upload_id = initiate(sdk, coffer, key)
        block = os.urandom(MiB)

        def body(n: int) -> Iterator[bytes]:  # distinct parts, never a whole part in memory
            yield n.to_bytes(8, "big") + block[8:]
            for _ in range(part_size // MiB - 1):
                yield block

        def digests(n: int) -> tuple[bytes, bytes]:
            md5, sha = hashlib.md5(), hashlib.sha256()
            for piece in body(n):
                md5.update(piece)
                sha.update(piece)
            return md5.digest(), sha.digest()

        def send(n: int) -> str:  # streamed: the SDK calls body(n) for the chunks
            part = sdk.upload_part(coffer, key, upload_id, n, partial(body, n),
                                   length=part_size)
            return f'"{part.etag}"'

        with ThreadPoolExecutor(4) as pool:
            etags = list(pool.map(send, range(1, count + 1)))
        started = time.perf_counter()
        r = complete(client, coffer, key, upload_id, list(zip(range(1, count + 1), etags,
                                                              strict=True)))
        took = time.perf_counter() - started
        etag = result_etag(r, coffer, key)
        print(f"complete of {count} parts, 2 GiB: {took * 1000:.1f} ms")
        assert took < 1.0
        sums = [digests(n) for n in range(1, count + 1)]
        joined_md5 = hashlib.md5(b"".join(m for m, _ in sums)).hexdigest()
        assert etag == f'"{joined_md5}-{count}"'
        received = 0
        sha_of_parts = []
        with sdk.get_object(coffer, key) as resp:
            assert resp.status == 200
            assert resp.info.size == part_size * count
            expected_sha = (hashlib.sha256(b"".join(s for _, s in sums)).hexdigest()
                            + f"-{count}")
            assert resp.info.sha256 == expected_sha
            part_sha = hashlib.sha256()
            for piece in resp.iter_bytes():
                while piece:
                    take = min(len(piece), part_size - received % part_size)
                    part_sha.update(piece[:take])
                    received += take
                    piece = piece[take:]
                    if received % part_size == 0:
                        sha_of_parts.append(part_sha.digest())
                        part_sha = hashlib.sha256()
        assert received == part_size * count
        assert sha_of_parts == [s for _, s in sums]
        client.close()
        sdk.close()
    finally:
        srv.stop()
