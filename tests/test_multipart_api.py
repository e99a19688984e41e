"""Wire shape of the multipart operations (api.md 13-18) and their errors (errors.md).

InitiateMultipartUpload, UploadPart, ListParts, AbortMultipartUpload, ListMultipartUploads,
against a real server (CompleteMultipartUpload: tests/test_multipart_complete.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from datacoffer import signing
from tests.conftest import UIN
from tests.serverproc import ServerProcess, SignedClient
from tests.test_api_coffers import (
    ISO_MS,
    RFC1123,
    assert_common,
    assert_error,
    iso_ms,
    now_ms,
    xml_tree,
)

REGION = "ap-tianjin"
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
EMPTY_MD5 = hashlib.md5(b"").hexdigest()
UPLOADS = {"uploads": ""}


# -- helpers --------------------------------------------------------------------------------------

def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def initiate_raw(client: SignedClient, coffer: str, key: str, **headers: str) -> httpx.Response:
    return client.request("POST", f"/{coffer}/{key}", params=UPLOADS, headers=headers)


def initiate(client: SignedClient, coffer: str, key: str, **headers: str) -> str:
    r = initiate_raw(client, coffer, key, **headers)
    assert r.status_code == 200, r.text
    return r.json()["UploadId"]


def put_part(client: SignedClient, coffer: str, key: str, upload_id: str, number: int | str,
             data: bytes, **headers: str) -> httpx.Response:
    return client.put(f"/{coffer}/{key}", params={"partNumber": str(number),
                                                  "uploadId": upload_id},
                      content=data, headers=headers)


def upload_part(client: SignedClient, coffer: str, key: str, upload_id: str, number: int,
                data: bytes) -> str:
    r = put_part(client, coffer, key, upload_id, number, data)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == f'"{md5_hex(data)}"'
    return r.headers["etag"]


def list_parts(client: SignedClient, coffer: str, key: str, upload_id: str,
               **params: str) -> httpx.Response:
    return client.get(f"/{coffer}/{key}", params={"uploadId": upload_id, **params})


def parts_of(r: httpx.Response) -> list[tuple[int, str, int]]:
    """(PartNumber, ETag, Size) of each Part of a 200 ListParts answer."""
    assert r.status_code == 200, r.text
    found = []
    for tag, children in xml_tree(r)[1]:
        if tag == "Part":
            fields = dict(children)
            assert list(fields) == ["PartNumber", "LastModified", "ETag", "Size"]
            assert ISO_MS.fullmatch(fields["LastModified"])
            found.append((int(fields["PartNumber"]), fields["ETag"], int(fields["Size"])))
    return found


def abort(client: SignedClient, coffer: str, key: str, upload_id: str) -> httpx.Response:
    return client.delete(f"/{coffer}/{key}", params={"uploadId": upload_id})


def list_uploads(client: SignedClient, coffer: str, *, slash: bool = False,
                 **params: str) -> httpx.Response:
    path = f"/{coffer}/" if slash else f"/{coffer}"
    return client.get(path, params={**UPLOADS, **params})


def uploads_of(r: httpx.Response) -> list[tuple[str, str]]:
    assert r.status_code == 200, r.text
    return [(u["Key"], u["UploadId"]) for u in r.json()["Upload"]]


def principal(account_uin: str, uin: str) -> dict[str, str]:
    return {"ID": f"qcs::cam::uin/{account_uin}:uin/{uin}", "DisplayName": uin}


def send_raw(client: SignedClient, method: str, decoded_path: str, raw_url: str,
             params: dict[str, str], **kw) -> httpx.Response:
    """Send `raw_url` as is (path and query), signed for the decoded path and `params`."""
    host = client.base_url.split("://", 1)[1]
    fields = signing.sign(client.secret_id, client.secret_key, method, decoded_path, params,
                          {"host": host})
    headers = {**kw.pop("headers", {}), "Authorization": signing.authorization_header(fields)}
    return client.http.request(method, raw_url, headers=headers, **kw)


def missing_name(account) -> str:
    """A coffer name of the shared account that does not exist."""
    return f"missing{secrets.token_hex(4)}-{account.app_id}"


def region_files(data_dir: Path) -> set[Path]:
    """Every file under the regions' blobs/ and tmp/ directories."""
    found = set()
    for sub in ("blobs", "tmp"):
        for root in (data_dir / "regions").glob(f"*/{sub}"):
            found |= {p for p in root.rglob("*") if p.is_file()}
    return found


@pytest.fixture(scope="module")
def sub(server, account):
    """A sub-account of the shared account, and its client."""
    uin = str(400000000000 + secrets.randbelow(99999999999))
    doc = server.admin("subaccount", "create", "--parent-uin", UIN, "--uin", uin)
    c = SignedClient(server.base_url, doc["SecretId"], doc["SecretKey"])
    yield uin, c
    c.close()


# -- 13. InitiateMultipartUpload ------------------------------------------------------------------

def test_initiate_answer(client, coffer):
    for key in ("big.bin", "dir/中文 é+%.txt"):
        r = initiate_raw(client, coffer, key)
        assert r.status_code == 200, r.text
        assert_common(r, region=REGION)
        assert r.headers["content-type"] == "application/json"
        assert "x-cdcs-error-code" not in r.headers
        assert "x-cdcs-trace-id" not in r.headers
        doc = json.loads(r.content.decode("utf-8"))
        assert list(doc) == ["Coffer", "Key", "UploadId"]
        assert doc["Coffer"] == coffer
        assert doc["Key"] == key
        assert UPLOAD_ID.fullmatch(doc["UploadId"]), doc


def test_uploads_sub_resource_with_or_without_value(client, coffer):
    """`?uploads` and `?uploads=` are the same sub-resource (api.md)."""
    r = send_raw(client, "POST", f"/{coffer}/bare", f"/{coffer}/bare?uploads", UPLOADS)
    assert r.status_code == 200, r.text
    upload_id = r.json()["UploadId"]
    for raw in (f"/{coffer}?uploads", f"/{coffer}/?uploads", f"/{coffer}?uploads=x"):
        params = {"uploads": "x"} if raw.endswith("=x") else UPLOADS
        r = send_raw(client, "GET", f"/{coffer}/" if "/?" in raw else f"/{coffer}", raw,
                     params)
        assert uploads_of(r) == [("bare", upload_id)], raw


def test_upload_ids_are_fresh_128_bit_values(client, coffer):
    ids = [initiate(client, coffer, f"k{i}") for i in range(16)]
    assert len(set(ids)) == len(ids)
    assert all(UPLOAD_ID.fullmatch(i) for i in ids)
    # 16 random 128-bit values: every hex digit position varies
    assert all(len({i[pos] for i in ids}) > 1 for pos in range(32))


def test_initiate_content_type_limit(client, coffer):
    r = initiate_raw(client, coffer, "ct", **{"Content-Type": "a/" + "b" * 255})
    message = assert_error(r, 400, "InvalidArgument", f"{coffer}/ct")
    assert "256" in message
    # the refusal did not take the key
    r = initiate_raw(client, coffer, "ct", **{"Content-Type": "a/" + "b" * 254})
    assert r.status_code == 200, r.text
    r = initiate_raw(client, coffer, "typed", **{"Content-Type": "image/png"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("key", ["k" * 851, "中" * 284, "a\x01b", "a\x7fb", "a\nb", "\x00"])
def test_initiate_bad_key(client, coffer, key):
    resource = f"{coffer}/" + re.sub("[\x00-\x1f\x7f]", lambda m: f"%{ord(m.group()):02X}", key)
    assert_error(initiate_raw(client, coffer, key), 400, "InvalidObjectKey", resource)


@pytest.mark.parametrize(("key", "raw"), [
    ("/a", "/a"), ("a/./b", "a/%2E/b"), ("a/../b", "a/%2E%2E/b"), ("..", "%2E%2E"),
])
def test_initiate_bad_key_segments(client, coffer, key, raw):
    r = send_raw(client, "POST", f"/{coffer}/{key}", f"/{coffer}/{raw}?uploads", UPLOADS)
    assert_error(r, 400, "InvalidObjectKey", f"{coffer}/{key}")


def test_initiate_key_rule_limits_accepted(client, coffer):
    for key in ("k" * 850, "中" * 283 + "k", ".hidden", "a//b"):
        assert initiate_raw(client, coffer, key).status_code == 200, key


def test_initiate_in_missing_coffer(client, coffer_name):
    assert_error(initiate_raw(client, coffer_name, "k"), 404, "CofferNotFound",
                 f"{coffer_name}/k")
    # request syntax is checked before the coffer's existence
    assert_error(initiate_raw(client, coffer_name, "a\x01"), 400, "InvalidObjectKey",
                 f"{coffer_name}/a%01")


def test_initiate_on_stored_object(client, coffer):
    assert client.put(f"/{coffer}/taken", content=b"stored").status_code == 200
    assert_error(initiate_raw(client, coffer, "taken"), 409, "ObjectAlreadyExistsOwnedByYou",
                 f"{coffer}/taken", region=None)
    assert client.get(f"/{coffer}/taken").content == b"stored"


def test_upload_holds_its_key_until_aborted(client, coffer):
    res = f"{coffer}/held"
    upload_id = initiate(client, coffer, "held")
    assert_error(initiate_raw(client, coffer, "held"), 409, "ObjectAlreadyUploading", res)
    assert_error(client.put(f"/{coffer}/held", content=b"x"), 409, "ObjectAlreadyUploading",
                 res)
    # no object there yet
    assert_error(client.get(f"/{coffer}/held"), 404, "ObjectNotExists", res)
    assert_error(client.head(f"/{coffer}/held"), 404, "ObjectNotExists", res)
    assert "<Key>held</Key>" not in client.get(f"/{coffer}").text
    # the refused attempts left the upload as it was
    assert uploads_of(list_uploads(client, coffer)) == [("held", upload_id)]

    r = abort(client, coffer, "held", upload_id)
    assert r.status_code == 204, r.text
    # free again: a new upload may take it, and after that one's abort, a PutObject
    again = initiate(client, coffer, "held")
    assert again != upload_id
    assert abort(client, coffer, "held", again).status_code == 204
    r = client.put(f"/{coffer}/held", content=b"final")
    assert r.status_code == 200, r.text
    assert client.get(f"/{coffer}/held").content == b"final"
    assert_error(initiate_raw(client, coffer, "held"), 409, "ObjectAlreadyExistsOwnedByYou", res)
    # and the coffer still takes new uploads
    assert UPLOAD_ID.fullmatch(initiate(client, coffer, "next"))


def test_other_identities_are_refused(client, coffer, other, sub):
    """Deny by default: sub-accounts and other accounts have no rights without a policy."""
    upload_id = initiate(client, coffer, "mine")
    upload_part(client, coffer, "mine", upload_id, 1, b"part")
    acc, theirs = other
    for c in (sub[1], theirs):
        res = f"{coffer}/mine"
        assert_error(initiate_raw(c, coffer, "new"), 401, "PolicyCheckFailed", f"{coffer}/new")
        assert_error(put_part(c, coffer, "mine", upload_id, 1, b"evil"), 401,
                     "PolicyCheckFailed", res)
        assert_error(list_parts(c, coffer, "mine", upload_id), 401, "PolicyCheckFailed", res)
        assert_error(abort(c, coffer, "mine", upload_id), 401, "PolicyCheckFailed", res)
        assert_error(list_uploads(c, coffer), 401, "PolicyCheckFailed", coffer)
        # authorization comes after request syntax and after the coffer's existence
        assert_error(put_part(c, coffer, "mine", upload_id, 0, b"x"), 400, "InvalidArgument",
                     res)
        missing = f"nothere{secrets.token_hex(3)}-{acc.app_id}"
        assert_error(initiate_raw(c, missing, "k"), 404, "CofferNotFound", f"{missing}/k")
        assert_error(list_uploads(c, missing), 404, "CofferNotFound", missing)
    # nothing changed
    assert parts_of(list_parts(client, coffer, "mine", upload_id)) == [
        (1, f'"{md5_hex(b"part")}"', 4)]
    assert uploads_of(list_uploads(client, coffer)) == [("mine", upload_id)]


# -- 14. UploadPart -------------------------------------------------------------------------------

def test_upload_part_answer(client, coffer):
    upload_id = initiate(client, coffer, "p")
    data = b"part one bytes"
    r = put_part(client, coffer, "p", upload_id, 1, data)
    assert r.status_code == 200, r.text
    assert r.content == b""
    assert r.headers["content-length"] == "0"
    assert r.headers["etag"] == f'"{md5_hex(data)}"'
    assert_common(r, region=REGION)
    assert "x-cdcs-error-code" not in r.headers
    if "last-modified" in r.headers:
        assert RFC1123.fullmatch(r.headers["last-modified"])


def test_parts_in_any_order_and_replaced(client, coffer):
    upload_id = initiate(client, coffer, "order")
    data = {n: f"part {n} ".encode() * n for n in (3, 1, 10000, 2)}
    for n, body in data.items():
        upload_part(client, coffer, "order", upload_id, n, body)
    expected = [(n, f'"{md5_hex(data[n])}"', len(data[n])) for n in sorted(data)]
    assert parts_of(list_parts(client, coffer, "order", upload_id)) == expected

    newer = b"the replacement of part two, longer than before"
    upload_part(client, coffer, "order", upload_id, 2, newer)
    got = parts_of(list_parts(client, coffer, "order", upload_id))
    assert [p[0] for p in got] == [1, 2, 3, 10000]
    assert got[1] == (2, f'"{md5_hex(newer)}"', len(newer))
    assert got[0] == expected[0]
    assert got[2:] == expected[2:]


def test_zero_byte_part(client, coffer):
    upload_id = initiate(client, coffer, "zero")
    r = put_part(client, coffer, "zero", upload_id, 1, b"")
    assert r.request.headers["content-length"] == "0"
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == f'"{EMPTY_MD5}"'
    assert parts_of(list_parts(client, coffer, "zero", upload_id)) == [(1, f'"{EMPTY_MD5}"', 0)]


@pytest.mark.parametrize("number", ["0", "10001", "abc", "", "-1", "1.5", " 1", "99999999999"])
def test_bad_part_number(client, coffer, number):
    upload_id = initiate(client, coffer, "n")
    r = put_part(client, coffer, "n", upload_id, number, b"x")
    assert_error(r, 400, "InvalidArgument", f"{coffer}/n")
    assert parts_of(list_parts(client, coffer, "n", upload_id)) == []


def test_missing_part_number(client, coffer):
    upload_id = initiate(client, coffer, "n")
    r = client.put(f"/{coffer}/n", params={"uploadId": upload_id}, content=b"x")
    assert_error(r, 400, "InvalidArgument", f"{coffer}/n")
    assert parts_of(list_parts(client, coffer, "n", upload_id)) == []


def test_missing_upload_id(client, coffer):
    """A part without its uploadId is refused; it never becomes an (immutable) object."""
    r = client.put(f"/{coffer}/u", params={"partNumber": "1", "uploadId": ""}, content=b"x")
    assert_error(r, 400, "InvalidArgument", f"{coffer}/u")
    r = client.put(f"/{coffer}/u", params={"partNumber": "1"}, content=b"x")
    assert_error(r, 400, "InvalidArgument", f"{coffer}/u")
    assert_error(client.get(f"/{coffer}/u"), 404, "ObjectNotExists", f"{coffer}/u")
    assert client.put(f"/{coffer}/u", content=b"x").status_code == 200


def test_unknown_upload_ids(client, account, coffer):
    upload_id = initiate(client, coffer, "a")
    other_key = initiate(client, coffer, "b")
    second = missing_name(account)
    client.make_coffer(second)
    other_coffer = initiate(client, second, "a")
    res = f"{coffer}/a"
    for wrong in (secrets.token_hex(16), other_key, other_coffer, upload_id.upper(),
                  upload_id + "0", "x"):
        assert_error(put_part(client, coffer, "a", wrong, 1, b"x"), 404, "NoSuchUpload", res)
        assert_error(list_parts(client, coffer, "a", wrong), 404, "NoSuchUpload", res)
        assert_error(abort(client, coffer, "a", wrong), 404, "NoSuchUpload", res)
    # none of those touched the real uploads
    for c, k, u in ((coffer, "a", upload_id), (coffer, "b", other_key),
                    (second, "a", other_coffer)):
        assert parts_of(list_parts(client, c, k, u)) == []
    assert uploads_of(list_uploads(client, coffer)) == [("a", upload_id), ("b", other_key)]
    # the error document in JSON on request, like every error
    r = client.get(f"/{coffer}/a", params={"uploadId": other_key},
                   headers={"Accept": "application/json"})
    assert (r.status_code, r.headers["content-type"]) == (404, "application/json")
    doc = r.json()
    assert (doc["Code"], doc["Resource"]) == ("NoSuchUpload", res)
    assert doc["RequestId"] == r.headers["x-cdcs-request-id"]


@pytest.mark.parametrize(("raw", "decoded"), [
    ("%FF", "\udcff"), ("%00", "\x00"), ("%C3%A9", "é"), ("x" * 300, "x" * 300)])
def test_upload_ids_never_issued(client, coffer, raw, decoded):
    """Upload IDs that could never have been issued are simply unknown, not a failure."""
    upload_id = initiate(client, coffer, "a")
    path, res = f"/{coffer}/a", f"{coffer}/a"
    r = send_raw(client, "PUT", path, f"{path}?partNumber=1&uploadId={raw}",
                 {"partNumber": "1", "uploadId": decoded}, content=b"x")
    assert_error(r, 404, "NoSuchUpload", res)
    r = send_raw(client, "GET", path, f"{path}?uploadId={raw}", {"uploadId": decoded})
    assert_error(r, 404, "NoSuchUpload", res)
    r = send_raw(client, "DELETE", path, f"{path}?uploadId={raw}", {"uploadId": decoded})
    assert_error(r, 404, "NoSuchUpload", res)
    assert uploads_of(list_uploads(client, coffer)) == [("a", upload_id)]


def test_upload_part_in_missing_coffer(client, coffer_name):
    # (the coffer_name fixture is a name not created yet)
    r = put_part(client, coffer_name, "k", secrets.token_hex(16), 1, b"x")
    assert_error(r, 404, "CofferNotFound", f"{coffer_name}/k")
    # syntax first
    r = put_part(client, coffer_name, "k", secrets.token_hex(16), 0, b"x")
    assert_error(r, 400, "InvalidArgument", f"{coffer_name}/k")


def test_part_content_md5(client, coffer):
    upload_id = initiate(client, coffer, "md5")
    data = b"verified part"
    r = put_part(client, coffer, "md5", upload_id, 1, data, **{"Content-MD5": md5_b64(data)})
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == f'"{md5_hex(data)}"'

    r = put_part(client, coffer, "md5", upload_id, 2, data,
                 **{"Content-MD5": md5_b64(b"other")})
    message = assert_error(r, 400, "InvalidArgument", f"{coffer}/md5", region=None)
    assert "MD5" in message
    for bad in ("not base64!", base64.b64encode(b"short").decode(), ""):
        r = put_part(client, coffer, "md5", upload_id, 3, data, **{"Content-MD5": bad})
        assert_error(r, 400, "InvalidArgument", f"{coffer}/md5")
    # a wrong MD5 on a re-upload leaves the earlier part in place
    r = put_part(client, coffer, "md5", upload_id, 1, b"replacement",
                 **{"Content-MD5": md5_b64(b"not it")})
    assert_error(r, 400, "InvalidArgument", f"{coffer}/md5")
    assert parts_of(list_parts(client, coffer, "md5", upload_id)) == [
        (1, f'"{md5_hex(data)}"', len(data))]


def test_part_without_content_length(client, coffer):
    upload_id = initiate(client, coffer, "chunked")

    def body() -> Iterator[bytes]:
        yield b"chunked "
        yield b"bytes"

    r = put_part(client, coffer, "chunked", upload_id, 1, body())  # type: ignore[arg-type]
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    message = assert_error(r, 400, "InvalidArgument", f"{coffer}/chunked")
    assert "Content-Length" in message
    assert parts_of(list_parts(client, coffer, "chunked", upload_id)) == []


@pytest.mark.parametrize(("number_name", "id_name"), [
    ("partnumber", "uploadid"), ("PartNumber", "UploadId"), ("PARTNUMBER", "UPLOADID")])
def test_query_names_case_insensitive(client, coffer, number_name, id_name):
    upload_id = initiate(client, coffer, "case")
    r = client.put(f"/{coffer}/case", params={number_name: "4", id_name: upload_id},
                   content=b"four")
    assert r.status_code == 200, r.text
    r = client.get(f"/{coffer}/case", params={id_name: upload_id})
    assert parts_of(r) == [(4, f'"{md5_hex(b"four")}"', 4)]
    r = client.delete(f"/{coffer}/case", params={id_name: upload_id})
    assert r.status_code == 204, r.text


# -- 15. ListParts --------------------------------------------------------------------------------

def test_list_parts_shape(client, account, coffer):
    key = "shape.bin"
    upload_id = initiate(client, coffer, key)
    owner = ("Owner", [("ID", f"qcs::cam::uin/{account.uin}:uin/{account.uin}"),
                       ("DisplayName", account.uin)])
    initiator = ("Initiator", [("ID", f"qcs::cam::uin/{account.uin}:uin/{account.uin}"),
                               ("DisplayName", account.uin)])
    head = [("Coffer", coffer), ("EncodingType", ""), ("Key", key), ("UploadId", upload_id),
            owner, initiator]

    r = list_parts(client, coffer, key, upload_id)
    assert r.status_code == 200, r.text
    assert_common(r, region=REGION)
    assert xml_tree(r) == ("ListPartsResult", [
        *head, ("PartNumberMarker", "0"), ("MaxCount", "1000"), ("IsTruncated", "false")])

    before = now_ms()
    one, two = b"1" * 11, b"2" * 22
    upload_part(client, coffer, key, upload_id, 2, two)
    upload_part(client, coffer, key, upload_id, 1, one)
    after = now_ms()
    r = list_parts(client, coffer, key, upload_id)
    got = xml_tree(r)
    stamps = [dict(c[1])["LastModified"] for c in got[1] if c[0] == "Part"]
    assert len(stamps) == 2
    for stamp in stamps:
        iso_ms(stamp, before, after)
    assert got == ("ListPartsResult", [
        *head, ("PartNumberMarker", "0"),
        ("Part", [("PartNumber", "1"), ("LastModified", stamps[0]),
                  ("ETag", f'"{md5_hex(one)}"'), ("Size", "11")]),
        ("Part", [("PartNumber", "2"), ("LastModified", stamps[1]),
                  ("ETag", f'"{md5_hex(two)}"'), ("Size", "22")]),
        ("MaxCount", "1000"), ("IsTruncated", "false")])
    assert stamps[0] >= stamps[1]  # part 1 was uploaded after part 2

    r = list_parts(client, coffer, key, upload_id, **{"max-count": "1"})
    got = xml_tree(r)
    assert [c[0] for c in got[1]] == [
        "Coffer", "EncodingType", "Key", "UploadId", "Owner", "Initiator", "PartNumberMarker",
        "Part", "NextMarker", "MaxCount", "IsTruncated"]
    tail = got[1][-3:]
    assert tail == [("NextMarker", "1"), ("MaxCount", "1"), ("IsTruncated", "true")]


def test_list_parts_pagination(client, coffer):
    upload_id = initiate(client, coffer, "pages")
    data = {n: f"p{n}".encode() * n for n in range(1, 8)}
    for n in (5, 1, 7, 3, 2, 6, 4):
        upload_part(client, coffer, "pages", upload_id, n, data[n])
    expected = [(n, f'"{md5_hex(data[n])}"', len(data[n])) for n in range(1, 8)]
    assert parts_of(list_parts(client, coffer, "pages", upload_id)) == expected

    for size_name, marker_name in (("max-count", "marker"),
                                   ("max-parts", "part-number-marker")):
        seen: list[tuple[int, str, int]] = []
        marker, pages = "0", 0
        while True:
            params = {size_name: "3"}
            if marker != "0" or pages % 2:  # the first page also without any marker
                params[marker_name] = marker
            r = list_parts(client, coffer, "pages", upload_id, **params)
            pages += 1
            got = parts_of(r)
            fields = dict(c for c in xml_tree(r)[1] if c[0] != "Part")
            assert fields["PartNumberMarker"] == marker
            assert fields["MaxCount"] == "3"
            seen += got
            if fields["IsTruncated"] == "false":
                assert "NextMarker" not in fields
                break
            assert fields["IsTruncated"] == "true"
            assert fields["NextMarker"] == str(got[-1][0])
            assert len(got) == 3
            marker = fields["NextMarker"]
        assert seen == expected
        assert pages == 3

    # a page that ends exactly at the last part is not truncated
    r = list_parts(client, coffer, "pages", upload_id, **{"max-count": "7"})
    fields = dict(c for c in xml_tree(r)[1] if c[0] != "Part")
    assert (fields["IsTruncated"], "NextMarker" in fields) == ("false", False)
    r = list_parts(client, coffer, "pages", upload_id, marker="4", **{"max-count": "3"})
    fields = dict(c for c in xml_tree(r)[1] if c[0] != "Part")
    assert parts_of(r) == expected[4:]
    assert (fields["IsTruncated"], "NextMarker" in fields) == ("false", False)
    # past the end: empty
    for marker in ("7", "10000"):
        r = list_parts(client, coffer, "pages", upload_id, marker=marker)
        assert parts_of(r) == []
    # the alias alone
    r = list_parts(client, coffer, "pages", upload_id, **{"max-parts": "2"})
    assert [p[0] for p in parts_of(r)] == [1, 2]


@pytest.mark.parametrize("name", ["max-count", "max-parts"])
@pytest.mark.parametrize("value", ["0", "1001", "x", "", "-1", "2.5"])
def test_list_parts_bad_max_count(client, coffer, name, value):
    upload_id = initiate(client, coffer, "mc")
    r = list_parts(client, coffer, "mc", upload_id, **{name: value})
    assert_error(r, 400, "InvalidArgument", f"{coffer}/mc")


@pytest.mark.parametrize("name", ["marker", "part-number-marker"])
@pytest.mark.parametrize("value", ["x", "-1", "10001", "1.5"])
def test_list_parts_bad_marker(client, coffer, name, value):
    upload_id = initiate(client, coffer, "mk")
    r = list_parts(client, coffer, "mk", upload_id, **{name: value})
    assert_error(r, 400, "InvalidArgument", f"{coffer}/mk")


def test_list_parts_limits_accepted(client, coffer):
    upload_id = initiate(client, coffer, "lim")
    for params in ({"max-count": "1"}, {"max-count": "1000"}, {"max-parts": "1000"},
                   {"marker": "0"}, {"part-number-marker": "10000"}):
        assert list_parts(client, coffer, "lim", upload_id, **params).status_code == 200, params


def test_list_parts_url_encoding(client, account, coffer):
    key = "dir/a b é+%.txt"
    upload_id = initiate(client, coffer, key)
    upload_part(client, coffer, key, upload_id, 1, b"x")
    r = list_parts(client, coffer, key, upload_id, **{"encoding-type": "url"})
    assert r.status_code == 200, r.text
    got = xml_tree(r)
    fields = dict(c for c in got[1] if c[0] != "Part")
    assert fields["EncodingType"] == "url"
    assert fields["Key"] == "dir/a%20b%20%C3%A9%2B%25.txt"
    assert [c[0] for c in got[1]] == [
        "Coffer", "EncodingType", "Key", "UploadId", "Owner", "Initiator", "PartNumberMarker",
        "Part", "MaxCount", "IsTruncated"]
    # without it, the key as it is
    got = xml_tree(list_parts(client, coffer, key, upload_id))
    assert dict(c for c in got[1] if c[0] != "Part")["Key"] == key

    for bad in ("xml", "URL", "none"):
        r = list_parts(client, coffer, key, upload_id, **{"encoding-type": bad})
        assert_error(r, 400, "InvalidArgument", f"{coffer}/{key}")


def test_list_parts_errors(client, account, coffer):
    coffer_name = missing_name(account)
    upload_id = initiate(client, coffer, "le")
    assert_error(list_parts(client, coffer, "le", ""), 400, "InvalidArgument", f"{coffer}/le")
    assert_error(list_parts(client, coffer, "other", upload_id), 404, "NoSuchUpload",
                 f"{coffer}/other")
    assert_error(list_parts(client, coffer_name, "le", upload_id), 404, "CofferNotFound",
                 f"{coffer_name}/le")
    assert_error(list_parts(client, coffer_name, "le", upload_id, **{"max-count": "0"}), 400,
                 "InvalidArgument", f"{coffer_name}/le")
    assert_error(list_parts(client, coffer, "a\x01", upload_id), 400, "InvalidObjectKey",
                 f"{coffer}/a%01")


# -- 17. AbortMultipartUpload ---------------------------------------------------------------------

def test_abort_answer_and_after(client, coffer):
    upload_id = initiate(client, coffer, "ab")
    upload_part(client, coffer, "ab", upload_id, 1, b"doomed")
    r = abort(client, coffer, "ab", upload_id)
    assert r.status_code == 204, r.text
    assert_common(r, region=REGION)
    assert r.content == b""
    assert r.headers.get("content-length", "0") == "0"
    assert "x-cdcs-error-code" not in r.headers

    res = f"{coffer}/ab"
    assert_error(list_parts(client, coffer, "ab", upload_id), 404, "NoSuchUpload", res)
    assert_error(put_part(client, coffer, "ab", upload_id, 2, b"late"), 404, "NoSuchUpload",
                 res)
    assert_error(abort(client, coffer, "ab", upload_id), 404, "NoSuchUpload", res)
    assert uploads_of(list_uploads(client, coffer)) == []


def test_abort_errors(client, account, coffer):
    coffer_name = missing_name(account)
    upload_id = initiate(client, coffer, "ae")
    res = f"{coffer}/ae"
    assert_error(abort(client, coffer, "ae", ""), 400, "InvalidArgument", res)
    # without uploadId, DELETE of an object is not an operation at all
    assert_error(client.delete(f"/{coffer}/ae"), 405, "MethodNotAllowed", res)
    assert_error(abort(client, coffer_name, "ae", upload_id), 404, "CofferNotFound",
                 f"{coffer_name}/ae")
    assert_error(abort(client, coffer, "a\x7f", upload_id), 400, "InvalidObjectKey",
                 f"{coffer}/a%7F")
    assert uploads_of(list_uploads(client, coffer)) == [("ae", upload_id)]


@dataclass
class Own:
    server: ServerProcess
    client: SignedClient
    coffer: str


OWN_APP_ID = "1250000077"
PART_LIMIT = 1000


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Own]:
    """A server of this module alone (so its region files can be counted exactly), with a
    small object size limit."""
    srv = ServerProcess(tmp_path_factory.mktemp("multipart") / "data",
                        env={"DATACOFFER_MAX_OBJECT_SIZE": str(PART_LIMIT)})
    srv.start()
    client = srv.new_client(OWN_APP_ID, "100000000077")
    coffer = f"mp-{OWN_APP_ID}"
    client.make_coffer(coffer)
    yield Own(srv, client, coffer)
    client.close()
    srv.stop()


def test_abort_removes_every_part_file(own):
    c, coffer, data_dir = own.client, own.coffer, own.server.data_dir
    baseline = region_files(data_dir)
    upload_id = initiate(c, coffer, "files")
    for n in (1, 2, 3):
        upload_part(c, coffer, "files", upload_id, n, bytes([n]) * 100)
    upload_part(c, coffer, "files", upload_id, 2, b"replaced")  # the old part 2 file goes
    upload_part(c, coffer, "files", upload_id, 4, b"")
    added = region_files(data_dir) - baseline
    assert len(added) == 4, added
    assert all(p.parent.parent.name == "blobs" for p in added), added
    assert {p.stat().st_size for p in added} == {100, 8, 0}

    assert abort(c, coffer, "files", upload_id).status_code == 204
    assert region_files(data_dir) == baseline
    # the key is free again
    assert c.put(f"/{coffer}/files", content=b"now an object").status_code == 200


def test_refused_parts_leave_no_file(own):
    c, coffer, data_dir = own.client, own.coffer, own.server.data_dir
    upload_id = initiate(c, coffer, "refused")
    baseline = region_files(data_dir)
    r = put_part(c, coffer, "refused", upload_id, 1, b"data", **{"Content-MD5": md5_b64(b"x")})
    assert_error(r, 400, "InvalidArgument", f"{coffer}/refused")
    assert region_files(data_dir) == baseline
    assert abort(c, coffer, "refused", upload_id).status_code == 204


def test_part_size_limit(own):
    c, coffer = own.client, own.coffer
    upload_id = initiate(c, coffer, "limit")
    r = put_part(c, coffer, "limit", upload_id, 1, b"x" * (PART_LIMIT + 1))
    assert_error(r, 400, "InvalidArgument", f"{coffer}/limit")
    upload_part(c, coffer, "limit", upload_id, 1, b"x" * PART_LIMIT)
    assert parts_of(list_parts(c, coffer, "limit", upload_id)) == [
        (1, f'"{md5_hex(b"x" * PART_LIMIT)}"', PART_LIMIT)]
    assert abort(c, coffer, "limit", upload_id).status_code == 204


def test_uploads_survive_a_restart(own):
    c, coffer = own.client, own.coffer
    upload_id = initiate(c, coffer, "durable")
    upload_part(c, coffer, "durable", upload_id, 1, b"kept")
    own.server.stop()
    own.server.start()
    assert parts_of(list_parts(c, coffer, "durable", upload_id)) == [
        (1, f'"{md5_hex(b"kept")}"', 4)]
    assert ("durable", upload_id) in uploads_of(list_uploads(c, coffer))
    assert_error(c.put(f"/{coffer}/durable", content=b"x"), 409, "ObjectAlreadyUploading",
                 f"{coffer}/durable")
    assert abort(c, coffer, "durable", upload_id).status_code == 204


# -- 18. ListMultipartUploads ---------------------------------------------------------------------

#: Created in this order; listed in UTF-8 byte order.
LISTED_KEYS = ["b", "a/2", "é", "a/1", "B", "z", "a b"]


@pytest.fixture
def listed(client, coffer) -> tuple[str, dict[str, str], int, int]:
    """A coffer with an upload for each of LISTED_KEYS (and one aborted): (coffer, key ->
    upload ID, ms before, ms after)."""
    before = now_ms()
    ids = {key: initiate(client, coffer, key) for key in LISTED_KEYS}
    gone = initiate(client, coffer, "aborted")
    assert abort(client, coffer, "aborted", gone).status_code == 204
    return coffer, ids, before, now_ms()


def by_bytes(keys) -> list[str]:
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def test_list_uploads_shape(client, account, listed):
    coffer, ids, before, after = listed
    r = list_uploads(client, coffer)
    assert r.status_code == 200, r.text
    assert_common(r, region=REGION)
    assert r.headers["content-type"] == "application/json"
    doc = json.loads(r.content.decode("utf-8"))
    assert list(doc) == ["Coffer", "EncodingType", "KeyMarker", "UploadIdMarker",
                         "NextKeyMarker", "NextUploadIdMarker", "Prefix", "MaxUploads",
                         "IsTruncated", "Upload"]
    uploads = doc.pop("Upload")
    assert doc == {"Coffer": coffer, "EncodingType": "", "KeyMarker": "", "UploadIdMarker": "",
                   "NextKeyMarker": "", "NextUploadIdMarker": "", "Prefix": "",
                   "MaxUploads": 1000, "IsTruncated": "false"}
    assert type(doc["MaxUploads"]) is int
    owner = principal(account.uin, account.uin)
    assert [u["Key"] for u in uploads] == by_bytes(LISTED_KEYS)
    assert by_bytes(LISTED_KEYS) == ["B", "a b", "a/1", "a/2", "b", "z", "é"]
    for u in uploads:
        assert list(u) == ["Key", "UploadId", "Initiator", "Owner", "Initiated"]
        iso_ms(u["Initiated"], before, after)
        assert u == {"Key": u["Key"], "UploadId": ids[u["Key"]], "Initiator": owner,
                     "Owner": owner, "Initiated": u["Initiated"]}
    # the same at /<Coffer>/?uploads
    r2 = list_uploads(client, coffer, slash=True)
    assert r2.status_code == 200, r2.text
    assert r2.json() == r.json()


def test_list_uploads_empty(client, coffer):
    r = list_uploads(client, coffer)
    assert r.status_code == 200, r.text
    assert r.json()["Upload"] == []
    assert r.json()["IsTruncated"] == "false"


def test_list_uploads_prefix(client, listed):
    coffer, ids, _, _ = listed
    r = list_uploads(client, coffer, prefix="a/")
    assert uploads_of(r) == [("a/1", ids["a/1"]), ("a/2", ids["a/2"])]
    assert r.json()["Prefix"] == "a/"
    assert [k for k, _ in uploads_of(list_uploads(client, coffer, prefix="a"))] == [
        "a b", "a/1", "a/2"]
    assert uploads_of(list_uploads(client, coffer, prefix="é")) == [("é", ids["é"])]
    assert uploads_of(list_uploads(client, coffer, prefix="A")) == []
    assert uploads_of(list_uploads(client, coffer, prefix="aborted")) == []
    assert uploads_of(list_uploads(client, coffer, prefix="")) == [
        (k, ids[k]) for k in by_bytes(LISTED_KEYS)]


def test_list_uploads_pagination(client, listed):
    coffer, ids, _, _ = listed
    expected = [(k, ids[k]) for k in by_bytes(LISTED_KEYS)]
    for size in (1, 2, 3, 7):
        seen: list[tuple[str, str]] = []
        params: dict[str, str] = {}
        pages = 0
        while True:
            r = list_uploads(client, coffer, **{"max-uploads": str(size)}, **params)
            pages += 1
            doc = r.json()
            got = uploads_of(r)
            assert doc["MaxUploads"] == size
            assert doc["KeyMarker"] == params.get("key-marker", "")
            assert doc["UploadIdMarker"] == params.get("upload-id-marker", "")
            seen += got
            if doc["IsTruncated"] == "false":
                assert (doc["NextKeyMarker"], doc["NextUploadIdMarker"]) == ("", "")
                break
            assert doc["IsTruncated"] == "true"
            assert len(got) == size
            assert (doc["NextKeyMarker"], doc["NextUploadIdMarker"]) == got[-1]
            params = {"key-marker": doc["NextKeyMarker"],
                      "upload-id-marker": doc["NextUploadIdMarker"]}
            assert pages <= len(expected)
        assert seen == expected, size
        assert pages == -(-len(expected) // size)


def test_list_uploads_markers(client, listed):
    coffer, ids, _, _ = listed
    ordered = by_bytes(LISTED_KEYS)
    for i, marker in enumerate(ordered):
        r = list_uploads(client, coffer, **{"key-marker": marker})
        assert [k for k, _ in uploads_of(r)] == ordered[i + 1:], marker
        r = list_uploads(client, coffer, **{"key-marker": marker,
                                            "upload-id-marker": ids[marker]})
        assert [k for k, _ in uploads_of(r)] == ordered[i + 1:], marker
    # a marker between keys, or before all of them
    assert [k for k, _ in uploads_of(list_uploads(client, coffer, **{"key-marker": "a/"}))] == [
        "a/1", "a/2", "b", "z", "é"]
    assert [k for k, _ in uploads_of(list_uploads(client, coffer, **{"key-marker": "A"}))] == [
        k for k in ordered if k > "A"]
    # with a prefix too
    r = list_uploads(client, coffer, prefix="a/", **{"key-marker": "a/1"})
    assert uploads_of(r) == [("a/2", ids["a/2"])]
    # upload-id-marker alone is ignored (as without key-marker there is nothing it qualifies)
    r = list_uploads(client, coffer, **{"upload-id-marker": ids["b"]})
    assert [k for k, _ in uploads_of(r)] == ordered


def test_list_uploads_url_encoding(client, listed):
    coffer, ids, _, _ = listed
    r = list_uploads(client, coffer, prefix="a", **{"encoding-type": "url", "max-uploads": "1",
                                                    "key-marker": "a"})
    doc = r.json()
    assert doc["EncodingType"] == "url"
    assert doc["Prefix"] == "a"
    assert doc["KeyMarker"] == "a"
    assert [u["Key"] for u in doc["Upload"]] == ["a%20b"]
    assert (doc["NextKeyMarker"], doc["NextUploadIdMarker"]) == ("a%20b", ids["a b"])
    assert doc["IsTruncated"] == "true"

    r = list_uploads(client, coffer, prefix="é", **{"encoding-type": "url",
                                                     "key-marker": "a b"})
    doc = r.json()
    assert doc["Prefix"] == "%C3%A9"
    assert doc["KeyMarker"] == "a%20b"
    assert [u["Key"] for u in doc["Upload"]] == ["%C3%A9"]
    r = list_uploads(client, coffer, **{"encoding-type": "url"})
    assert [u["Key"] for u in r.json()["Upload"]] == [
        "B", "a%20b", "a/1", "a/2", "b", "z", "%C3%A9"]
    for bad in ("xml", "URL"):
        assert_error(list_uploads(client, coffer, **{"encoding-type": bad}), 400,
                     "InvalidArgument", coffer)


@pytest.mark.parametrize("prefix", ["/x", "a\x01", "a/../", "../", "./x", "x" * 851])
def test_list_uploads_bad_prefix(client, coffer, prefix):
    assert_error(list_uploads(client, coffer, prefix=prefix), 400, "InvalidObjectPrefix",
                 coffer)


@pytest.mark.parametrize("value", ["0", "1001", "x", "", "-1"])
def test_list_uploads_bad_max_uploads(client, coffer, value):
    assert_error(list_uploads(client, coffer, **{"max-uploads": value}), 400,
                 "InvalidArgument", coffer)
    assert_error(list_uploads(client, coffer, slash=True, **{"max-uploads": value}), 400,
                 "InvalidArgument", coffer)


def test_list_uploads_limits_accepted(client, coffer):
    for value in ("1", "1000"):
        r = list_uploads(client, coffer, **{"max-uploads": value})
        assert r.status_code == 200, r.text
        assert r.json()["MaxUploads"] == int(value)


def test_list_uploads_markers_that_are_not_text(client, coffer):
    """A marker is echoed in the answer: bytes that are not UTF-8 are a bad argument, not a
    server failure."""
    initiate(client, coffer, "a")
    for query, params in (
            ("key-marker=%FF", {"key-marker": "\udcff"}),
            ("key-marker=a%01", {"key-marker": "a\x01"}),
            ("key-marker=a&upload-id-marker=%FF", {"key-marker": "a",
                                                   "upload-id-marker": "\udcff"}),
            ("key-marker=a&upload-id-marker=%00", {"key-marker": "a",
                                                   "upload-id-marker": "\x00"})):
        r = send_raw(client, "GET", f"/{coffer}", f"/{coffer}?uploads&{query}",
                     {**UPLOADS, **params})
        assert_error(r, 400, "InvalidArgument", coffer)
    # an upload-id-marker that names no upload is fine: the key-marker alone counts
    r = list_uploads(client, coffer, **{"key-marker": "", "upload-id-marker": "nope"})
    assert [k for k, _ in uploads_of(r)] == ["a"]


def test_list_uploads_missing_coffer(client, coffer_name):
    assert_error(list_uploads(client, coffer_name), 404, "CofferNotFound", coffer_name)
    assert_error(list_uploads(client, coffer_name, slash=True), 404, "CofferNotFound",
                 coffer_name)
    assert_error(list_uploads(client, coffer_name, **{"max-uploads": "0"}), 400,
                 "InvalidArgument", coffer_name)
    assert_error(list_uploads(client, coffer_name, prefix="/"), 400, "InvalidObjectPrefix",
                 coffer_name)


# -- 4. DeleteCoffer with uploads ----------------------------------------------------------------

def test_delete_coffer_with_upload_in_progress(client, coffer):
    upload_id = initiate(client, coffer, "pending")
    upload_part(client, coffer, "pending", upload_id, 1, b"some")
    message = assert_error(client.delete(f"/{coffer}"), 409, "CofferNotEmpty", coffer)
    assert "upload" in message
    assert parts_of(list_parts(client, coffer, "pending", upload_id)) == [
        (1, f'"{md5_hex(b"some")}"', 4)]
    assert abort(client, coffer, "pending", upload_id).status_code == 204
    r = client.delete(f"/{coffer}")
    assert r.status_code == 204, r.text
    assert_error(client.get(f"/{coffer}"), 404, "NoSuchCoffer", coffer)


# -- routing ------------------------------------------------------------------------------------

def test_methods_not_defined(client, coffer):
    # POST to a key without a sub-resource, POST to a coffer, PUT ?uploads on a coffer
    assert_error(client.request("POST", f"/{coffer}/k"), 405, "MethodNotAllowed", f"{coffer}/k")
    assert_error(client.request("POST", f"/{coffer}", params=UPLOADS), 405, "MethodNotAllowed",
                 coffer)
    assert_error(client.request("DELETE", f"/{coffer}", params=UPLOADS), 405,
                 "MethodNotAllowed", coffer)
    assert_error(client.request("PATCH", f"/{coffer}/k", params={"uploadId": "x"}), 405,
                 "MethodNotAllowed", f"{coffer}/k")
