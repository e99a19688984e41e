"""Wire shape of GetService, PutCoffer, GetCoffer and DeleteCoffer, against api.md and errors.md.

Also the routing refusals (405) and the headers every response carries. The helpers at the top
are shared with test_api_objects.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datacoffer.http.errors import printable
from tests.conftest import new_account
from tests.serverproc import SignedClient

XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'
ISO_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
RFC1123 = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d{2}:\d{2}:\d{2} GMT")
JSON = {"Content-Type": "application/json"}


# -- shared helpers -------------------------------------------------------------------------------

def assert_common(r: httpx.Response, *, region: str | None = None) -> None:
    """The headers api.md puts on every response, success or error."""
    h = r.headers
    assert re.fullmatch(r"[0-9A-Za-z-]{16,}", h["x-cdcs-request-id"]), h
    assert h.get_list("server") == ["DataCoffer"]
    assert RFC1123.fullmatch(h["date"]), h["date"]
    assert abs(parsedate_to_datetime(h["date"]).timestamp() - time.time()) < 120
    if r.status_code == 204:
        # RFC 9110 forbids Content-Length and Transfer-Encoding on 204: it has no body.
        assert r.content == b""
    else:
        assert "content-length" in h or "transfer-encoding" in h, h
        if "content-length" in h and r.request.method != "HEAD":
            assert int(h["content-length"]) == len(r.content)
    if region is not None:
        assert h["x-cdcs-coffer-region"] == region


def assert_error(r: httpx.Response, status: int, code: str, resource: str, *,
                 region: str | None = None) -> str:
    """An error answer: status, code header, trace id, and the XML document (not for HEAD).

    Returns the Message, for tests that check what it says.
    """
    assert r.status_code == status, (r.status_code, r.headers, r.text)
    assert_common(r, region=region)
    assert r.headers["x-cdcs-error-code"] == code
    trace = r.headers["x-cdcs-trace-id"]
    assert re.fullmatch(r"[0-9A-Za-z-]{16,}", trace)
    assert trace != r.headers["x-cdcs-request-id"]
    if r.request.method == "HEAD":
        assert r.content == b""
        return ""
    assert r.headers["content-type"].split(";")[0] == "application/xml"
    assert r.content.startswith(XML_DECLARATION)
    root = ET.fromstring(r.content)
    assert root.tag == "Error"
    assert [c.tag for c in root] == ["Code", "Message", "Resource", "RequestId", "TraceId"]
    fields = {c.tag: c.text or "" for c in root}
    assert fields["Code"] == code
    assert fields["Resource"] == resource
    assert fields["RequestId"] == r.headers["x-cdcs-request-id"]
    assert fields["TraceId"] == trace
    assert fields["Message"].strip()
    return fields["Message"]


def tree(elem: ET.Element) -> tuple:
    """(tag, text) for a leaf, (tag, [children]) otherwise; no attributes, no stray text."""
    assert not elem.attrib, elem.attrib
    assert not (elem.tail or "").strip()
    if len(elem) == 0:
        return (elem.tag, elem.text or "")
    assert not (elem.text or "").strip()
    return (elem.tag, [tree(c) for c in elem])


def xml_tree(r: httpx.Response) -> tuple:
    assert r.headers["content-type"].split(";")[0] == "application/xml"
    assert r.content.startswith(XML_DECLARATION)
    return tree(ET.fromstring(r.content))


def iso_ms(value: str, low_ms: int, high_ms: int) -> str:
    """Check an ISO 8601 body timestamp's format and that it lies in [low, high]."""
    assert ISO_MS.fullmatch(value), value
    ms = int(datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() * 1000 + 0.5)
    assert low_ms - 1 <= ms <= high_ms + 1, (value, low_ms, high_ms)
    return value


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def locations(*regions: str) -> dict:
    return {"Locations": {"Location": list(regions)}}


def put_coffer(client: SignedClient, name: str, body: object) -> httpx.Response:
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.put(f"/{name}", content=content, headers=JSON)


def fresh_name(app_id: str, stem: str = "c") -> str:
    return f"{stem}{secrets.token_hex(4)}-{app_id}"


# -- GetService -----------------------------------------------------------------------------------

def test_get_service_shape_sorted_and_per_account(server):
    acc_a, acc_b = new_account(server), new_account(server)
    a = SignedClient(server.base_url, acc_a.secret_id, acc_a.secret_key)
    b = SignedClient(server.base_url, acc_b.secret_id, acc_b.secret_key)
    try:
        r = a.get("/")
        assert r.status_code == 200
        assert_common(r)
        assert "x-cdcs-coffer-region" not in r.headers
        owner_a = ("Owner", [("ID", f"qcs::cam::uin/{acc_a.uin}:uin/{acc_a.uin}"),
                             ("DisplayName", acc_a.uin)])
        assert xml_tree(r) == ("ListAllMyCoffersResult", [owner_a, ("Coffers", "")])

        before = now_ms()
        made_a = {  # created out of name order
            f"zeta-{acc_a.app_id}": ("ap-shanghai",),
            f"alpha-{acc_a.app_id}": ("ap-guangzhou", "ap-tianjin", "ap-shanghai"),
            f"m0-{acc_a.app_id}": ("ap-tianjin", "ap-shanghai"),
        }
        for name, regions in made_a.items():
            assert put_coffer(a, name, locations(*regions)).status_code == 200
        made_b = f"bravo-{acc_b.app_id}"
        assert put_coffer(b, made_b, locations("ap-tianjin")).status_code == 200
        after = now_ms()

        r = a.get("/")
        assert r.status_code == 200
        assert_common(r)
        got = xml_tree(r)
        coffers = got[1][1][1]
        assert [c[1][0] for c in coffers] == [("Name", n) for n in sorted(made_a)]
        expected = []
        for node, name in zip(coffers, sorted(made_a), strict=True):
            date = iso_ms(node[1][2][1], before, after)
            expected.append(("Coffer", [
                ("Name", name),
                ("Locations", [("Location", reg) for reg in made_a[name]]),
                ("CreationDate", date)]))
        assert got == ("ListAllMyCoffersResult", [owner_a, ("Coffers", expected)])

        r = b.get("/")
        assert r.status_code == 200
        got = xml_tree(r)
        assert got[1][0] == ("Owner", [("ID", f"qcs::cam::uin/{acc_b.uin}:uin/{acc_b.uin}"),
                                       ("DisplayName", acc_b.uin)])
        assert [c[1][0] for c in got[1][1][1]] == [("Name", made_b)]
    finally:
        a.close()
        b.close()


def test_get_service_of_shared_account_is_sorted_and_own(client, account, coffer):
    r = client.get("/")
    assert r.status_code == 200
    names = [n.text for n in ET.fromstring(r.content).iter("Name")]
    assert coffer in names
    assert names == sorted(names)
    assert all(n.endswith(f"-{account.app_id}") for n in names)


# -- PutCoffer ------------------------------------------------------------------------------------

@pytest.mark.parametrize("regions", [
    ("ap-tianjin",),
    ("ap-shanghai", "ap-tianjin"),
    ("ap-guangzhou", "ap-tianjin", "ap-shanghai"),
])
def test_put_coffer_stores_locations_in_order(client, coffer_name, regions):
    r = put_coffer(client, coffer_name, locations(*regions))
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == "0"
    assert_common(r, region=regions[0])
    r = client.get(f"/{coffer_name}")
    assert r.status_code == 200
    assert_common(r, region=regions[0])
    got = xml_tree(r)
    assert got[1][2] == ("Locations", [("Location", reg) for reg in regions])
    r = client.get("/")
    node = next(c for c in xml_tree(r)[1][1][1] if c[1][0] == ("Name", coffer_name))
    assert node[1][1] == ("Locations", [("Location", reg) for reg in regions])


@pytest.mark.parametrize("body", [
    pytest.param(b"not json", id="not-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xff\xfe", id="not-utf8"),
    pytest.param(b"[" * 30000, id="nested-too-deeply"),
    pytest.param(b'{"EncryptType": ' + b"1" * 5000 + b"}", id="number-too-long"),
    pytest.param([], id="json-list"),
    pytest.param({}, id="no-locations"),
    pytest.param({"Locations": {}}, id="no-location"),
    pytest.param({"Locations": ["ap-tianjin"]}, id="locations-list"),
    pytest.param(locations(), id="zero-regions"),
    pytest.param(locations("ap-tianjin", "ap-shanghai", "ap-guangzhou", "ap-beijing"),
                 id="four-regions"),
    pytest.param(locations("ap-tianjin", "ap-shanghai", "ap-guangzhou", "ap-tianjin"),
                 id="four-known-regions"),
    pytest.param(locations("ap-tianjin", "ap-tianjin"), id="duplicate"),
    pytest.param(locations("ap-beijing"), id="unknown-region"),
    pytest.param(locations("ap-tianjin", "AP-SHANGHAI"), id="uppercase-region"),
    pytest.param({**locations("ap-tianjin"), "EncryptType": 3}, id="encrypt-type-3"),
    pytest.param({**locations("ap-tianjin"), "EncryptType": "x"}, id="encrypt-type-text"),
    pytest.param({**locations("ap-tianjin"), "EncryptType": 0, "KeyId": "k1"},
                 id="key-id-with-type-0"),
    pytest.param({**locations("ap-tianjin"), "KeyRegion": "ap-tianjin"},
                 id="key-region-with-type-0"),
])
def test_put_coffer_bad_body_is_invalid_argument(client, coffer_name, body):
    r = put_coffer(client, coffer_name, body)
    assert_error(r, 400, "InvalidArgument", coffer_name)
    assert_error(client.get(f"/{coffer_name}"), 404, "NoSuchCoffer", coffer_name)


def test_put_coffer_encrypt_type_1_is_reported(client, coffer_name):
    r = put_coffer(client, coffer_name, {**locations("ap-tianjin"), "EncryptType": 1})
    assert r.status_code == 200, r.text
    doc = ET.fromstring(client.get(f"/{coffer_name}").content)
    assert doc.findtext("EncryptType") == "1"
    assert doc.find("KeyId") is None and doc.find("KeyRegion") is None


def test_put_coffer_encrypt_type_2_needs_the_service_role(client, coffer_name):
    # the shared account never granted the role: refused before the key is even looked at
    body = {**locations("ap-tianjin"), "EncryptType": 2, "KeyId": "kms-1",
            "KeyRegion": "ap-tianjin"}
    assert_error(put_coffer(client, coffer_name, body), 409, "AssumeRoleFailed", coffer_name)
    assert_error(client.get(f"/{coffer_name}"), 404, "NoSuchCoffer", coffer_name)


@pytest.mark.parametrize("name_part", [
    pytest.param("a", id="too-short"),
    pytest.param("Abc", id="uppercase"),
    pytest.param("-abc", id="leading-dash"),
    pytest.param("abc-", id="trailing-dash"),
    pytest.param("a" * 51, id="51-chars"),
    pytest.param("ab_c", id="underscore"),
    pytest.param("ab.c", id="dot"),
    pytest.param("é-x", id="non-ascii"),
])
def test_put_coffer_naming_rule(client, account, name_part):
    name = f"{name_part}-{account.app_id}"
    assert_error(put_coffer(client, name, locations("ap-tianjin")), 400,
                 "InvalidCofferName", name)


@pytest.mark.parametrize("name", ["nosuffix", "abc-", "abc-12x", "-1250000000"])
def test_put_coffer_name_without_app_id(client, name):
    assert_error(put_coffer(client, name, locations("ap-tianjin")), 400,
                 "InvalidCofferName", name)


def test_put_coffer_name_lengths_at_the_limits(client, account):
    for part in ("ab", "a" + secrets.token_hex(24) + "z"):  # 2 and 50 characters
        assert len(part) in (2, 50)
        name = f"{part}-{account.app_id}"
        r = put_coffer(client, name, locations("ap-tianjin"))
        assert r.status_code in (200, 409), r.text  # "ab" may exist from an earlier run
        if r.status_code == 409:
            assert_error(r, 409, "CofferAlreadyOwnedByYou", name)
        assert client.get(f"/{name}").status_code == 200


def test_put_coffer_with_another_app_id_is_invalid_name(client, other):
    name = fresh_name(other[0].app_id)
    message = assert_error(put_coffer(client, name, locations("ap-tianjin")), 400,
                           "InvalidCofferName", name)
    assert message.strip()
    assert_error(client.get(f"/{name}"), 404, "NoSuchCoffer", name)


def test_put_coffer_existing_names(client, coffer, other):
    assert_error(put_coffer(client, coffer, locations("ap-shanghai")), 409,
                 "CofferAlreadyOwnedByYou", coffer)
    # The first Locations stay.
    assert xml_tree(client.get(f"/{coffer}"))[1][2] == ("Locations", [("Location", "ap-tianjin")])

    acc, b = other
    theirs = fresh_name(acc.app_id)
    assert put_coffer(b, theirs, locations("ap-tianjin")).status_code == 200
    assert_error(put_coffer(client, theirs, locations("ap-tianjin")), 409,
                 "CofferAlreadyExists", theirs)
    assert_error(put_coffer(b, coffer, locations("ap-tianjin")), 409,
                 "CofferAlreadyExists", coffer)
    # Another account has no rights on the coffer (no policies in this version).
    assert_error(b.get(f"/{coffer}"), 401, "PolicyCheckFailed", coffer)
    assert_error(b.delete(f"/{coffer}"), 401, "PolicyCheckFailed", coffer)
    assert client.get(f"/{coffer}").status_code == 200


# -- GetCoffer: shape -----------------------------------------------------------------------------

def _put(client: SignedClient, coffer: str, key: str, data: bytes | None = None) -> None:
    r = client.put(f"/{coffer}/{key}", content=data if data is not None else key.encode())
    assert r.status_code == 200, (key, r.text)


def test_get_coffer_shape(client, account, coffer):
    empty = xml_tree(client.get(f"/{coffer}"))
    assert empty == ("ListCofferResult", [
        ("Name", coffer), ("EncryptType", "0"),
        ("Locations", [("Location", "ap-tianjin")]),
        ("Prefix", ""), ("Marker", ""), ("MaxKeys", "1000"), ("MaxCount", "1000"),
        ("IsTruncated", "false")])

    before = now_ms()
    data = {"b.txt": b"bee", "a.jpg": b"x" * 37}
    for key, body in data.items():
        _put(client, coffer, key, body)
    after = now_ms()
    r = client.get(f"/{coffer}")
    assert r.status_code == 200
    assert_common(r, region="ap-tianjin")
    got = xml_tree(r)
    contents = [c for c in got[1] if c[0] == "Contents"]
    expected_contents = []
    for node, key in zip(contents, ["a.jpg", "b.txt"], strict=True):
        expected_contents.append(("Contents", [
            ("Key", key), ("LastModified", iso_ms(node[1][1][1], before, after)),
            ("ETag", f'"{hashlib.md5(data[key]).hexdigest()}"'),
            ("Size", str(len(data[key]))),
            ("Owner", [("ID", account.app_id), ("DisplayName", account.app_id)])]))
    assert got == ("ListCofferResult", [
        ("Name", coffer), ("EncryptType", "0"),
        ("Locations", [("Location", "ap-tianjin")]),
        ("Prefix", ""), ("Marker", ""), ("MaxKeys", "1000"), ("MaxCount", "1000"),
        ("IsTruncated", "false"), *expected_contents])

    r = client.get(f"/{coffer}", params={"max-keys": "1", "encoding-type": "url"})
    got = xml_tree(r)
    assert [c[0] for c in got[1]] == [
        "Name", "EncryptType", "Locations", "EncodingType", "Prefix", "Marker", "MaxKeys",
        "MaxCount", "IsTruncated", "NextMarker", "Contents"]
    fields = dict(c for c in got[1] if c[0] != "Locations")
    assert fields["EncodingType"] == "url"
    assert (fields["MaxKeys"], fields["MaxCount"]) == ("1", "1")
    assert (fields["IsTruncated"], fields["NextMarker"]) == ("true", "a.jpg")

    r = client.get(f"/{coffer}", params={"delimiter": "/", "prefix": "a"})
    got = xml_tree(r)
    assert [c[0] for c in got[1]] == [
        "Name", "EncryptType", "Locations", "Prefix", "Marker", "MaxKeys", "MaxCount",
        "IsTruncated", "Contents"]  # no CommonPrefixes element when there is none
    assert dict(c for c in got[1] if c[0] != "Contents")["Prefix"] == "a"


def test_get_coffer_common_prefixes_shape(client, coffer):
    for key in ("photos/a.jpg", "photos/b.jpg", "docs/x", "top"):
        _put(client, coffer, key)
    got = xml_tree(client.get(f"/{coffer}", params={"delimiter": "/"}))
    tail = [c for c in got[1] if c[0] in ("Contents", "CommonPrefixes")]
    assert [c[0] for c in tail] == ["Contents", "CommonPrefixes", "CommonPrefixes"]
    assert tail[0][1][0] == ("Key", "top")
    assert tail[1:] == [("CommonPrefixes", [("Prefix", "docs/")]),
                        ("CommonPrefixes", [("Prefix", "photos/")])]


def test_get_coffer_missing_and_not_found_codes(client, coffer_name):
    assert_error(client.get(f"/{coffer_name}"), 404, "NoSuchCoffer", coffer_name)
    assert_error(client.delete(f"/{coffer_name}"), 404, "NoSuchCoffer", coffer_name)
    # Request syntax is checked before the coffer's existence (errors.md).
    assert_error(client.get(f"/{coffer_name}", params={"max-keys": "0"}), 400,
                 "InvalidArgument", coffer_name)
    assert_error(client.get(f"/{coffer_name}", params={"prefix": "/x"}), 400,
                 "InvalidObjectPrefix", coffer_name)


# -- GetCoffer: order, prefix, delimiter, marker, max-keys ----------------------------------------

ORDER_KEYS = ["z", "a", "é", "中", "😀", "\uff21", "\ue000", "\u00ff", "a/b", "A", "~", "\u07ff",
              "\u0800", "\ufffd", "\U0010ffff"]


def filled_coffer(client, account, stem: str, keys: list[str]) -> str:
    """A new coffer holding one small object at each of `keys`."""
    name = fresh_name(account.app_id, stem)
    client.make_coffer(name)
    for key in keys:
        _put(client, name, key)
    return name


@pytest.fixture(scope="module")
def order_coffer(client, account):
    return filled_coffer(client, account, "order", ORDER_KEYS)


def _keys(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [k.text or "" for k in ET.fromstring(r.content).iter("Key")]


def test_get_coffer_utf8_byte_order(client, order_coffer):
    by_bytes = sorted(ORDER_KEYS, key=lambda k: k.encode("utf-8"))
    # UTF-16 order (Java, JavaScript) would put U+E000 and U+FF21 after the emoji.
    assert by_bytes.index("\ue000") < by_bytes.index("😀")
    assert by_bytes.index("\uff21") < by_bytes.index("😀")
    assert _keys(client.get(f"/{order_coffer}")) == by_bytes
    # One by one, through NextMarker, in the same order.
    walked, marker = [], ""
    for _ in range(len(ORDER_KEYS) + 1):
        r = client.get(f"/{order_coffer}", params={"max-keys": "1", "marker": marker})
        keys = _keys(r)
        walked += keys
        root = ET.fromstring(r.content)
        if root.findtext("IsTruncated") == "false":
            assert root.find("NextMarker") is None
            break
        marker = root.findtext("NextMarker")
        assert marker == keys[-1]
    assert walked == by_bytes


@pytest.mark.parametrize(("params", "expected"), [
    ({"prefix": "a"}, ["a", "a/b"]),
    ({"prefix": "é"}, ["é"]),
    ({"marker": "z"}, ["~", "é", "\u00ff", "\u07ff", "\u0800", "中", "\ue000", "\uff21",
                       "\ufffd", "😀", "\U0010ffff"]),
    ({"marker": "中"}, ["\ue000", "\uff21", "\ufffd", "😀", "\U0010ffff"]),
    ({"marker": "\ufffd"}, ["😀", "\U0010ffff"]),
    ({"marker": "a", "max-keys": "2"}, ["a/b", "z"]),
    ({"max-count": "3"}, ["A", "a", "a/b"]),
    ({"delimiter": "/", "prefix": "a"}, ["a"]),
    ({"prefix": "nothing"}, []),
])
def test_get_coffer_query(client, order_coffer, params, expected):
    assert _keys(client.get(f"/{order_coffer}", params=params)) == expected


def test_get_coffer_max_count_alias_is_echoed(client, order_coffer):
    root = ET.fromstring(client.get(f"/{order_coffer}", params={"max-count": "2"}).content)
    assert (root.findtext("MaxKeys"), root.findtext("MaxCount")) == ("2", "2")
    assert root.findtext("IsTruncated") == "true"
    assert root.findtext("NextMarker") == "a"


@pytest.mark.parametrize("name", ["max-keys", "max-count"])
@pytest.mark.parametrize("value", ["0", "1001", "abc", "-1", "1.5", "²", "\uff15", "9" * 5000])
def test_get_coffer_max_keys_out_of_range(client, order_coffer, name, value):
    message = assert_error(client.get(f"/{order_coffer}", params={name: value}), 400,
                           "InvalidArgument", order_coffer, region=None)
    assert "1000" in message


def test_get_coffer_max_keys_limits_ok(client, order_coffer):
    r = client.get(f"/{order_coffer}", params={"max-keys": "1"})
    assert len(_keys(r)) == 1
    assert ET.fromstring(r.content).findtext("IsTruncated") == "true"
    r = client.get(f"/{order_coffer}", params={"max-keys": "1000"})
    assert len(_keys(r)) == len(ORDER_KEYS)
    assert ET.fromstring(r.content).findtext("IsTruncated") == "false"


@pytest.mark.parametrize("value", ["xml", "URLs", "gzip"])
def test_get_coffer_bad_encoding_type(client, order_coffer, value):
    assert_error(client.get(f"/{order_coffer}", params={"encoding-type": value}), 400,
                 "InvalidArgument", order_coffer)


@pytest.mark.parametrize("prefix", ["/", "/a", "a\x01", "a\x7fb", "a\nb", "a/../b", "../a",
                                    "./a", "a/./b", "\x00"])
def test_get_coffer_bad_prefix(client, order_coffer, prefix):
    assert_error(client.get(f"/{order_coffer}", params={"prefix": prefix}), 400,
                 "InvalidObjectPrefix", order_coffer)


@pytest.mark.parametrize("prefix", ["a/..", "a/.", "..x", "a/.hidden", "a//"])
def test_get_coffer_prefix_may_end_inside_a_segment(client, order_coffer, prefix):
    r = client.get(f"/{order_coffer}", params={"prefix": prefix})
    assert r.status_code == 200, r.text
    assert ET.fromstring(r.content).findtext("Prefix") == prefix


@pytest.mark.parametrize(("key", "marker"), [("a\uffffb", ""), ("a\ufffeb", ""), ("k", "\x01")])
def test_listing_stays_well_formed(client, coffer, key, marker):
    """Whatever the server accepts, its listing must parse: either the key (or marker) is
    refused, or it is represented in a well-formed document."""
    r = client.put(f"/{coffer}/{key}", content=b"x")
    if r.status_code != 200:  # the Resource shows what XML cannot carry percent-encoded
        assert_error(r, 400, "InvalidObjectKey", printable(f"{coffer}/{key}"))
        return
    r = client.get(f"/{coffer}", params={"marker": marker} if marker else None)
    if r.status_code != 200:
        assert_error(r, 400, "InvalidArgument", coffer)
        return
    root = ET.fromstring(r.content)
    assert [k.text for k in root.iter("Key")] == ([] if marker > key else [key])
    assert root.findtext("Marker") == marker


# -- GetCoffer: pagination with a delimiter -------------------------------------------------------

TREE_KEYS = ["a", "b/1", "b/2", "b/3", "c", "d/x/1", "d/y", "e", "f/1", "g"]


@pytest.fixture(scope="module")
def tree_coffer(client, account):
    return filled_coffer(client, account, "tree", TREE_KEYS)


def _page(r: httpx.Response) -> tuple[list[str], list[str], bool, str | None]:
    assert r.status_code == 200, r.text
    root = ET.fromstring(r.content)
    keys = [c.findtext("Key") or "" for c in root.findall("Contents")]
    prefixes = [c.findtext("Prefix") or "" for c in root.findall("CommonPrefixes")]
    truncated = root.findtext("IsTruncated")
    assert truncated in ("true", "false")
    next_marker = root.findtext("NextMarker")
    assert (next_marker is not None) == (truncated == "true")
    return keys, prefixes, truncated == "true", next_marker


@pytest.mark.parametrize("max_keys", [1, 2, 3, 7])
def test_pagination_with_delimiter_walks_each_entry_once(client, tree_coffer, max_keys):
    expected = ["a", "b/", "c", "d/", "e", "f/", "g"]
    seen: list[str] = []
    marker = ""
    for _ in range(len(expected) + 1):
        keys, prefixes, truncated, next_marker = _page(client.get(
            f"/{tree_coffer}", params={"delimiter": "/", "max-keys": str(max_keys),
                                       "marker": marker}))
        page = sorted(keys + prefixes)
        assert len(page) <= max_keys  # common prefixes count against max-keys
        seen += page
        if not truncated:
            break
        assert len(page) == max_keys
        assert next_marker == page[-1]
        marker = next_marker
    assert seen == expected


def test_marker_inside_a_rolled_up_prefix(client, tree_coffer):
    """Entries are listed strictly after the marker: "b/" sorts before "b/2", so it is not
    listed again, and the keys of b/ after the marker are not listed either (rolled up)."""
    keys, prefixes, truncated, _ = _page(client.get(
        f"/{tree_coffer}", params={"delimiter": "/", "marker": "b/2"}))
    assert (keys, prefixes, truncated) == (["c", "e", "g"], ["d/", "f/"], False)
    keys, prefixes, _, _ = _page(client.get(
        f"/{tree_coffer}", params={"marker": "b/2"}))
    assert keys[:2] == ["b/3", "c"]
    # A marker just before the prefix: it is listed.
    keys, prefixes, _, _ = _page(client.get(
        f"/{tree_coffer}", params={"delimiter": "/", "marker": "b"}))
    assert (keys, prefixes) == (["c", "e", "g"], ["b/", "d/", "f/"])
    # With a prefix, the delimiter applies after it.
    keys, prefixes, _, _ = _page(client.get(
        f"/{tree_coffer}", params={"delimiter": "/", "prefix": "d/"}))
    assert (keys, prefixes) == (["d/y"], ["d/x/"])


# -- encoding-type=url ----------------------------------------------------------------------------

ENCODED_OK = re.compile(r"(?:[A-Za-z0-9\-_.~/]|%[0-9A-F]{2})*")


def test_encoding_type_url(client, coffer):
    keys = ["d i r/a+b.txt", "d i r/é%?#.txt", "d i r/中&=.txt", "x y"]
    for key in keys:
        _put(client, coffer, key)

    def listing(params):
        r = client.get(f"/{coffer}", params={**params, "encoding-type": "url"})
        assert r.status_code == 200, r.text
        return ET.fromstring(r.content)

    root = listing({"prefix": "d i r/", "marker": "d i r/a+b.txt", "max-keys": "1"})
    assert root.findtext("EncodingType") == "url"
    for tag in ("Prefix", "Marker", "NextMarker"):
        assert ENCODED_OK.fullmatch(root.findtext(tag)), (tag, root.findtext(tag))
    assert unquote(root.findtext("Prefix")) == "d i r/"
    assert root.findtext("Prefix").replace("/", "%2F") in ("d%20i%20r%2F",)
    assert unquote(root.findtext("Marker")) == "d i r/a+b.txt"
    assert "+" not in root.findtext("Marker")
    [key] = [k.text for k in root.iter("Key")]
    assert ENCODED_OK.fullmatch(key)
    assert unquote(key) == "d i r/é%?#.txt"
    assert "%C3%A9%25%3F%23" in key
    assert unquote(root.findtext("NextMarker")) == "d i r/é%?#.txt"

    root = listing({"delimiter": "/"})
    prefixes = [p.text for p in root.iter("Prefix")][1:]  # the first is the request's Prefix
    assert [unquote(p) for p in prefixes] == ["d i r/"]
    assert all(ENCODED_OK.fullmatch(p) for p in prefixes)
    assert [unquote(k.text) for k in root.iter("Key")] == ["x y"]
    assert [k.text for k in root.iter("Key")] == ["x%20y"]

    # Without encoding-type the keys are as stored.
    root = ET.fromstring(client.get(f"/{coffer}").content)
    assert [k.text for k in root.iter("Key")] == sorted(keys, key=str.encode)
    assert root.find("EncodingType") is None


# -- DeleteCoffer ---------------------------------------------------------------------------------

def test_delete_empty_coffer(client, coffer):
    r = client.delete(f"/{coffer}")
    assert r.status_code == 204
    assert r.content == b""
    assert_common(r)
    assert_error(client.get(f"/{coffer}"), 404, "NoSuchCoffer", coffer)
    assert_error(client.delete(f"/{coffer}"), 404, "NoSuchCoffer", coffer)
    assert coffer not in [n.text for n in ET.fromstring(client.get("/").content).iter("Name")]
    # The name is free again.
    assert put_coffer(client, coffer, locations("ap-shanghai")).status_code == 200


def test_delete_coffer_with_an_object(client, coffer):
    _put(client, coffer, "keep")
    assert_error(client.delete(f"/{coffer}"), 409, "CofferNotEmpty", coffer,
                 region="ap-tianjin")
    assert client.get(f"/{coffer}/keep").content == b"keep"


# -- Routing refusals -----------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "params", "resource"), [
    ("DELETE", "/{c}/k", None, "{c}/k"),
    ("POST", "/{c}", None, "{c}"),
    ("POST", "/{c}/k", None, "{c}/k"),
    ("PATCH", "/", None, ""),
    ("PATCH", "/{c}", None, "{c}"),
    ("PATCH", "/{c}/k", None, "{c}/k"),
    ("PUT", "/", None, ""),
    ("DELETE", "/", None, ""),
    ("POST", "/", None, ""),
    ("HEAD", "/{c}", None, "{c}"),
    ("OPTIONS", "/{c}/k", None, "{c}/k"),
    ("DELETE", "/{c}", {"lifecycle": ""}, "{c}"),
])
def test_method_not_allowed(client, coffer, method, path, params, resource):
    r = client.request(method, path.format(c=coffer), params=params)
    assert_error(r, 405, "MethodNotAllowed", resource.format(c=coffer))
    if method == "DELETE" and path.endswith("/k"):
        assert "never deleted" in r.text


def test_405_comes_before_authentication(server, coffer):
    r = httpx.request("PATCH", f"{server.base_url}/{coffer}/k")
    assert_error(r, 405, "MethodNotAllowed", f"{coffer}/k")
    r = httpx.delete(f"{server.base_url}/{coffer}?lifecycle")
    assert_error(r, 405, "MethodNotAllowed", coffer)
    r = httpx.get(f"{server.base_url}/{coffer}?lifecycle")
    assert_error(r, 401, "AuthFailed", coffer)
    r = httpx.get(f"{server.base_url}/{coffer}")
    assert_error(r, 401, "AuthFailed", coffer)
    r = httpx.get(f"{server.base_url}/")
    assert_error(r, 401, "AuthFailed", "")  # GetService: no resource


def test_policy_subresource_with_a_value_is_the_same(client, coffer):
    r = client.get(f"/{coffer}", params={"policy": "x"})
    assert r.status_code == 200
    assert r.json() == {"Statement": [], "version": "2.0"}


# -- Request ids ----------------------------------------------------------------------------------

def test_request_and_trace_ids_are_unique(client, account, coffer):
    missing = fresh_name(account.app_id, "missing")
    responses = []
    for _ in range(5):
        responses += [client.get("/"), client.get(f"/{coffer}"),
                      client.get(f"/{missing}"), client.head(f"/{coffer}/none"),
                      client.request("PATCH", "/")]
    ids = [r.headers["x-cdcs-request-id"] for r in responses]
    assert len(set(ids)) == len(ids)
    traces = [r.headers["x-cdcs-trace-id"] for r in responses if r.status_code >= 400]
    assert len(traces) == 15
    assert len(set(traces) | set(ids)) == len(traces) + len(ids)
    for r in responses:
        assert_common(r)
        if r.status_code < 400:
            assert "x-cdcs-trace-id" not in r.headers
            assert "x-cdcs-error-code" not in r.headers


# -- Property: GetCoffer pagination against a model of S3 listing ---------------------------------

ALPHABET = ["/", "a", "b", "é", "中"]


def _random_keys(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    keys: set[str] = set()
    while len(keys) < count:
        key = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 6)))
        if not key.startswith("/"):
            keys.add(key)
    return sorted(keys)


MODEL_KEYS = _random_keys(20240521, 60)


@pytest.fixture(scope="module")
def model_coffer(client, account):
    return filled_coffer(client, account, "model", MODEL_KEYS)


def model_listing(keys: list[str], prefix: str, delimiter: str,
                  marker: str) -> list[tuple[str, str]]:
    """S3 listing: keys under the prefix, rolled up at the first delimiter after the prefix
    into common prefixes, in UTF-8 byte order, strictly after the marker."""
    entries: set[tuple[str, str]] = set()
    for key in keys:
        if not key.startswith(prefix):
            continue
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut >= 0:
            entries.add(("prefix", key[:cut + len(delimiter)]))
        else:
            entries.add(("key", key))
    return sorted((e for e in entries if e[1].encode() > marker.encode()),
                  key=lambda e: e[1].encode())


_text = st.text(alphabet=st.sampled_from(ALPHABET), max_size=4)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.one_of(_text, st.sampled_from(MODEL_KEYS).map(lambda k: k[:2]))
    .filter(lambda p: not p.startswith("/")),
    delimiter=st.one_of(st.just(""), st.sampled_from(["/", "a", "é", "中", "/a", "b/"])),
    marker=st.one_of(st.just(""), st.sampled_from(MODEL_KEYS), _text),
    max_keys=st.one_of(st.integers(1, 8), st.just(1000)),
)
def test_listing_matches_model(client, model_coffer, prefix, delimiter, marker, max_keys):
    expected_all = model_listing(MODEL_KEYS, prefix, delimiter, marker)
    got: list[tuple[str, str]] = []
    for _ in range(len(expected_all) + 2):
        params = {"prefix": prefix, "delimiter": delimiter, "marker": marker,
                  "max-keys": str(max_keys)}
        keys, prefixes, truncated, next_marker = _page(client.get(f"/{model_coffer}",
                                                                  params=params))
        assert keys == sorted(keys, key=str.encode)
        assert prefixes == sorted(prefixes, key=str.encode)
        page = sorted([("key", k) for k in keys] + [("prefix", p) for p in prefixes],
                      key=lambda e: e[1].encode())
        remaining = model_listing(MODEL_KEYS, prefix, delimiter, marker)
        assert page == remaining[:max_keys]
        assert truncated == (len(remaining) > max_keys)
        got += page
        if not truncated:
            break
        assert next_marker == page[-1][1]
        marker = next_marker
    assert got == expected_all
    assert len({e[1] for e in got}) == len(got)
