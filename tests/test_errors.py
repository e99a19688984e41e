"""The error document (XML or JSON by negotiation), its IDs, the code table of errors.md,
InternalError from a real failure, and the order in which checks win."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from datacoffer import SERVER_NAME, signing
from datacoffer.errors import CODES
from tests.conftest import new_account
from tests.serverproc import ServerProcess, SignedClient

#: the specification, beside the repository (as on CI: ../shared/spec/)
SPEC_ERRORS = Path(__file__).resolve().parents[2] / "shared" / "spec" / "errors.md"
FIELDS = ["Code", "Message", "Resource", "RequestId", "TraceId"]
LOCATIONS = json.dumps({"Locations": {"Location": ["ap-tianjin"]}})


# -- helpers -----------------------------------------------------------------------------------


def xml_error(r, status, code, resource):
    """Check an XML error document and its headers; return its fields in document order."""
    assert r.status_code == status, r.text
    assert r.headers["x-cdcs-error-code"] == code
    assert r.headers["content-type"] == "application/xml"
    assert r.content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(r.content)
    assert root.tag == "Error"
    assert root.attrib == {}
    assert [child.tag for child in root] == FIELDS
    assert all(len(child) == 0 for child in root)
    doc = {child.tag: child.text or "" for child in root}
    assert doc["Code"] == code
    assert doc["Resource"] == resource
    assert doc["RequestId"] == r.headers["x-cdcs-request-id"]
    assert doc["TraceId"] == r.headers["x-cdcs-trace-id"]
    return doc


def json_error(r, status, code, resource):
    assert r.status_code == status, r.text
    assert r.headers["x-cdcs-error-code"] == code
    assert r.headers["content-type"] == "application/json"
    pairs = json.loads(r.content, object_pairs_hook=lambda p: p)
    assert [name for name, _ in pairs] == FIELDS
    doc = dict(pairs)
    assert all(isinstance(v, str) for v in doc.values())
    assert doc["Code"] == code
    assert doc["Resource"] == resource
    assert doc["RequestId"] == r.headers["x-cdcs-request-id"]
    assert doc["TraceId"] == r.headers["x-cdcs-trace-id"]
    return doc


def error(r, status, code, resource):
    """Either format, as the response says; HEAD answers carry no body."""
    if r.request.method == "HEAD":
        assert r.status_code == status
        assert r.headers["x-cdcs-error-code"] == code
        assert r.content == b""
        return None
    if r.headers.get("content-type") == "application/json":
        return json_error(r, status, code, resource)
    return xml_error(r, status, code, resource)


class Raw:
    """A signing client that sends no `Accept` unless told to, so defaults can be seen."""

    def __init__(self, server, secret_id, secret_key):
        self.server = server
        self.secret_id, self.secret_key = secret_id, secret_key
        self.http = httpx.Client(base_url=server.base_url, timeout=60)
        del self.http.headers["accept"]

    def __call__(self, method, path, *, params=None, headers=None, content=None,
                 secret_key=None, signed=True, url=None):
        headers = dict(headers or {})
        if signed:
            host = self.server.base_url.split("://", 1)[1]
            fields = signing.sign(self.secret_id, secret_key or self.secret_key, method, path,
                                  params, {"host": host})
            headers["Authorization"] = signing.authorization_header(fields)
        url = url or signing.urlencode(path).replace("%2F", "/")
        return self.http.request(method, url, params=params, headers=headers, content=content)

    def close(self):
        self.http.close()


@pytest.fixture(scope="module")
def raw(server, account):
    c = Raw(server, account.secret_id, account.secret_key)
    yield c
    c.close()


def wait_for_log(server, *needles):
    deadline = time.monotonic() + 10
    while True:
        log = server.log()
        if all(n in log for n in needles) or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


# -- the error document ------------------------------------------------------------------------


def test_xml_by_default(raw, coffer):
    r = raw("GET", f"/{coffer}/photos/a.jpg")
    assert "accept" not in r.request.headers
    doc = xml_error(r, 404, "ObjectNotExists", f"{coffer}/photos/a.jpg")
    assert doc["Message"] == "The specified object does not exist."
    assert re.fullmatch(r"[0-9a-f]{32}", doc["TraceId"])
    assert doc["TraceId"] != doc["RequestId"]
    assert r.headers["content-length"] == str(len(r.content))
    assert r.headers["server"] == SERVER_NAME == "DataCoffer"
    assert "date" in r.headers


@pytest.mark.parametrize(("accept", "fmt"), [
    ("application/json", "json"),
    ("application/json, */*", "json"),
    ("APPLICATION/JSON", "json"),
    ("application/xml;q=0.5, application/json", "json"),
    ("application/xml, application/json;q=0.5", "xml"),
    ("application/xml", "xml"),
    ("*/*", "xml"),
    ("text/html", "xml"),
    ("application/json;q=0", "xml"),
])
def test_negotiation(raw, coffer, accept, fmt):
    r = raw("GET", f"/{coffer}/k", headers={"Accept": accept})
    check = json_error if fmt == "json" else xml_error
    doc = check(r, 404, "ObjectNotExists", f"{coffer}/k")
    assert doc["Message"] == "The specified object does not exist."


def test_ids_are_fresh_and_logged(server, raw, coffer):
    responses = [raw("GET", f"/{coffer}/k") for _ in range(3)]
    responses.append(raw("GET", f"/{coffer}/k", headers={"Accept": "application/json"}))
    docs = [error(r, 404, "ObjectNotExists", f"{coffer}/k") for r in responses]
    trace_ids = {d["TraceId"] for d in docs}
    request_ids = {d["RequestId"] for d in docs}
    assert len(trace_ids) == 4
    assert len(request_ids) == 4
    assert not trace_ids & request_ids
    log = wait_for_log(server, *trace_ids)
    for trace_id in trace_ids:
        line = next(ln for ln in log.splitlines() if trace_id in ln)
        assert "ObjectNotExists" in line
        assert f"{coffer}/k" in line
    # success has a request ID and no error headers
    r = raw("GET", f"/{coffer}")
    assert r.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-cdcs-request-id"])
    assert r.headers["x-cdcs-request-id"] not in request_ids
    assert "x-cdcs-error-code" not in r.headers
    assert "x-cdcs-trace-id" not in r.headers


def test_head_errors_have_headers_and_no_body(server, raw, coffer):
    for accept in (None, "application/json"):
        r = raw("HEAD", f"/{coffer}/k", headers={"Accept": accept} if accept else None)
        assert r.status_code == 404
        assert r.content == b""
        assert r.headers["x-cdcs-error-code"] == "ObjectNotExists"
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-cdcs-trace-id"])
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-cdcs-request-id"])
        assert r.headers.get("content-length", "0") == "0"
        assert r.headers["x-cdcs-trace-id"] in wait_for_log(server, r.headers["x-cdcs-trace-id"])
    r = raw("HEAD", f"/{coffer}/k", signed=False)
    assert r.status_code == 401
    assert r.content == b""
    assert r.headers["x-cdcs-error-code"] == "AuthFailed"


def test_get_service_error_has_empty_resource(raw):
    r = raw("GET", "/", signed=False)
    doc = xml_error(r, 401, "AuthFailed", "")
    assert doc["Message"]
    assert b"<Resource />" in r.content or b"<Resource></Resource>" in r.content


def test_unprintable_key_in_the_document(raw, coffer):
    """A refused key with a control character or bytes that are not UTF-8 still yields a
    well-formed document: those characters are shown percent-encoded."""
    r = raw("GET", f"/{coffer}/bad\x01key")
    xml_error(r, 400, "InvalidObjectKey", f"{coffer}/bad%01key")
    r = raw("GET", f"/{coffer}/bad\x01key", headers={"Accept": "application/json"})
    json_error(r, 400, "InvalidObjectKey", f"{coffer}/bad%01key")
    # undecodable bytes in the path: unsigned, then signed
    r = raw.http.get(f"/{coffer}/x%FFy")
    xml_error(r, 401, "AuthFailed", f"{coffer}/x%FFy")
    r = raw("GET", f"/{coffer}/x\udcffy")
    assert r.request.url.raw_path == f"/{coffer}/x%FFy".encode()
    doc = xml_error(r, 400, "InvalidObjectKey", f"{coffer}/x%FFy")
    assert "UTF-8" in doc["Message"]


def test_a_refused_key_cannot_forge_log_lines(server, raw, coffer):
    """A key with a newline is refused, and the log shows it escaped on one line: a client
    cannot write lines of its own into the operator's log."""
    marker = f"FORGED-{secrets.token_hex(4)}"
    r = raw("GET", f"/{coffer}/a\n{marker} INFO fake entry")
    xml_error(r, 400, "InvalidObjectKey", f"{coffer}/a%0A{marker} INFO fake entry")
    trace = r.headers["x-cdcs-trace-id"]
    time.sleep(0.2)
    lines = [line for line in server.log().splitlines() if marker in line]
    assert lines, "the refusal was not logged"
    assert all(trace in line or "GetObject" in line for line in lines), lines
    assert not any(line.startswith(marker) for line in lines)


# -- the code table ----------------------------------------------------------------------------


def test_codes_match_the_specification():
    rows = re.findall(r"^\| ([A-Za-z]+) \| (\d{3}) \| (.+) \|$", SPEC_ERRORS.read_text(),
                      re.MULTILINE)
    table = {name: int(status) for name, status, _ in rows}
    assert len(rows) == 35
    assert len(table) == 35
    assert {name: code.status for name, code in CODES.items()} == table
    for name, code in CODES.items():
        assert code.name == name
        assert code.message.endswith(".")
        assert len(code.message) > 15


# -- InternalError -----------------------------------------------------------------------------


def test_internal_error_from_a_real_failure(tmp_path):
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    tmp_dir = srv.data_dir / "regions" / "ap-tianjin" / "tmp"
    try:
        c = srv.new_client()
        c.make_coffer("broken-1250000000")
        assert tmp_dir.is_dir()
        shutil.rmtree(tmp_dir)
        tmp_dir.write_bytes(b"not a directory")  # works even for root, unlike chmod

        data = b"precious bytes"
        bodies = []
        for accept in ("application/xml", "application/json"):
            r = c.put("/broken-1250000000/k.txt", content=data, headers={"Accept": accept})
            fields = error(r, 500, "InternalError", "broken-1250000000/k.txt")
            assert fields["Message"] == CODES["InternalError"].message
            bodies.append((r.text, fields["TraceId"]))
        for text, _ in bodies:
            for leak in (str(srv.data_dir), "/tmp", "regions", "Traceback", "Error:",
                         "NotADirectory", "Errno", "File \"", ".py"):
                assert leak not in text, leak

        # nothing became visible, and the failure is in the log under its TraceId
        error(c.head("/broken-1250000000/k.txt"), 404, "ObjectNotExists", "")
        r = c.get("/broken-1250000000")
        assert r.status_code == 200
        assert ET.fromstring(r.content).findall("Contents") == []
        log = wait_for_log(srv, *(t for _, t in bodies))
        for _, trace_id in bodies:
            assert trace_id in log
        assert "NotADirectoryError" in log
        assert c.secret_key not in log

        # repaired, the same key is free and takes the object
        tmp_dir.unlink()
        tmp_dir.mkdir()
        r = c.put("/broken-1250000000/k.txt", content=data)
        assert r.status_code == 200, r.text
        assert r.headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
        r = c.get("/broken-1250000000/k.txt")
        assert r.status_code == 200
        assert r.content == data
        c.close()
    finally:
        if tmp_dir.is_file():
            tmp_dir.unlink()
            tmp_dir.mkdir()
        srv.stop()


# -- which check wins --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other(server):
    """Another account, with one coffer of its own."""
    acct = new_account(server)
    c = SignedClient(server.base_url, acct.secret_id, acct.secret_key)
    name = f"their{secrets.token_hex(4)}-{acct.app_id}"
    c.make_coffer(name)
    c.close()
    return acct, name


def test_route_comes_first(server, coffer):
    base = server.base_url
    r = httpx.delete(f"{base}/{coffer}/k.txt")
    doc = xml_error(r, 405, "MethodNotAllowed", f"{coffer}/k.txt")
    assert "never deleted" in doc["Message"]
    # route before everything: also with a security token, or on a coffer that does not exist
    r = httpx.delete(f"{base}/nope-1/k.txt", headers={"x-cdcs-security-token": "t"})
    xml_error(r, 405, "MethodNotAllowed", "nope-1/k.txt")
    xml_error(httpx.post(f"{base}/{coffer}"), 405, "MethodNotAllowed", coffer)
    xml_error(httpx.request("PATCH", f"{base}/"), 405, "MethodNotAllowed", "")
    xml_error(httpx.put(f"{base}/"), 405, "MethodNotAllowed", "")
    r = httpx.request("PATCH", f"{base}/{coffer}/k.txt", headers={"Accept": "application/json"})
    json_error(r, 405, "MethodNotAllowed", f"{coffer}/k.txt")
    # a lifecycle rule has no DELETE: refused before authentication, while GET and PUT are
    # operations (unsigned: AuthFailed)
    xml_error(httpx.delete(f"{base}/{coffer}?lifecycle"), 405, "MethodNotAllowed", coffer)
    for method in ("GET", "PUT"):
        xml_error(httpx.request(method, f"{base}/{coffer}?lifecycle"), 401, "AuthFailed", coffer)


def test_authentication_before_syntax(raw, coffer):
    long_key = "k" * 851
    # the key is bad indeed ...
    xml_error(raw("GET", f"/{coffer}/{long_key}"), 400, "InvalidObjectKey",
              f"{coffer}/{long_key}")
    # ... but a bad signature is found first
    r = raw("GET", f"/{coffer}/{long_key}", secret_key="x" * 32)
    xml_error(r, 401, "AuthFailed", f"{coffer}/{long_key}")
    r = raw("GET", f"/{coffer}", params={"max-keys": "0"}, secret_key="x" * 32)
    xml_error(r, 401, "AuthFailed", coffer)
    r = raw("PUT", "/BAD_NAME-1", content=LOCATIONS, signed=False)
    xml_error(r, 401, "AuthFailed", "BAD_NAME-1")


def test_whitelist_before_syntax(server, raw, coffer):
    closed = new_account(server, "--not-whitelisted")
    c = Raw(server, closed.secret_id, closed.secret_key)
    try:
        for params in ({"max-keys": "0"}, {"encoding-type": "xml"}):
            xml_error(raw("GET", f"/{coffer}", params=params), 400, "InvalidArgument", coffer)
            xml_error(c("GET", f"/{coffer}", params=params), 401, "ServiceNotOpen", coffer)
        xml_error(c("GET", f"/{coffer}/{'k' * 851}"), 401, "ServiceNotOpen",
                  f"{coffer}/{'k' * 851}")
        xml_error(c("PUT", "/BAD_NAME-1", content=LOCATIONS), 401, "ServiceNotOpen",
                  "BAD_NAME-1")
    finally:
        c.close()


def test_syntax_before_existence(raw, account):
    missing = f"nx{secrets.token_hex(4)}-{account.app_id}"
    for value in ("0", "1001", "abc", "-1", ""):
        r = raw("GET", f"/{missing}", params={"max-keys": value})
        doc = xml_error(r, 400, "InvalidArgument", missing)
        assert "max-keys" in doc["Message"]
    r = raw("GET", f"/{missing}", params={"max-count": "5000"})
    xml_error(r, 400, "InvalidArgument", missing)
    r = raw("GET", f"/{missing}", params={"encoding-type": "base64"})
    xml_error(r, 400, "InvalidArgument", missing)
    r = raw("GET", f"/{missing}", params={"prefix": "/abs"})
    xml_error(r, 400, "InvalidObjectPrefix", missing)
    # dots encoded, so that the client does not remove the segment itself
    r = raw("GET", f"/{missing}/a/../b", url=f"/{missing}/a/%2E%2E/b")
    xml_error(r, 400, "InvalidObjectKey", f"{missing}/a/../b")
    r = raw("PUT", f"/{missing}/k", content=b"")
    xml_error(r, 400, "ObjectEmpty", f"{missing}/k")
    r = raw("PUT", f"/{missing}/k", content=b"abc", headers={"Content-MD5": "nope"})
    xml_error(r, 400, "InvalidArgument", f"{missing}/k")
    # and the control: without the syntax fault, the coffer is missing
    xml_error(raw("GET", f"/{missing}", params={"max-keys": "10"}), 404, "NoSuchCoffer",
              missing)
    xml_error(raw("PUT", f"/{missing}/k", content=b"abc"), 404, "CofferNotFound",
              f"{missing}/k")


def test_existence_before_authorization(raw, other):
    acct, theirs = other
    missing = f"nx{secrets.token_hex(4)}-{acct.app_id}"
    xml_error(raw("GET", f"/{missing}"), 404, "NoSuchCoffer", missing)
    xml_error(raw("DELETE", f"/{missing}"), 404, "NoSuchCoffer", missing)
    xml_error(raw("GET", f"/{missing}/k"), 404, "CofferNotFound", f"{missing}/k")
    xml_error(raw("PUT", f"/{missing}/k", content=b"x"), 404, "CofferNotFound", f"{missing}/k")
    error(raw("HEAD", f"/{missing}/k"), 404, "CofferNotFound", f"{missing}/k")
    # the existing coffer of the other account: authorization refuses
    xml_error(raw("GET", f"/{theirs}"), 401, "PolicyCheckFailed", theirs)
    xml_error(raw("GET", f"/{theirs}/k"), 401, "PolicyCheckFailed", f"{theirs}/k")
    # syntax still comes before authorization
    xml_error(raw("GET", f"/{theirs}", params={"max-keys": "0"}), 400, "InvalidArgument",
              theirs)
    xml_error(raw("PUT", f"/{theirs}/k", content=b""), 400, "ObjectEmpty", f"{theirs}/k")


def test_authorization_before_state(server, client, raw, other, account):
    acct, _ = other
    mine = f"st{secrets.token_hex(4)}-{account.app_id}"
    client.make_coffer(mine)
    assert client.put(f"/{mine}/k", content=b"mine").status_code == 200
    # my own view of the state
    xml_error(raw("PUT", f"/{mine}/k", content=b"again"), 409, "ObjectAlreadyExistsOwnedByYou",
              f"{mine}/k")
    xml_error(raw("DELETE", f"/{mine}"), 409, "CofferNotEmpty", mine)
    # the other account never learns it: it is refused first
    c = Raw(server, acct.secret_id, acct.secret_key)
    try:
        xml_error(c("PUT", f"/{mine}/k", content=b"again"), 401, "PolicyCheckFailed",
                  f"{mine}/k")
        xml_error(c("DELETE", f"/{mine}"), 401, "PolicyCheckFailed", mine)
        xml_error(c("GET", f"/{mine}/missing"), 401, "PolicyCheckFailed", f"{mine}/missing")
        xml_error(c("PUT", f"/{mine}", content=LOCATIONS), 409, "CofferAlreadyExists", mine)
    finally:
        c.close()
    assert client.get(f"/{mine}/k").content == b"mine"
