"""PutCofferLifecycle and GetCofferLifecycle (api.md 8-9) on the wire and through the SDK:
the rule's round trip and exact JSON, the required Content-MD5, every InvalidLifeCycle fault,
the body limit, the order of the checks (the body is request syntax: before the coffer's
existence and the caller's rights), authorization by coffer policies and inline policies of
temporary credentials, and AlreadyLock between concurrent lifecycle writers.

Everything runs against the shared server; raw requests (SignedClient) where the exact first
answer matters, since the SDK retries AlreadyLock.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import tests.test_access_api as access_api
from datacoffer.client import Client, errors
from tests.conftest import Account, new_account
from tests.serverproc import ServerProcess, SignedClient
from tests.test_access_api import (
    Who,
    action,
    delete_policy,
    document,
    finish_put,
    fresh,
    open_put_policy,
    principal,
    put_policy,
    race_writers,
    resource,
    set_policy,
    statement,
)
from tests.test_api_coffers import assert_common, assert_error
from tests.test_tokens import Tmp, issue, policy
from tests.test_tokens import statement as inline_statement

LIFECYCLE = {"lifecycle": ""}
#: the start of every InvalidLifeCycle message
INVALID = "The lifecycle configuration is not valid: "
LIMIT = 64 * 1024
#: the Days every refused request must leave in place
KEPT = 7


# -- helpers -----------------------------------------------------------------------------------


def rule(days: Any) -> bytes:
    """A one-rule body, as api.md shows it."""
    return json.dumps({"Rule": [{"Expiration": {"Days": days}}]}).encode()


def md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def put_raw(c: SignedClient, coffer: str, body: bytes, headers: dict[str, str],
            **kw: Any) -> httpx.Response:
    """A PutCofferLifecycle with exactly these headers (besides Authorization and Host)."""
    return c.put(f"/{coffer}", params=LIFECYCLE, content=body, headers=headers, **kw)


def put_lifecycle(c: SignedClient, coffer: str, body: bytes,
                  headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    """A PutCofferLifecycle with the body's own Content-MD5."""
    return put_raw(c, coffer, body, {"Content-Type": "application/json",
                                     "Content-MD5": md5_b64(body), **(headers or {})}, **kw)


def get_lifecycle(c: SignedClient, coffer: str, **kw: Any) -> httpx.Response:
    return c.get(f"/{coffer}", params=LIFECYCLE, **kw)


def set_rule(c: SignedClient, coffer: str, days: int) -> None:
    r = put_lifecycle(c, coffer, rule(days))
    assert (r.status_code, r.content) == (200, b""), r.text


def assert_rule(c: SignedClient, coffer: str, days: int, region: str = "ap-tianjin",
                **kw: Any) -> None:
    """GetCofferLifecycle answers exactly the rule of `days`."""
    r = get_lifecycle(c, coffer, **kw)
    assert r.status_code == 200, r.text
    assert_common(r, region=region)
    assert r.headers["content-type"] == "application/json"
    assert r.content == rule(days)


def assert_no_rule(c: SignedClient, coffer: str) -> str:
    return assert_error(get_lifecycle(c, coffer), 404, "NoSuchLifecycleConfiguration", coffer,
                        region="ap-tianjin")


def missing(account: Account) -> str:
    """A coffer name of `account` that was never created."""
    return fresh(account.app_id, "nx")


def grant(who: Who, app_id: str, coffer: str, actions: list[str], pattern: str = "*",
          region: str = "") -> dict[str, Any]:
    return statement([who.principal], "allow", [action(a) for a in actions],
                     [resource(app_id, coffer, pattern, region)])


BOTH = ["PutCofferLifecycle", "GetCofferLifecycle"]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ruled(client: SignedClient, account: Account) -> str:
    """A coffer whose rule is KEPT days; only refused requests may touch it."""
    name = fresh(account.app_id, "lr")
    client.make_coffer(name)
    set_rule(client, name, KEPT)
    return name


#: the access tests' module fixture: a sub-account of the shared account, another account's
#: root and a sub-account of that other account (made once for this module too)
identities = access_api.identities


@pytest.fixture(scope="module")
def sub_sdk(server: ServerProcess, identities: dict[str, Who]) -> Iterator[Client]:
    c = identities["own-sub"].client
    with Client(server.base_url, c.secret_id, c.secret_key) as sdk:
        yield sdk


WHO = ["own-sub", "other-root", "other-sub"]


# -- 1. the round trip -------------------------------------------------------------------------


def test_put_then_get(client, coffer):
    assert_no_rule(client, coffer)
    r = put_lifecycle(client, coffer, rule(30))
    assert (r.status_code, r.content) == (200, b""), r.text
    assert_common(r, region="ap-tianjin")
    assert r.headers["content-length"] == "0"
    assert "x-cdcs-error-code" not in r.headers
    assert_rule(client, coffer, 30)


def test_put_again_replaces_the_rule(client, coffer):
    for days in (30, 3650, 1, 365):
        set_rule(client, coffer, days)
        assert_rule(client, coffer, days)


@pytest.mark.parametrize("days", [1, 3650])
def test_bounds_are_accepted(client, coffer, days):
    set_rule(client, coffer, days)
    assert_rule(client, coffer, days)


def _padded(days: int, size: int) -> bytes:
    raw = rule(days)
    return raw + b" " * (size - len(raw))


@pytest.mark.parametrize("body", [
    json.dumps({"Rule": [{"Expiration": {"Days": 42}}]}, indent=4).encode(),
    b'{"\\u0052ule":[{"Expiration":{"Days":42}}]}',
    _padded(42, LIMIT),
], ids=["pretty-printed", "escaped-name", "exactly-64-kib"])
def test_any_json_spelling_is_shown_in_the_one_form(client, coffer, body):
    r = put_lifecycle(client, coffer, body)
    assert (r.status_code, r.content) == (200, b""), r.text
    assert_rule(client, coffer, 42)


def test_subresource_with_a_value_is_the_same(client, coffer):
    body = rule(12)
    r = client.put(f"/{coffer}", params={"lifecycle": "x"}, content=body,
                   headers={"Content-MD5": md5_b64(body)})
    assert (r.status_code, r.content) == (200, b""), r.text
    r = client.get(f"/{coffer}", params={"lifecycle": "anything"})
    assert (r.status_code, r.content) == (200, rule(12))


@pytest.mark.parametrize("method", ["DELETE", "POST"])
def test_no_other_method_on_lifecycle(server, client, ruled, method):
    """A rule cannot be removed, only replaced; the route is refused before authentication."""
    assert_error(client.request(method, f"/{ruled}", params=LIFECYCLE), 405, "MethodNotAllowed",
                 ruled)
    r = httpx.request(method, f"{server.base_url}/{ruled}?lifecycle")
    assert_error(r, 405, "MethodNotAllowed", ruled)
    assert_rule(client, ruled, KEPT)


def test_unsigned_requests_are_refused(server, ruled):
    body = rule(99)
    for r in (httpx.get(f"{server.base_url}/{ruled}?lifecycle"),
              httpx.put(f"{server.base_url}/{ruled}?lifecycle", content=body,
                        headers={"Content-MD5": md5_b64(body)})):
        assert_error(r, 401, "AuthFailed", ruled)


def test_recreated_coffer_has_no_rule(client, coffer_name):
    client.make_coffer(coffer_name)
    set_rule(client, coffer_name, 30)
    r = client.delete(f"/{coffer_name}")
    assert r.status_code == 204, r.text
    assert_error(get_lifecycle(client, coffer_name), 404, "NoSuchCoffer", coffer_name)
    client.make_coffer(coffer_name)
    assert_no_rule(client, coffer_name)


def test_rule_is_per_coffer(client, account):
    a, b = fresh(account.app_id, "lp"), fresh(account.app_id, "lp")
    client.make_coffer(a)
    client.make_coffer(b)
    set_rule(client, a, 5)
    assert_no_rule(client, b)
    set_rule(client, b, 6)
    assert_rule(client, a, 5)
    assert_rule(client, b, 6)


def test_region_of_a_two_location_coffer(client, account):
    """Writes are served by the primary region, reads by the addressed location; both see
    the one rule."""
    name = fresh(account.app_id, "lg")
    client.make_coffer(name, "ap-tianjin", "ap-shanghai")
    shanghai = {"Host": "cdcs.ap-shanghai.example.com"}
    r = put_lifecycle(client, name, rule(8), headers=shanghai)
    assert (r.status_code, r.content) == (200, b""), r.text
    assert_common(r, region="ap-tianjin")
    assert_rule(client, name, 8, "ap-shanghai", headers=shanghai)
    assert_rule(client, name, 8, "ap-tianjin")


# -- 2. Content-MD5 and the body limit ---------------------------------------------------------


@pytest.mark.parametrize("md5", [
    None,
    "",
    "not base64!",
    base64.b64encode(hashlib.md5(rule(99)).digest()[:15]).decode(),
    hashlib.md5(rule(99)).hexdigest(),
    md5_b64(rule(98)),
], ids=["missing", "empty", "not-base64", "15-bytes", "hex-digest", "of-another-body"])
def test_content_md5(client, ruled, md5):
    headers = {"Content-Type": "application/json"}
    if md5 is not None:
        headers["Content-MD5"] = md5
    message = assert_error(put_raw(client, ruled, rule(99), headers), 400, "InvalidArgument",
                           ruled)
    assert "Content-MD5" in message
    assert_rule(client, ruled, KEPT)


def test_body_over_64_kib(client, ruled):
    message = assert_error(put_lifecycle(client, ruled, _padded(99, LIMIT + 1)), 400,
                           "InvalidArgument", ruled)
    assert not message.startswith(INVALID)
    assert_rule(client, ruled, KEPT)


# -- 3. InvalidLifeCycle -----------------------------------------------------------------------


def _doc(value: Any) -> bytes:
    return json.dumps(value).encode()


EXPIRATION = {"Expiration": {"Days": 30}}

#: id -> (body, what the message names)
FAULTS: dict[str, tuple[bytes, str]] = {
    "not-json": (b'{"Rule": [', "JSON"),
    "empty-body": (b"", "JSON"),
    "not-utf8": (rule(30).decode().encode("utf-16"), "JSON"),
    "latin-1": ('{"Rule": [{"Expiration": {"Days": 30}}], "é": 1}'.encode("latin-1"), "JSON"),
    "array": (_doc([EXPIRATION]), "Rule"),
    "string": (_doc("Rule"), "Rule"),
    "no-rule": (_doc({}), "Rule"),
    "rule-not-a-list": (_doc({"Rule": EXPIRATION}), "list"),
    "zero-rules": (_doc({"Rule": []}), "one rule"),
    "two-rules": (_doc({"Rule": [EXPIRATION, {"Expiration": {"Days": 60}}]}), "one rule"),
    "rule-not-an-object": (_doc({"Rule": [30]}), "Expiration"),
    "no-expiration": (_doc({"Rule": [{}]}), "Expiration"),
    "expiration-not-an-object": (_doc({"Rule": [{"Expiration": 30}]}), "Days"),
    "no-days": (_doc({"Rule": [{"Expiration": {}}]}), "Days"),
    "unknown-top-level": (_doc({"Rule": [EXPIRATION], "ID": "r1"}), "'ID'"),
    "unknown-in-rule": (_doc({"Rule": [{**EXPIRATION, "Status": "Enabled"}]}), "'Status'"),
    "unknown-in-expiration": (_doc({"Rule": [{"Expiration": {"Days": 30, "Date": "2030"}}]}),
                              "'Date'"),
    "days-0": (rule(0), "Days"),
    "days-3651": (rule(3651), "Days"),
    "days-negative": (rule(-1), "Days"),
    "days-string": (rule("30"), "Days"),
    "days-fraction": (rule(30.5), "Days"),
    "days-true": (rule(True), "Days"),
    "days-null": (rule(None), "Days"),
    "days-huge": (rule(10 ** 40), "Days"),
}


@pytest.mark.parametrize("case", FAULTS)
def test_invalid_lifecycle(client, ruled, case):
    body, names = FAULTS[case]
    message = assert_error(put_lifecycle(client, ruled, body), 400, "InvalidLifeCycle", ruled)
    assert message.startswith(INVALID), message
    assert names in message[len(INVALID):], message
    assert_rule(client, ruled, KEPT)


# -- 4. the order of the checks ----------------------------------------------------------------


#: a bad request body (or Content-MD5) -> the code it earns
BAD_BODIES: dict[str, tuple[bytes, dict[str, str] | None, str]] = {
    "no-content-md5": (rule(30), {}, "InvalidArgument"),
    "md5-mismatch": (rule(30), {"Content-MD5": md5_b64(b"other")}, "InvalidArgument"),
    "invalid-json": (b"{", None, "InvalidLifeCycle"),
    "days-0": (rule(0), None, "InvalidLifeCycle"),
    "over-64-kib": (_padded(30, LIMIT + 1), None, "InvalidArgument"),
}


def _send_bad(c: SignedClient, coffer: str, case: str) -> httpx.Response:
    body, headers, _ = BAD_BODIES[case]
    if headers is None:
        return put_lifecycle(c, coffer, body)
    return put_raw(c, coffer, body, headers)


@pytest.mark.parametrize("case", BAD_BODIES)
def test_syntax_before_existence_and_rights(client, account, ruled, identities, case):
    """A bad body is 400 on a missing coffer (not 404) and for callers without a grant (not
    401); it changes nothing."""
    code = BAD_BODIES[case][2]
    nowhere = missing(account)
    for c in (client, *(w.client for w in identities.values())):
        assert_error(_send_bad(c, nowhere, case), 400, code, nowhere)
    for who in identities.values():
        assert_error(_send_bad(who.client, ruled, case), 400, code, ruled)
    assert_rule(client, ruled, KEPT)


def test_authentication_and_whitelist_before_syntax(server, account, ruled):
    wrong = SignedClient(server.base_url, account.secret_id, "x" * 32)
    closed = new_account(server, "--not-whitelisted")
    shut = SignedClient(server.base_url, closed.secret_id, closed.secret_key)
    try:
        for case in ("no-content-md5", "invalid-json"):
            assert_error(_send_bad(wrong, ruled, case), 401, "AuthFailed", ruled)
            theirs = missing(closed)
            assert_error(_send_bad(shut, theirs, case), 401, "ServiceNotOpen", theirs)
    finally:
        wrong.close()
        shut.close()


def test_missing_coffer_is_404_for_everybody(client, account, identities):
    nowhere = missing(account)
    for c in (client, *(w.client for w in identities.values())):
        assert_error(put_lifecycle(c, nowhere, rule(30)), 404, "NoSuchCoffer", nowhere)
        assert_error(get_lifecycle(c, nowhere), 404, "NoSuchCoffer", nowhere)


def test_rights_before_the_missing_rule(client, coffer, identities):
    """Without a grant, a coffer without a rule is PolicyCheckFailed, not
    NoSuchLifecycleConfiguration (the caller is not told whether a rule exists)."""
    for who in identities.values():
        assert_error(get_lifecycle(who.client, coffer), 401, "PolicyCheckFailed", coffer)
    assert_no_rule(client, coffer)


# -- 5. who may --------------------------------------------------------------------------------


@pytest.mark.parametrize("who", WHO)
def test_without_a_grant_is_refused(client, account, ruled, identities, who):
    me = identities[who]
    assert_error(put_lifecycle(me.client, ruled, rule(99)), 401, "PolicyCheckFailed", ruled)
    assert_error(get_lifecycle(me.client, ruled), 401, "PolicyCheckFailed", ruled)
    assert_rule(client, ruled, KEPT)


@pytest.mark.parametrize("pattern", ["", "*"], ids=["coffer-slash", "coffer-slash-star"])
@pytest.mark.parametrize("who", WHO)
def test_a_grant_allows_both(client, account, identities, who, pattern):
    me = identities[who]
    name = fresh(account.app_id, "la")
    client.make_coffer(name)
    set_policy(client, name, grant(me, account.app_id, name, BOTH, pattern))
    assert_error(get_lifecycle(me.client, name), 404, "NoSuchLifecycleConfiguration", name)
    r = put_lifecycle(me.client, name, rule(21))
    assert (r.status_code, r.content) == (200, b""), r.text
    assert_rule(me.client, name, 21)
    assert_rule(client, name, 21)


@pytest.mark.parametrize(("actions", "put_ok", "get_ok"), [
    (["PutCofferLifecycle"], True, False),
    (["GetCofferLifecycle"], False, True),
    (["*CofferLifecycle"], True, True),
    (["Get*"], False, True),
    (["PutCoffer", "GetCoffer", "DeleteCoffer"], False, False),
], ids=["put-only", "get-only", "wildcard-both", "get-star", "neighbours"])
def test_each_action_grants_only_itself(client, account, identities, actions, put_ok, get_ok):
    me = identities["own-sub"]
    name = fresh(account.app_id, "la")
    client.make_coffer(name)
    set_rule(client, name, 3)
    st = statement([me.principal], "allow", [action(a) for a in actions],
                   [resource(account.app_id, name)])
    set_policy(client, name, st)
    r = put_lifecycle(me.client, name, rule(4))
    if put_ok:
        assert (r.status_code, r.content) == (200, b""), r.text
    else:
        assert_error(r, 401, "PolicyCheckFailed", name)
    r = get_lifecycle(me.client, name)
    if get_ok:
        assert (r.status_code, r.content) == (200, rule(4 if put_ok else 3)), r.text
    else:
        assert_error(r, 401, "PolicyCheckFailed", name)
    assert_rule(client, name, 4 if put_ok else 3)


def test_explicit_deny_wins(client, account, identities):
    me = identities["own-sub"]
    name = fresh(account.app_id, "ld")
    client.make_coffer(name)
    set_rule(client, name, 3)
    set_policy(client, name, grant(me, account.app_id, name, ["*"]),
               statement([me.principal], "deny", [action("PutCofferLifecycle")],
                         [resource(account.app_id, name, "")]))
    assert_error(put_lifecycle(me.client, name, rule(4)), 401, "PolicyCheckFailed", name)
    assert_rule(me.client, name, 3)
    assert delete_policy(client, name).status_code == 200
    assert_error(get_lifecycle(me.client, name), 401, "PolicyCheckFailed", name)


def test_owner_root_despite_a_deny(client, account, coffer):
    owner = principal(account.uin, account.uin)
    set_policy(client, coffer, statement([owner], "deny", [action("*")],
                                         [resource(account.app_id, coffer)]))
    set_rule(client, coffer, 11)
    assert_rule(client, coffer, 11)


def test_region_of_a_grant(client, account, identities):
    """A grant for ap-shanghai allows a read addressed there, never a write (served by the
    primary, ap-tianjin)."""
    me = identities["own-sub"]
    name = fresh(account.app_id, "lg")
    client.make_coffer(name, "ap-tianjin", "ap-shanghai")
    set_rule(client, name, 2)
    set_policy(client, name, grant(me, account.app_id, name, BOTH, region="ap-shanghai"))
    shanghai = {"Host": "cdcs.ap-shanghai.example.com"}
    assert_rule(me.client, name, 2, "ap-shanghai", headers=shanghai)
    assert_error(get_lifecycle(me.client, name), 401, "PolicyCheckFailed", name)
    for headers in (shanghai, None):
        assert_error(put_lifecycle(me.client, name, rule(5), headers=headers), 401,
                     "PolicyCheckFailed", name)
    assert_rule(client, name, 2)


# -- 6. temporary credentials ------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(client: SignedClient, account: Account, identities: dict[str, Who]) -> str:
    """A coffer (rule: KEPT days) whose policy grants the own sub-account both actions."""
    name = fresh(account.app_id, "lt")
    client.make_coffer(name)
    set_rule(client, name, KEPT)
    set_policy(client, name, grant(identities["own-sub"], account.app_id, name, BOTH))
    return name


def _sdk(server: ServerProcess, tmp: Tmp) -> Client:
    return Client(server.base_url, tmp.secret_id, tmp.secret_key, token=tmp.token)


def _get_only(account: Account, coffer: str) -> str:
    return policy(inline_statement("allow", ["GetCofferLifecycle"], account.app_id,
                                   f"{coffer}/*"))


def test_inline_policy_narrows_the_owners_root(server, client, account, guarded):
    tmp = issue(server, account.uin, "--policy", "-", stdin=_get_only(account, guarded))
    with _sdk(server, tmp) as sdk:
        assert sdk.get_coffer_lifecycle(guarded) == KEPT
        with pytest.raises(errors.PolicyCheckFailed) as caught:
            sdk.put_coffer_lifecycle(guarded, 99)
        assert caught.value.resource == guarded
    assert_rule(client, guarded, KEPT)


def test_sub_account_token_needs_both_policies(server, client, account, guarded, identities):
    """The coffer's policy grants both actions; the token's inline policy only the read."""
    sub_uin = identities["own-sub"].principal.rsplit("/", 1)[1]
    tmp = issue(server, sub_uin, "--policy", "-", stdin=_get_only(account, guarded))
    with _sdk(server, tmp) as sdk:
        assert sdk.get_coffer_lifecycle(guarded) == KEPT
        with pytest.raises(errors.PolicyCheckFailed):
            sdk.put_coffer_lifecycle(guarded, 99)
    # the sub-account's own key, without an inline policy, may write
    r = put_lifecycle(identities["own-sub"].client, guarded, rule(KEPT))
    assert (r.status_code, r.content) == (200, b""), r.text
    assert_rule(client, guarded, KEPT)


# -- 7. AlreadyLock ----------------------------------------------------------------------------


def test_threaded_lifecycle_writers(server, client, account, coffer):
    days = list(range(101, 117))
    winners = race_writers(server, account, coffer, [rule(d) for d in days],
                           put_lifecycle, "lifecycle")
    r = get_lifecycle(client, coffer)
    assert r.status_code == 200, r.text
    assert rule(json.loads(r.content)["Rule"][0]["Expiration"]["Days"]) in winners


def test_policy_write_does_not_lock_the_lifecycle(server, client, account, coffer, identities):
    """A slow PutCofferPolicy holds the coffer's policy lock (a second policy write is
    AlreadyLock), while lifecycle writes on the same coffer go through."""
    doc = document(grant(identities["own-sub"], account.app_id, coffer, ["GetCoffer"]))
    body = json.dumps(doc).encode()
    sock = open_put_policy(server, account, coffer, len(body), body[:10])
    try:
        time.sleep(0.5)  # the server has read the headers and taken the policy lock
        assert_error(put_policy(client, coffer, document()), 409, "AlreadyLock", coffer)
        set_rule(client, coffer, 33)
        assert_rule(client, coffer, 33)
        finish_put(sock, body[10:])
    finally:
        sock.close()
    r = client.get(f"/{coffer}", params={"policy": ""})
    assert json.loads(r.content) == doc
    assert_rule(client, coffer, 33)


# -- 8. the SDK --------------------------------------------------------------------------------


def test_sdk_round_trip(sdk, coffer):
    with pytest.raises(errors.NoSuchLifecycleConfiguration) as caught:
        sdk.get_coffer_lifecycle(coffer)
    err = caught.value
    assert isinstance(err, errors.NotFound)
    assert (err.code, err.status, err.resource) == ("NoSuchLifecycleConfiguration", 404, coffer)
    assert sdk.put_coffer_lifecycle(coffer, 30) is None
    got = sdk.get_coffer_lifecycle(coffer)
    assert type(got) is int
    assert got == 30
    sdk.put_coffer_lifecycle(coffer, 3650)
    assert sdk.get_coffer_lifecycle(coffer) == 3650


@pytest.mark.parametrize("days", [0, 3651])
def test_sdk_days_out_of_range(sdk, ruled, days):
    with pytest.raises(errors.InvalidLifeCycle) as caught:
        sdk.put_coffer_lifecycle(ruled, days)
    assert isinstance(caught.value, errors.InvalidRequest)
    assert caught.value.resource == ruled
    assert sdk.get_coffer_lifecycle(ruled) == KEPT


SDK_CALLS: dict[str, Callable[[Client, str], Any]] = {
    "put": lambda c, name: c.put_coffer_lifecycle(name, 30),
    "get": lambda c, name: c.get_coffer_lifecycle(name),
}


@pytest.mark.parametrize("call", SDK_CALLS)
def test_sdk_missing_coffer(sdk, account, call):
    nowhere = missing(account)
    with pytest.raises(errors.NoSuchCoffer) as caught:
        SDK_CALLS[call](sdk, nowhere)
    assert caught.value.resource == nowhere


def test_sdk_sub_account(client, sdk, sub_sdk, account, identities, coffer):
    for do in SDK_CALLS.values():
        with pytest.raises(errors.PolicyCheckFailed) as caught:
            do(sub_sdk, coffer)
        assert caught.value.resource == coffer
    set_policy(client, coffer, grant(identities["own-sub"], account.app_id, coffer, BOTH))
    sub_sdk.put_coffer_lifecycle(coffer, 44)
    assert sub_sdk.get_coffer_lifecycle(coffer) == 44
    assert sdk.get_coffer_lifecycle(coffer) == 44
