"""Access control over HTTP against real server processes: the three policy operations on the
wire, the evaluation of coffer policies for every operation of api.md and every kind of
identity, GetService filtering, ObjectAlreadyExists, ip and date conditions (with and without
a trusted proxy, and over IPv6), and the AlreadyLock of concurrent policy writes."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import secrets
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from datacoffer import signing
from tests.conftest import Account
from tests.serverproc import ServerProcess, SignedClient
from tests.test_identities import assert_error, client_for, coffer_names, unique_uin
from tests.test_signing import host_of, sign_for

EMPTY = b'{"Statement": [], "version": "2.0"}'
DATA = b"bytes the policy guards"
PAST = "2020-01-01T00:00:00Z"
FUTURE = "2999-12-31T23:59:59Z"
LIMIT = 20 * 1024
#: a lifecycle rule (api.md 8-9) and its Content-MD5
RULE = b'{"Rule": [{"Expiration": {"Days": 30}}]}'
RULE_MD5 = base64.b64encode(hashlib.md5(RULE).digest()).decode()


# -- documents ---------------------------------------------------------------------------------


def principal(owner_uin: str, uin: str) -> str:
    return f"qcs::cam::uin/{owner_uin}:uin/{uin}"


def resource(app_id: str, coffer: str, pattern: str = "*", region: str = "") -> str:
    return f"qcs::cdcs:{region}:uid/{app_id}:{coffer}/{pattern}"


def statement(principals: list[str], effect: str, actions: list[str], resources: list[str],
              condition: dict[str, Any] | None = None) -> dict[str, Any]:
    """One statement in canonical form (as GetCofferPolicy shows it)."""
    st: dict[str, Any] = {"Principal": {"qcs": principals}, "Effect": effect,
                          "Action": actions, "Resource": resources}
    if condition is not None:
        st["Condition"] = condition
    return st


def document(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"version": "2.0", "Statement": list(statements)}


def fresh(app_id: str, stem: str = "ac") -> str:
    return f"{stem}{secrets.token_hex(4)}-{app_id}"


def put_policy(c: SignedClient, coffer: str, body: bytes | dict[str, Any]) -> httpx.Response:
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return c.put(f"/{coffer}", params={"policy": ""}, content=content,
                 headers={"Content-Type": "application/json"})


def set_policy(c: SignedClient, coffer: str, *statements: dict[str, Any]) -> dict[str, Any]:
    doc = document(*statements)
    r = put_policy(c, coffer, doc)
    assert r.status_code == 200, r.text
    return doc


def get_policy(c: SignedClient, coffer: str) -> httpx.Response:
    return c.get(f"/{coffer}", params={"policy": ""})


def delete_policy(c: SignedClient, coffer: str) -> httpx.Response:
    return c.delete(f"/{coffer}", params={"policy": ""})


def policy_now(c: SignedClient, coffer: str) -> Any:
    r = get_policy(c, coffer)
    assert r.status_code == 200, r.text
    return json.loads(r.content)


def message(r: httpx.Response) -> str:
    return ET.fromstring(r.content).findtext("Message") or ""


def ordered_keys(raw: bytes) -> list[list[str]]:
    """The key order of every JSON object in `raw`, depth first."""
    seen: list[list[str]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen.append([k for k, _ in pairs])
        return dict(pairs)

    json.loads(raw, object_pairs_hook=hook)
    return seen


# -- identities --------------------------------------------------------------------------------


@dataclass
class Who:
    """An identity other than the owner's root: its principal, its client, and whether it
    belongs to the owning account."""

    label: str
    principal: str
    client: SignedClient
    same_account: bool


def make_sub(server: ServerProcess, parent: Account, label: str = "sub",
             same_account: bool = True) -> Who:
    """A new sub-account of `parent` (made with the admin command)."""
    uin = unique_uin()
    doc = server.admin("subaccount", "create", "--parent-uin", parent.uin, "--uin", uin)
    return Who(label, principal(parent.uin, uin), client_for(server, doc), same_account)


@pytest.fixture(scope="module")
def identities(server: ServerProcess, account: Account, other: tuple[Account, SignedClient]
               ) -> Iterator[dict[str, Who]]:
    """A sub-account of the shared account, another account's root and a sub-account of
    that other account."""
    acc, oc = other
    own = make_sub(server, account, "own-sub")
    foreign = make_sub(server, acc, "other-sub", same_account=False)
    yield {"own-sub": own, "other-root": Who("other-root", principal(acc.uin, acc.uin), oc, False),
           "other-sub": foreign}
    own.client.close()
    foreign.client.close()


# -- operations --------------------------------------------------------------------------------


def _nothing(owner: SignedClient, coffer: str, key: str) -> None:
    return None


def _stored(owner: SignedClient, coffer: str, key: str) -> None:
    r = owner.put(f"/{coffer}/{key}", content=DATA)
    assert r.status_code == 200, r.text


def _initiated(owner: SignedClient, coffer: str, key: str) -> str:
    r = owner.request("POST", f"/{coffer}/{key}", params={"uploads": ""})
    assert r.status_code == 200, r.text
    return json.loads(r.content)["UploadId"]


def _with_part(owner: SignedClient, coffer: str, key: str) -> tuple[str, str]:
    upload_id = _initiated(owner, coffer, key)
    r = owner.put(f"/{coffer}/{key}", params={"partNumber": "1", "uploadId": upload_id},
                  content=DATA)
    assert r.status_code == 200, r.text
    return upload_id, r.headers["ETag"]


def _ruled(owner: SignedClient, coffer: str, key: str) -> None:
    r = _put_rule(owner, coffer, key, None)
    assert r.status_code == 200, r.text


def _put_rule(c: SignedClient, coffer: str, key: str, state: Any) -> httpx.Response:
    return c.put(f"/{coffer}", params={"lifecycle": ""}, content=RULE,
                 headers={"Content-MD5": RULE_MD5})


def _complete(c: SignedClient, coffer: str, key: str, state: tuple[str, str]
              ) -> httpx.Response:
    upload_id, etag = state
    body = (f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag>"
            "</Part></CompleteMultipartUpload>")
    return c.request("POST", f"/{coffer}/{key}", params={"uploadId": upload_id}, content=body)


@dataclass(frozen=True)
class Op:
    """One operation of api.md: how the owner prepares it, how a caller does it, and the
    status of success."""

    action: str
    level: str  #: "service", "coffer" or "object"
    prepare: Callable[[SignedClient, str, str], Any]
    call: Callable[[SignedClient, str, str, Any], httpx.Response]
    status: int = 200

    def resource(self, coffer: str, key: str) -> str:
        return f"{coffer}/{key}" if self.level == "object" else coffer

    def attempt(self, owner: SignedClient, c: SignedClient, coffer: str, key: str
                ) -> httpx.Response:
        return self.call(c, coffer, key, self.prepare(owner, coffer, key))


OPS = [
    Op("GetService", "service", _nothing, lambda c, co, k, s: c.get("/")),
    Op("GetCoffer", "coffer", _nothing, lambda c, co, k, s: c.get(f"/{co}")),
    Op("DeleteCoffer", "coffer", _nothing, lambda c, co, k, s: c.delete(f"/{co}"), 204),
    Op("PutCofferLifecycle", "coffer", _nothing, _put_rule),
    Op("GetCofferLifecycle", "coffer", _ruled,
       lambda c, co, k, s: c.get(f"/{co}", params={"lifecycle": ""})),
    Op("PutObject", "object", _nothing,
       lambda c, co, k, s: c.put(f"/{co}/{k}", content=DATA)),
    Op("GetObject", "object", _stored, lambda c, co, k, s: c.get(f"/{co}/{k}")),
    Op("CheckObject", "object", _stored, lambda c, co, k, s: c.head(f"/{co}/{k}")),
    Op("InitiateMultipartUpload", "object", _nothing,
       lambda c, co, k, s: c.request("POST", f"/{co}/{k}", params={"uploads": ""})),
    Op("UploadPart", "object", _initiated,
       lambda c, co, k, s: c.put(f"/{co}/{k}", params={"partNumber": "1", "uploadId": s},
                                 content=DATA)),
    Op("ListParts", "object", _initiated,
       lambda c, co, k, s: c.get(f"/{co}/{k}", params={"uploadId": s})),
    Op("CompleteMultipartUpload", "object", _with_part, _complete),
    Op("AbortMultipartUpload", "object", _initiated,
       lambda c, co, k, s: c.delete(f"/{co}/{k}", params={"uploadId": s}), 204),
    Op("ListMultipartUploads", "coffer", _nothing,
       lambda c, co, k, s: c.get(f"/{co}", params={"uploads": ""})),
]


def expect(op: Op, r: httpx.Response, coffer: str, key: str, allowed: bool) -> None:
    """`r` is the success of `op`, or its PolicyCheckFailed refusal (for GetService: the
    coffer is listed, or left out)."""
    if op.action == "GetService":
        assert (coffer in coffer_names(r)) == allowed
    elif allowed:
        assert r.status_code == op.status, r.text
        if op.action == "GetObject":
            assert r.content == DATA
        if op.action == "GetCoffer":
            assert ET.fromstring(r.content).findtext("Name") == coffer
        if op.action in ("PutObject", "UploadPart"):
            assert r.headers["ETag"].startswith('"')
        if op.action == "PutCofferLifecycle":
            assert r.content == b""
        if op.action == "GetCofferLifecycle":
            assert r.content == RULE
    else:
        assert_error(r, 401, "PolicyCheckFailed", op.resource(coffer, key))


def action(name: str) -> str:
    return f"name/cdcs:{name}"


# -- 1. the policy operations on the wire ------------------------------------------------------


def test_put_get_delete_round_trip(client, account, coffer, identities):
    sub = identities["own-sub"]
    r = get_policy(client, coffer)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert r.content == EMPTY
    r = delete_policy(client, coffer)  # none set: still 200, empty
    assert (r.status_code, r.content) == (200, b"")
    doc = document(statement([sub.principal], "allow", [action("GetObject")],
                             [resource(account.app_id, coffer)]))
    r = put_policy(client, coffer, doc)
    assert (r.status_code, r.content) == (200, b"")
    r = get_policy(client, coffer)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert json.loads(r.content) == doc
    r = delete_policy(client, coffer)
    assert (r.status_code, r.content) == (200, b"")
    assert get_policy(client, coffer).content == EMPTY


def test_canonical_form_of_an_odd_cased_document(client, account, coffer, identities):
    sub = identities["own-sub"]
    res = resource(account.app_id, coffer, "docs/*")
    odd = {"VERSION": "2.0", "statement": [{
        "PRINCIPAL": {"QCS": sub.principal}, "eFFect": "ALLOW",
        "action": "Name/CDCS:getObject", "RESOURCE": res,
        "condition": {"IP_Not_Equal": {" QCS:IP ": "10.0.0.7/24"},
                      "Date_Greater_Than": {"qcs:current_time  ": [PAST]}}}]}
    r = put_policy(client, coffer, odd)
    assert (r.status_code, r.content) == (200, b"")
    r = get_policy(client, coffer)
    assert r.headers["Content-Type"] == "application/json"
    assert json.loads(r.content) == document(statement(
        [sub.principal], "allow", ["Name/CDCS:getObject"], [res],
        {"ip_not_equal": {"qcs:ip": ["10.0.0.7/24"]},
         "date_greater_than": {"qcs:current_time": [PAST]}}))
    assert ordered_keys(r.content) == [
        ["qcs"], ["qcs:ip"], ["qcs:current_time"], ["ip_not_equal", "date_greater_than"],
        ["Principal", "Effect", "Action", "Resource", "Condition"], ["version", "Statement"]]
    # and it is in force as written
    _stored(client, coffer, "docs/a")
    assert sub.client.get(f"/{coffer}/docs/a").content == DATA
    assert_error(sub.client.head(f"/{coffer}/docs/a"), 401, "PolicyCheckFailed",
                 f"{coffer}/docs/a")


def _raw_query(c: SignedClient, method: str, coffer: str, query: str,
               content: bytes | None = None) -> httpx.Response:
    """A request whose query string is exactly `query` (e.g. a bare `policy`), signed as the
    server reads it."""
    name, _, value = query.partition("=")
    # (a SignedClient has the base_url and the key that sign_for looks for)
    fields = sign_for(c, c, method, f"/{coffer}", {name: value})
    return c.http.request(method, f"/{coffer}?{query}", content=content,
                          headers={"Authorization": signing.authorization_header(fields)})


def test_policy_with_or_without_a_value(client, account, coffer, identities):
    sub = identities["own-sub"]
    doc = document(statement([sub.principal], "allow", [action("GetCoffer")],
                             [resource(account.app_id, coffer, "")]))
    r = _raw_query(client, "PUT", coffer, "policy", json.dumps(doc).encode())
    assert (r.status_code, r.content) == (200, b""), r.text
    bare, valued = (_raw_query(client, "GET", coffer, q) for q in ("policy", "policy="))
    assert bare.status_code == valued.status_code == 200
    assert json.loads(bare.content) == json.loads(valued.content) == doc
    assert sub.client.get(f"/{coffer}").status_code == 200
    r = _raw_query(client, "DELETE", coffer, "policy")
    assert (r.status_code, r.content) == (200, b"")
    assert _raw_query(client, "GET", coffer, "policy=").content == EMPTY
    assert_error(sub.client.get(f"/{coffer}"), 401, "PolicyCheckFailed", coffer)


POLICY_CALLS = {
    "put": lambda c, co: put_policy(c, co, document()),
    "get": get_policy,
    "delete": delete_policy,
}


@pytest.mark.parametrize("call", POLICY_CALLS)
def test_error_order_of_the_policy_operations(server, client, account, coffer, identities,
                                              call):
    do = POLICY_CALLS[call]
    missing = fresh(account.app_id, "nx")
    wrong = SignedClient(server.base_url, account.secret_id, "x" * 32)
    try:
        # a bad signature first, even for a missing coffer
        assert_error(do(wrong, missing), 401, "AuthFailed", missing)
        # a missing coffer is 404 for everybody, before the owner-only check
        for c in (client, *(w.client for w in identities.values())):
            assert_error(do(c, missing), 404, "NoSuchCoffer", missing)
        # an existing coffer: anybody but the owner's root is refused
        for who in identities.values():
            assert_error(do(who.client, coffer), 401, "PolicyCheckFailed", coffer)
    finally:
        wrong.close()


def test_method_not_allowed_comes_first(server, coffer):
    r = httpx.post(f"{server.base_url}/{coffer}?policy", content=b"{}")
    assert_error(r, 405, "MethodNotAllowed", coffer)


def _padded(doc: dict[str, Any], size: int) -> bytes:
    """`doc` as JSON padded with trailing white space to exactly `size` bytes."""
    raw = json.dumps(doc).encode()
    return raw + b" " * (size - len(raw))


def _format_cases() -> dict[str, tuple[Callable[[str, str, str], bytes], str]]:
    """name -> (body of (app_id, coffer, principal), fragment the message must hold)."""
    def doc(app_id: str, coffer: str, who: str, act: str = "GetObject",
            res: str | None = None) -> bytes:
        return json.dumps(document(statement(
            [who], "allow", [action(act)], [res or resource(app_id, coffer)]))).encode()

    return {
        "invalid-json": (lambda a, c, p: b'{"version": "2.0", "Statement": [', "not valid JSON"),
        "another-coffer": (lambda a, c, p: doc(a, c, p, res=resource(a, f"zz{c}")),
                           "another coffer"),
        "unknown-action": (lambda a, c, p: doc(a, c, p, "FlyObject"), "names no operation"),
        "head-object": (lambda a, c, p: doc(a, c, p, "HeadObject"), "CheckObject"),
        "policy-action": (lambda a, c, p: doc(a, c, p, "PutCofferPolicy"), "cannot be granted"),
        "over-20-kib": (lambda a, c, p: _padded(json.loads(doc(a, c, p)), LIMIT + 1), "20 KiB"),
    }


FORMAT_CASES = _format_cases()


@pytest.mark.parametrize("case", FORMAT_CASES)
def test_refused_document_leaves_the_policy(client, account, coffer, identities, case):
    sub = identities["own-sub"]
    before = set_policy(client, coffer, statement(
        [sub.principal], "allow", [action("GetCoffer")], [resource(account.app_id, coffer)]))
    body, fragment = FORMAT_CASES[case]
    r = put_policy(client, coffer, body(account.app_id, coffer, sub.principal))
    assert_error(r, 409, "PolicyFormatCheckFailed", coffer)
    assert fragment in message(r)
    assert policy_now(client, coffer) == before
    assert sub.client.get(f"/{coffer}").status_code == 200


def test_twenty_kib_exactly_is_accepted(client, account, coffer, identities):
    sub = identities["own-sub"]
    doc = document(statement([sub.principal], "allow", [action("GetCoffer")],
                             [resource(account.app_id, coffer)]))
    r = put_policy(client, coffer, _padded(doc, LIMIT))
    assert (r.status_code, r.content) == (200, b""), r.text
    assert policy_now(client, coffer) == doc


# -- raw sockets -------------------------------------------------------------------------------


def open_put_policy(server: ServerProcess, acct: Any, coffer: str, length: int,
                    head: bytes) -> socket.socket:
    """A correctly signed PutCofferPolicy that declared `length` body bytes and has sent only
    `head` of them."""
    fields = sign_for(server, acct, "PUT", f"/{coffer}", {"policy": ""})
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall((f"PUT /{coffer}?policy HTTP/1.1\r\nHost: {host_of(server)}\r\n"
                  f"Authorization: {signing.authorization_header(fields)}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
                  ).encode() + head)
    return sock


def finish_put(sock: socket.socket, rest: bytes) -> None:
    """Send the rest of a slow PutCofferPolicy's body; it must succeed (200, empty)."""
    sock.sendall(rest)
    status, headers, answer = read_answer(sock)
    assert (status, answer) == (200, b"")
    assert "x-cdcs-error-code" not in headers


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of the answer on `sock`."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    body = resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def test_declared_length_over_the_limit_is_refused_before_the_body(server, client, account,
                                                                   coffer):
    before = set_policy(client, coffer)
    sock = open_put_policy(server, account, coffer, LIMIT + 1, b"")
    try:
        started = time.monotonic()
        status, headers, body = read_answer(sock)  # no body byte was sent
        assert time.monotonic() - started < 2
    finally:
        sock.close()
    assert status == 409
    assert headers["x-cdcs-error-code"] == "PolicyFormatCheckFailed"
    doc = ET.fromstring(body)
    assert doc.findtext("Resource") == coffer
    assert "20 KiB" in doc.findtext("Message")
    assert policy_now(client, coffer) == before


@pytest.mark.parametrize("who", ["own-sub", "other-root", "other-sub"])
def test_policy_operations_stay_the_owners(client, account, coffer, identities, who):
    me = identities[who]
    before = set_policy(client, coffer, statement(
        [me.principal], "allow", [action("*")], [resource(account.app_id, coffer)]))
    assert me.client.get(f"/{coffer}").status_code == 200  # the grant is in force
    for do in POLICY_CALLS.values():
        assert_error(do(me.client, coffer), 401, "PolicyCheckFailed", coffer)
    assert policy_now(client, coffer) == before


def test_recreated_coffer_has_no_policy(client, account, coffer_name, identities):
    sub = identities["own-sub"]
    client.make_coffer(coffer_name)
    set_policy(client, coffer_name, statement(
        [sub.principal], "allow", [action("*")], [resource(account.app_id, coffer_name)]))
    assert sub.client.get(f"/{coffer_name}").status_code == 200
    r = client.delete(f"/{coffer_name}")
    assert r.status_code == 204, r.text
    assert_error(get_policy(client, coffer_name), 404, "NoSuchCoffer", coffer_name)
    client.make_coffer(coffer_name)
    assert get_policy(client, coffer_name).content == EMPTY
    assert_error(sub.client.get(f"/{coffer_name}"), 401, "PolicyCheckFailed", coffer_name)


# -- 2. evaluation for every operation ---------------------------------------------------------


@pytest.mark.parametrize("who", ["own-sub", "other-root", "other-sub"])
@pytest.mark.parametrize("op", OPS, ids=lambda op: op.action)
def test_evaluation(client, account, identities, op, who):
    """No policy, explicit deny, another region, another coffer's policy, a key pattern, and
    a grant of exactly this action, in that order (DeleteCoffer's success comes last)."""
    me = identities[who]
    mine = me.same_account or op.action != "GetService"  # others list their own coffers
    app = account.app_id
    coffer, second = fresh(app), fresh(app)
    client.make_coffer(coffer)
    client.make_coffer(second)

    def grant(target: str, pattern: str = "*", region: str = "") -> dict[str, Any]:
        return statement([me.principal], "allow", [action(op.action)],
                         [resource(app, target, pattern, region)])

    def check(key: str, allowed: bool, target: str = coffer) -> None:
        expect(op, op.attempt(client, me.client, target, key), target, key, allowed)

    check("reports/none", False)
    set_policy(client, coffer, statement([me.principal], "allow", [action("*")],
                                         [resource(app, coffer)]),
               statement([me.principal], "deny", [action(op.action)], [resource(app, coffer)]))
    check("reports/deny", False)
    set_policy(client, coffer, grant(coffer, region="ap-shanghai"))
    check("reports/region", False)
    assert delete_policy(client, coffer).status_code == 200
    set_policy(client, second, grant(second))
    check("reports/second", False)
    check("reports/second", mine, second)  # the same grant opens the coffer it names
    set_policy(client, coffer, grant(coffer, "reports/*"))
    check("other/a", False)
    # coffer-level actions are checked against "<coffer>/", which reports/* does not match
    check("reports/a", mine and op.level == "object")
    set_policy(client, coffer, grant(coffer, region="ap-tianjin"))
    check("reports/exact", mine)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.action)
def test_owner_root_is_always_allowed(client, account, op):
    coffer = fresh(account.app_id)
    client.make_coffer(coffer)
    owner = principal(account.uin, account.uin)
    set_policy(client, coffer, statement([owner], "deny", [action("*")],
                                         [resource(account.app_id, coffer)]))
    expect(op, op.attempt(client, client, coffer, "k"), coffer, "k", True)


@pytest.mark.parametrize("who", ["own-sub", "other-sub"])
def test_put_coffer_stays_root_only(client, account, identities, other, who):
    me = identities[who]
    app = account.app_id if who == "own-sub" else other[0].app_id
    existing = fresh(account.app_id)
    client.make_coffer(existing)
    set_policy(client, existing, statement([me.principal], "allow", [action("*")],
                                           [resource(account.app_id, existing)]))
    new = fresh(app)
    body = json.dumps({"Locations": {"Location": ["ap-tianjin"]}})
    assert_error(me.client.put(f"/{new}", content=body), 401, "PolicyCheckFailed", new)
    if who == "own-sub":
        assert_error(me.client.put(f"/{existing}", content=body), 401, "PolicyCheckFailed",
                     existing)
    assert new not in coffer_names(client.get("/"))


# -- 3. GetService -----------------------------------------------------------------------------


def test_get_service_lists_granted_coffers_only(server, client, account):
    sub = make_sub(server, account)
    try:
        a, b, c = (fresh(account.app_id, "gs") for _ in range(3))
        for name in (a, b, c):
            client.make_coffer(name)
        for name in (a, b):
            set_policy(client, name, statement([sub.principal], "allow", [action("Get*")],
                                               [resource(account.app_id, name, "")]))
        assert coffer_names(sub.client.get("/")) == sorted([a, b])
        set_policy(client, b, statement([sub.principal], "allow", [action("GetService")],
                                        [resource(account.app_id, b)]),
                   statement([sub.principal], "deny", [action("GetService")],
                             [resource(account.app_id, b, "")]))
        assert coffer_names(sub.client.get("/")) == [a]
        # a grant of everything but GetService does not list the coffer
        set_policy(client, c, statement([sub.principal], "allow",
                                        [action("GetCoffer"), action("GetObject")],
                                        [resource(account.app_id, c)]))
        assert coffer_names(sub.client.get("/")) == [a]
        assert sub.client.get(f"/{c}").status_code == 200
    finally:
        sub.client.close()


def test_other_root_lists_only_its_own_coffers(client, account, other):
    acc, oc = other
    ours, theirs = fresh(account.app_id, "gs"), fresh(acc.app_id, "gs")
    client.make_coffer(ours)
    oc.make_coffer(theirs)  # the only coffer this module makes for the other account
    set_policy(client, ours, statement([principal(acc.uin, acc.uin)], "allow",
                                       [action("*")], [resource(account.app_id, ours)]))
    assert oc.get(f"/{ours}").status_code == 200  # granted, but not listed
    assert coffer_names(oc.get("/")) == [theirs]


# -- 4. ObjectAlreadyExists --------------------------------------------------------------------


def test_object_already_exists_by_writer(client, account, coffer, identities):
    sub = identities["own-sub"]
    set_policy(client, coffer, statement([sub.principal], "allow", [action("PutObject")],
                                         [resource(account.app_id, coffer)]))
    r = sub.client.put(f"/{coffer}/by-sub", content=DATA)
    assert r.status_code == 200, r.text
    assert_error(client.put(f"/{coffer}/by-sub", content=b"owner"), 409,
                 "ObjectAlreadyExists", f"{coffer}/by-sub")
    assert_error(sub.client.put(f"/{coffer}/by-sub", content=b"again"), 409,
                 "ObjectAlreadyExistsOwnedByYou", f"{coffer}/by-sub")
    _stored(client, coffer, "by-owner")
    assert_error(sub.client.put(f"/{coffer}/by-owner", content=b"sub"), 409,
                 "ObjectAlreadyExists", f"{coffer}/by-owner")
    assert_error(client.put(f"/{coffer}/by-owner", content=b"again"), 409,
                 "ObjectAlreadyExistsOwnedByYou", f"{coffer}/by-owner")
    assert client.get(f"/{coffer}/by-sub").content == DATA


# -- 5. ip conditions --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(client: SignedClient, account: Account, identities: dict[str, Who]
            ) -> tuple[str, Who]:
    """A coffer of the shared account holding `doc`, and the sub-account the tests grant."""
    coffer = fresh(account.app_id, "ip")
    client.make_coffer(coffer)
    _stored(client, coffer, "doc")
    return coffer, identities["own-sub"]


def grant_get(client: SignedClient, app_id: str, coffer: str, who: Who,
              condition: dict[str, Any]) -> None:
    set_policy(client, coffer, statement([who.principal], "allow", [action("GetObject")],
                                         [resource(app_id, coffer)], condition))


def assert_get(c: SignedClient, coffer: str, allowed: bool,
               headers: dict[str, str] | None = None) -> None:
    r = c.get(f"/{coffer}/doc", headers=headers)
    if allowed:
        assert (r.status_code, r.content) == (200, DATA), r.text
    else:
        assert_error(r, 401, "PolicyCheckFailed", f"{coffer}/doc")


@pytest.mark.parametrize(("operator", "value", "xff", "allowed"), [
    ("ip_equal", "127.0.0.1", None, True),
    ("ip_not_equal", "127.0.0.0/8", None, False),
    ("ip_equal", "10.9.9.9", "10.9.9.9", False),
    ("ip_equal", "127.0.0.1", "10.9.9.9", True),
    ("ip_not_equal", "10.9.9.9", "10.9.9.9", True),
], ids=["equal", "not-equal", "forged-xff-not-believed", "forged-xff-peer-counts",
        "forged-xff-not-equal"])
def test_ip_condition_without_trusted_proxy(client, account, guarded, operator, value, xff,
                                            allowed):
    coffer, sub = guarded
    grant_get(client, account.app_id, coffer, sub, {operator: {"qcs:ip": [value]}})
    assert_get(sub.client, coffer, allowed, {"X-Forwarded-For": xff} if xff else None)


@dataclass
class Site:
    """A server of its own: an owner, a sub-account, and a coffer holding `doc`."""

    server: ServerProcess
    app_id: str
    owner: SignedClient
    sub: Who
    coffer: str

    def close(self) -> None:
        self.owner.close()
        self.sub.client.close()
        self.server.stop()


def start_site(base: Path, config: str, server_class: type[ServerProcess] = ServerProcess
               ) -> Site:
    cfg = base / "datacoffer.toml"
    cfg.write_text(config)
    srv = server_class(base / "data", config=cfg)
    srv.start()
    try:
        doc = srv.admin("account", "create", "--app-id", "1250000000", "--uin", "100000000001")
        owner = client_for(srv, doc)
        acct = Account(doc["AppId"], doc["Uin"], doc["SecretId"], doc["SecretKey"])
        sub = make_sub(srv, acct)
        coffer = fresh(acct.app_id, "px")
        owner.make_coffer(coffer)
        _stored(owner, coffer, "doc")
    except BaseException:
        srv.stop()
        raise
    return Site(srv, acct.app_id, owner, sub, coffer)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A server that believes X-Forwarded-For from 127.0.0.1 (and drops a client that sends
    no body bytes for 2 s)."""
    site = start_site(tmp_path_factory.mktemp("proxied"),
                      'trusted_proxies = ["127.0.0.1"]\nbody_timeout = 2\n')
    yield site
    site.close()


@pytest.mark.parametrize(("xff", "operator", "value", "allowed"), [
    ("10.1.2.3", "ip_equal", "10.1.2.0/24", True),
    ("10.1.3.3", "ip_equal", "10.1.2.0/24", False),
    ("10.1.2.3", "ip_not_equal", "10.1.2.0/24", False),
    ("2001:db8::7", "ip_equal", "2001:db8::/32", True),
    ("2001:db9::7", "ip_equal", "2001:db8::/32", False),
    ("[2001:db8::7]:443", "ip_equal", "2001:db8::/32", True),
    ("[2001:db9::7]:443", "ip_equal", "2001:db8::/32", False),
    ("203.0.113.5:8080", "ip_equal", "203.0.113.5", True),
    ("203.0.113.5:8080", "ip_equal", "203.0.113.6", False),
    ("::ffff:10.1.2.3", "ip_equal", "10.1.2.0/24", True),
    ("10.1.2.3, 192.0.2.1, 127.0.0.1", "ip_equal", "10.1.2.0/24", True),
    ("192.0.2.1, 10.1.2.3", "ip_equal", "10.1.2.0/24", False),
    (None, "ip_equal", "127.0.0.1", True),
], ids=["v4-inside", "v4-outside", "v4-not-equal", "v6-inside", "v6-outside",
        "v6-port-inside", "v6-port-outside", "v4-port-inside", "v4-port-outside",
        "v4-mapped", "first-of-many", "only-first-counts", "no-header-peer"])
def test_trusted_proxy_first_hop(proxied, xff, operator, value, allowed):
    grant_get(proxied.owner, proxied.app_id, proxied.coffer, proxied.sub,
              {operator: {"qcs:ip": [value]}})
    assert_get(proxied.sub.client, proxied.coffer, allowed,
               {"X-Forwarded-For": xff} if xff else None)


@pytest.mark.parametrize("hop", ["unknown", "10.1.2.300", "2001:db8::7]:443"])
def test_trusted_proxy_first_hop_not_an_address(proxied, hop):
    grant_get(proxied.owner, proxied.app_id, proxied.coffer, proxied.sub,
              {"ip_equal": {"qcs:ip": ["0.0.0.0/0", "::/0"]}})
    r = proxied.sub.client.get(f"/{proxied.coffer}/doc",
                               headers={"X-Forwarded-For": f"{hop}, 10.1.2.3"})
    assert_error(r, 400, "InvalidArgument", f"{proxied.coffer}/doc")
    assert_get(proxied.sub.client, proxied.coffer, True, {"X-Forwarded-For": "10.1.2.3"})


class V6Server(ServerProcess):
    """A server listening on ::1 only (its TOML config says `host = "::1"`)."""

    @property
    def base_url(self) -> str:
        return f"http://[::1]:{self.port}"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine cannot bind ::1")
def test_ipv6_peer(tmp_path):
    site = start_site(tmp_path, 'host = "::1"\n', V6Server)
    try:
        for operator, value, allowed in [("ip_equal", "::1", True),
                                         ("ip_equal", "::1/128", True),
                                         ("ip_equal", "127.0.0.1", False),
                                         ("ip_not_equal", "::1", False),
                                         ("ip_not_equal", "127.0.0.0/8", True)]:
            grant_get(site.owner, site.app_id, site.coffer, site.sub,
                      {operator: {"qcs:ip": [value]}})
            assert_get(site.sub.client, site.coffer, allowed)
        # no trusted proxy here: a forwarded address is not believed
        grant_get(site.owner, site.app_id, site.coffer, site.sub,
                  {"ip_equal": {"qcs:ip": ["10.1.2.3"]}})
        assert_get(site.sub.client, site.coffer, False, {"X-Forwarded-For": "10.1.2.3"})
    finally:
        site.close()


# -- 6. date conditions ------------------------------------------------------------------------


def _date(op: str, when: str) -> dict[str, Any]:
    return {op: {"qcs:current_time": [when]}}


@pytest.mark.parametrize(("condition", "allowed"), [
    (_date("date_greater_than", PAST), True),
    (_date("date_greater_than_equal", PAST), True),
    (_date("date_less_than", PAST), False),
    (_date("date_not_equal", PAST), True),
    (_date("date_equal", PAST), False),
    (_date("date_less_than_equal", FUTURE), True),
    (_date("date_greater_than", FUTURE), False),
    ({**_date("date_greater_than", PAST), "ip_equal": {"qcs:ip": ["127.0.0.1"]}}, True),
    ({**_date("date_greater_than", PAST), "ip_equal": {"qcs:ip": ["10.0.0.0/8"]}}, False),
    ({**_date("date_less_than", PAST), "ip_equal": {"qcs:ip": ["127.0.0.1"]}}, False),
], ids=["gt-past", "gte-past", "lt-past", "ne-past", "eq-past", "lte-future", "gt-future",
        "and-both-hold", "and-ip-fails", "and-date-fails"])
def test_date_condition(client, account, guarded, condition, allowed):
    coffer, sub = guarded
    grant_get(client, account.app_id, coffer, sub, condition)
    assert_get(sub.client, coffer, allowed)


# -- 7. AlreadyLock ----------------------------------------------------------------------------


def _grant_doc(app_id: str, coffer: str, who: str, pattern: str) -> dict[str, Any]:
    return document(statement([who], "allow", [action("GetObject")],
                              [resource(app_id, coffer, pattern)]))


def test_slow_writer_holds_the_lock(server, client, account, identities):
    who = identities["own-sub"].principal
    coffer, elsewhere = fresh(account.app_id, "lk"), fresh(account.app_id, "lk")
    client.make_coffer(coffer)
    client.make_coffer(elsewhere)
    before = set_policy(client, coffer, statement(
        [who], "allow", [action("GetCoffer")], [resource(account.app_id, coffer)]))
    slow_doc = _grant_doc(account.app_id, coffer, who, "slow/*")
    body = json.dumps(slow_doc).encode()
    sock = open_put_policy(server, account, coffer, len(body), body[:10])
    try:
        time.sleep(0.5)  # the server has read the headers and taken the lock
        started = time.monotonic()
        r = put_policy(client, coffer, _grant_doc(account.app_id, coffer, who, "fast/*"))
        assert_error(r, 409, "AlreadyLock", coffer)
        assert_error(delete_policy(client, coffer), 409, "AlreadyLock", coffer)
        assert time.monotonic() - started < 1
        assert policy_now(client, coffer) == before  # reads are not locked
        other_doc = set_policy(client, elsewhere)  # another coffer's lock is its own
        assert policy_now(client, elsewhere) == other_doc
        finish_put(sock, body[10:])
    finally:
        sock.close()
    assert policy_now(client, coffer) == slow_doc
    after = set_policy(client, coffer)
    assert policy_now(client, coffer) == after


def test_dropped_slow_writer_releases_the_lock(server, client, account, coffer):
    body = json.dumps(document()).encode()
    sock = open_put_policy(server, account, coffer, len(body) + 100, body[:5])
    time.sleep(0.5)
    assert_error(delete_policy(client, coffer), 409, "AlreadyLock", coffer)
    sock.close()
    dropped = time.monotonic()
    while True:
        r = delete_policy(client, coffer)
        if r.status_code == 200 or time.monotonic() - dropped > 2:
            break
        assert_error(r, 409, "AlreadyLock", coffer)
        time.sleep(0.05)
    assert (r.status_code, r.content) == (200, b""), r.text
    assert get_policy(client, coffer).content == EMPTY


def race_writers(server: ServerProcess, account: Account, coffer: str, bodies: list[Any],
                 send: Callable[[SignedClient, str, Any], httpx.Response],
                 record: str) -> list[Any]:
    """Send every body at once, each from its own connection and thread (no retries): each
    answer is 200 with an empty body or 409 AlreadyLock naming `record`; returns the bodies
    that won (at least one)."""
    barrier = threading.Barrier(len(bodies))
    answers: dict[int, httpx.Response] = {}
    clients = [SignedClient(server.base_url, account.secret_id, account.secret_key)
               for _ in bodies]

    def write(i: int) -> None:
        barrier.wait()
        answers[i] = send(clients[i], coffer, bodies[i])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(bodies))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for c in clients:
            c.close()
    assert len(answers) == len(bodies)
    winners = []
    for i, r in sorted(answers.items()):
        if r.status_code == 200:
            assert r.content == b""
            winners.append(bodies[i])
        else:
            assert_error(r, 409, "AlreadyLock", coffer)
            assert record in message(r)
    assert winners
    return winners


def test_threaded_policy_writers(server, client, account, coffer, identities):
    who = identities["own-sub"].principal
    docs = [_grant_doc(account.app_id, coffer, who, f"w{i}/*") for i in range(16)]
    winners = race_writers(server, account, coffer, docs, put_policy, "policy")
    assert policy_now(client, coffer) in winners


def test_stalled_policy_writer_is_dropped_and_releases_the_lock(proxied):
    """A writer whose body has not all arrived within body_timeout (2 s here) is answered
    InvalidArgument, changes nothing, and its lock is free at once."""
    site, coffer = proxied, proxied.coffer
    account = Account(site.app_id, "", site.owner.secret_id, site.owner.secret_key)
    before = get_policy(site.owner, coffer).content
    body = json.dumps(document()).encode()
    sock = open_put_policy(site.server, account, coffer, len(body), body[:5])
    started = time.monotonic()
    time.sleep(0.5)  # (the server takes the lock when it has the request's headers)
    try:
        assert_error(delete_policy(site.owner, coffer), 409, "AlreadyLock", coffer)
        status, headers, answer = read_answer(sock)
    finally:
        sock.close()
    assert 1.5 < time.monotonic() - started < 6
    assert (status, headers["x-cdcs-error-code"]) == (400, "InvalidArgument")
    assert b"The request body did not arrive within 2 seconds." in answer
    assert get_policy(site.owner, coffer).content == before
    r = delete_policy(site.owner, coffer)
    assert (r.status_code, r.content) == (200, b""), r.text


def test_a_policy_without_statements_is_no_policy(client, account, coffer, identities):
    """It grants nothing, so it is kept as no policy: GET shows the one empty document."""
    set_policy(client, coffer, statement([identities["own-sub"].principal], "allow",
                                         [action("GetObject")], [resource(account.app_id,
                                                                           coffer)]))
    r = put_policy(client, coffer, {"Statement": [], "version": "2.0"})
    assert (r.status_code, r.content) == (200, b""), r.text
    assert get_policy(client, coffer).content == EMPTY
