"""The policy language of security.md "Coffer policies", in-process: what the parser accepts and
its canonical form, every refusal with a message naming the fault, how a policy decides a
request (effects, wildcards, regions, conditions at their boundaries), and a property test
against an independent reference evaluator."""

from __future__ import annotations

import calendar
import functools
import ipaddress
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datacoffer.core.conditions import Context, client_address
from datacoffer.core.policy import ACTIONS, PolicyError, Request, Scope, parse, stored

APP = "1250000000"
OTHER_APP = "1250000001"
COFFER = f"examplecoffer-{APP}"
REGIONS = ("ap-guangzhou", "ap-tianjin")
SCOPE = Scope(coffer=COFFER, app_id=APP, regions=REGIONS)
SUB = "qcs::cam::uin/100000000001:uin/100000000011"
OTHER = "qcs::cam::uin/100000000001:uin/100000000012"
RESOURCE = f"qcs::cdcs::uid/{APP}:{COFFER}/*"
#: 2026-01-31T12:00:00Z
T0 = calendar.timegm((2026, 1, 31, 12, 0, 0))
MISSING = object()

#: the example of security.md, verbatim
SPEC_EXAMPLE = """{"version": "2.0",
 "Statement": [{
   "Principal": {"qcs": ["qcs::cam::uin/100000000001:uin/100000000011"]},
   "Effect": "allow",
   "Action": ["name/cdcs:GetObject", "name/cdcs:CheckObject"],
   "Resource": ["qcs::cdcs::uid/1250000000:examplecoffer-1250000000/*"],
   "Condition": {"ip_equal": {"qcs:ip": ["10.121.2.0/24"]}}}]}"""


# -- helpers -----------------------------------------------------------------------------------


def statement(**changes: Any) -> dict[str, Any]:
    """A valid statement granting SUB GetObject on the whole coffer, with elements replaced
    (or removed, with MISSING)."""
    element: dict[str, Any] = {"Principal": {"qcs": [SUB]}, "Effect": "allow",
                               "Action": ["name/cdcs:GetObject"], "Resource": [RESOURCE]}
    for name, value in changes.items():
        if value is MISSING:
            element.pop(name)
        else:
            element[name] = value
    return element


def document(*statements: Any, **changes: Any) -> bytes:
    """A document of these statements as UTF-8 bytes, top-level elements replaced/removed."""
    doc: dict[str, Any] = {"version": "2.0", "Statement": list(statements)}
    for name, value in changes.items():
        if value is MISSING:
            doc.pop(name)
        else:
            doc[name] = value
    return json.dumps(doc, ensure_ascii=False).encode()


def request(*, principal: str = SUB, action: str = "GetObject", region: str = REGIONS[0],
            app_id: str = APP, path: str = f"{COFFER}/a", ip: str = "10.121.2.7",
            now: int = T0) -> Request:
    """A request; every field defaults to what `statement()` grants."""
    return Request(principal, action, region, app_id, path, Context(client_address(ip), now))


def decide(stmt: dict[str, Any], req: Request, scope: Scope = SCOPE) -> str | None:
    """The decision of a one-statement policy."""
    return parse(document(stmt), scope).decide(req)


def assert_same_order(got: Any, expected: Any) -> None:
    """Equal, and every object's keys in the same order."""
    assert got == expected
    if isinstance(expected, dict):
        assert list(got) == list(expected)
        for key in expected:
            assert_same_order(got[key], expected[key])
    elif isinstance(expected, list):
        for g, e in zip(got, expected, strict=True):
            assert_same_order(g, e)


def refused(raw: bytes | str, fragment: str, scope: Scope = SCOPE) -> str:
    """Assert the parser refuses `raw` with a message containing `fragment`."""
    with pytest.raises(PolicyError) as info:
        parse(raw, scope)
    assert fragment in str(info.value), str(info.value)
    return str(info.value)


def iso(seconds: int, fraction: str = "", zone: str = "Z") -> str:
    """An ISO 8601 UTC time of whole seconds, with an optional fraction and zone spelling."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone


# -- 1. what the parser accepts ------------------------------------------------------------------


def test_spec_example_verbatim() -> None:
    """The example of security.md parses to itself and grants what it says."""
    policy = parse(SPEC_EXAMPLE.encode(), SCOPE)
    assert_same_order(policy.document, json.loads(SPEC_EXAMPLE))
    assert policy.decide(request(ip="10.121.2.200", path=f"{COFFER}/x/y")) == "allow"
    assert policy.decide(request(action="CheckObject", ip="10.121.2.1")) == "allow"
    assert policy.decide(request(ip="10.121.3.1")) is None
    assert policy.decide(request(action="PutObject", ip="10.121.2.1")) is None
    assert policy.decide(request(principal=OTHER, ip="10.121.2.1")) is None


def _title(name: str) -> str:
    return name.title()


@pytest.mark.parametrize("spell", [str.lower, str.upper, str.swapcase, _title],
                         ids=["lower", "upper", "swapcase", "title"])
def test_element_names_in_any_case(spell: Callable[[str], str]) -> None:
    """Every element name, the Principal's qcs key, the Effect, the action, the operator and
    the condition key (with white space around it) in another case: the same policy, shown in
    canonical form (the action as written)."""
    action = spell("name/cdcs:GetObject")
    raw = json.dumps({spell("version"): "2.0", spell("Statement"): [{
        spell("Principal"): {spell("qcs"): [SUB]}, spell("Effect"): spell("allow"),
        spell("Action"): [action], spell("Resource"): [RESOURCE],
        spell("Condition"): {spell("ip_equal"): {f" {spell('qcs:ip')}\t": "10.121.2.0/24"}}}]})
    policy = parse(raw, SCOPE)
    assert_same_order(policy.document, {"version": "2.0", "Statement": [{
        "Principal": {"qcs": [SUB]}, "Effect": "allow", "Action": [action],
        "Resource": [RESOURCE], "Condition": {"ip_equal": {"qcs:ip": ["10.121.2.0/24"]}}}]})
    assert policy.decide(request(ip="10.121.2.9")) == "allow"
    assert policy.decide(request(ip="10.121.9.9")) is None


@pytest.mark.parametrize("key", ["qcs:ip ", " qcs:ip", "\tQCS:IP \n", "  Qcs:Ip  "])
def test_condition_key_white_space(key: str) -> None:
    """Surrounding white space in a condition key is ignored; the canonical key is trimmed."""
    policy = parse(document(statement(Condition={"ip_not_equal": {key: ["10.0.0.0/8"]}})), SCOPE)
    assert policy.document["Statement"][0]["Condition"] == {
        "ip_not_equal": {"qcs:ip": ["10.0.0.0/8"]}}
    assert policy.decide(request(ip="10.1.1.1")) is None
    assert policy.decide(request(ip="11.1.1.1")) == "allow"


@pytest.mark.parametrize("effect", ["allow", "Allow", "ALLOW", "deny", "Deny", "dEnY"])
def test_effect_case_insensitive(effect: str) -> None:
    policy = parse(document(statement(Effect=effect)), SCOPE)
    assert policy.document["Statement"][0]["Effect"] == effect.lower()
    assert policy.decide(request()) == effect.lower()


def test_strings_instead_of_lists() -> None:
    """Principal entries, Action, Resource and condition values may be single strings."""
    policy = parse(document(statement(
        Principal={"qcs": SUB}, Action="name/cdcs:PutObject",
        Resource=f"qcs::cdcs::uid/{APP}:{COFFER}/in/*",
        Condition={"date_less_than": {"qcs:current_time": "2026-01-31T12:00:00Z"}})), SCOPE)
    assert_same_order(policy.document["Statement"][0], {
        "Principal": {"qcs": [SUB]}, "Effect": "allow", "Action": ["name/cdcs:PutObject"],
        "Resource": [f"qcs::cdcs::uid/{APP}:{COFFER}/in/*"],
        "Condition": {"date_less_than": {"qcs:current_time": ["2026-01-31T12:00:00Z"]}}})
    assert policy.decide(request(action="PutObject", path=f"{COFFER}/in/k", now=T0 - 1)) \
        == "allow"
    assert policy.decide(request(action="PutObject", path=f"{COFFER}/in/k", now=T0)) is None


@pytest.mark.parametrize(("operator", "key", "value"), [
    ("ip_equal", "qcs:ip", "10.0.0.0/8"),
    ("ip_not_equal", "qcs:ip", "2001:db8::/32"),
    ("date_equal", "qcs:current_time", "2026-01-31T12:00:00Z"),
    ("date_not_equal", "qcs:current_time", "2026-01-31T12:00:00+00:00"),
    ("date_greater_than", "qcs:current_time", "2026-01-31T12:00:00.250Z"),
    ("date_greater_than_equal", "qcs:current_time", "2026-01-31T12:00:00Z"),
    ("date_less_than", "qcs:current_time", "2030-12-31T23:59:59Z"),
    ("date_less_than_equal", "qcs:current_time", "2026-01-31T12:00Z"),
])
def test_every_operator(operator: str, key: str, value: str) -> None:
    """Each operator of the spec parses, shown lower-case with its key and the value as
    written."""
    policy = parse(document(statement(Condition={operator.upper(): {key: value}})), SCOPE)
    assert policy.document["Statement"][0]["Condition"] == {operator: {key: [value]}}


@pytest.mark.parametrize(("action", "granted"), [
    ("name/cdcs:*", set(ACTIONS)),
    ("name/cdcs:Get*", {"GetService", "GetCoffer", "GetCofferLifecycle", "GetObject"}),
    ("name/cdcs:*Object", {"PutObject", "GetObject", "CheckObject"}),
    ("name/cdcs:*Coffer", {"PutCoffer", "GetCoffer", "DeleteCoffer"}),
    ("name/cdcs:*multipart*", {"InitiateMultipartUpload", "CompleteMultipartUpload",
                               "AbortMultipartUpload", "ListMultipartUploads"}),
    ("name/cdcs:List*", {"ListParts", "ListMultipartUploads"}),
    ("name/cdcs:G*t*e", {"GetService", "GetCofferLifecycle"}),
    ("NAME/CDCS:getobject", {"GetObject"}),
    ("name/cdcs:CheckObject", {"CheckObject"}),
], ids=lambda v: v if isinstance(v, str) else None)
def test_action_wildcards(action: str, granted: set[str]) -> None:
    """A pattern grants exactly the grantable operations it matches (ignoring case)."""
    policy = parse(document(statement(Action=action)), SCOPE)
    assert policy.document["Statement"][0]["Action"] == [action]
    allowed = {a for a in ACTIONS if policy.decide(request(action=a)) == "allow"}
    assert allowed == granted
    for owner_only in ("PutCofferPolicy", "GetCofferPolicy", "DeleteCofferPolicy"):
        assert policy.decide(request(action=owner_only)) is None


def test_fifteen_grantable_actions() -> None:
    assert ACTIONS == (
        "GetService", "PutCoffer", "GetCoffer", "DeleteCoffer", "PutCofferLifecycle",
        "GetCofferLifecycle", "PutObject", "GetObject", "CheckObject",
        "InitiateMultipartUpload", "UploadPart", "ListParts", "CompleteMultipartUpload",
        "AbortMultipartUpload", "ListMultipartUploads")


@pytest.mark.parametrize("resource", [
    f"qcs::cdcs::uid/{APP}:{COFFER}/*",
    f"qcs::cdcs:ap-guangzhou:uid/{APP}:{COFFER}/*",
    f"qcs::cdcs:ap-tianjin:uid/{APP}:{COFFER}/photos/*.jpg",
    f"qcs:myproject:cdcs::uid/{APP}:{COFFER}/exact/key",
    f"qcs::cdcs::uid/{APP}:{COFFER}/",
    f"qcs::cdcs::uid/{APP}:{COFFER}/a:b*c:d",
    f"qcs::cdcs::uid/{APP}:{COFFER}/**",
])
def test_resources_accepted(resource: str) -> None:
    """Resources with wildcards, an empty or a named region, any project, ':' in the key."""
    policy = parse(document(statement(Resource=[resource])), SCOPE)
    assert policy.document["Statement"][0]["Resource"] == [resource]


def test_any_region_when_unchecked() -> None:
    """With no configured regions given (Scope.regions None), any region name parses."""
    res = f"qcs::cdcs:ap-mars:uid/{APP}:{COFFER}/*"
    policy = parse(document(statement(Resource=res)), Scope(coffer=COFFER, app_id=APP))
    assert policy.decide(request(region="ap-mars")) == "allow"
    assert policy.decide(request(region="ap-guangzhou")) is None


def test_inline_policy() -> None:
    """An inline policy needs no Principal (it then applies to anyone) and may name any coffer
    of any AppID; a coffer policy needs the Principal."""
    raw = document(statement(Principal=MISSING, Resource=[
        f"qcs::cdcs::uid/{OTHER_APP}:other-{OTHER_APP}/*", f"qcs::cdcs::uid/{APP}:{COFFER}/a"]))
    policy = parse(raw, Scope(inline=True))
    assert_same_order(policy.document, {"version": "2.0", "Statement": [{
        "Effect": "allow", "Action": ["name/cdcs:GetObject"], "Resource": [
            f"qcs::cdcs::uid/{OTHER_APP}:other-{OTHER_APP}/*",
            f"qcs::cdcs::uid/{APP}:{COFFER}/a"]}]})
    assert policy.decide(request(principal=OTHER)) == "allow"
    assert policy.decide(request(app_id=OTHER_APP, path=f"other-{OTHER_APP}/k")) == "allow"
    assert policy.decide(request(app_id=APP, path=f"other-{OTHER_APP}/k")) is None
    refused(raw, "Statement[0] is missing Principal")


CANONICAL_CASES = [
    pytest.param(
        '{"STATEMENT": [{"condition": {"Date_Less_Than": {" QCS:Current_Time": '
        '"2026-01-31T12:00:00.5Z"}, "ip_equal": {"qcs:ip ": ["10.0.0.7/24", "2001:DB8::/32"]}},'
        f' "resource": "qcs:proj:cdcs:ap-guangzhou:uid/{APP}:{COFFER}/a*", "ACTION": '
        '["NAME/CDCS:get*", "name/cdcs:CheckObject"], "effect": "DENY", "principal": '
        f'{{"QCS": "{SUB}"}}}}], "Version": "2.0"}}',
        {"version": "2.0", "Statement": [{
            "Principal": {"qcs": [SUB]}, "Effect": "deny",
            "Action": ["NAME/CDCS:get*", "name/cdcs:CheckObject"],
            "Resource": [f"qcs:proj:cdcs:ap-guangzhou:uid/{APP}:{COFFER}/a*"],
            "Condition": {
                "date_less_than": {"qcs:current_time": ["2026-01-31T12:00:00.5Z"]},
                "ip_equal": {"qcs:ip": ["10.0.0.7/24", "2001:DB8::/32"]}}}]},
        id="reordered-and-cased"),
    pytest.param(
        document(
            statement(Principal={"qcs": [SUB, OTHER]}, Action=["name/cdcs:*"],
                      Resource=[f"qcs::cdcs::uid/{APP}:{COFFER}/", RESOURCE]),
            statement(Effect="Deny", Action="name/cdcs:PutObject",
                      Resource=f"qcs::cdcs:ap-tianjin:uid/{APP}:{COFFER}/locked/*",
                      Condition={"date_greater_than": {"qcs:current_time": [
                          "2026-01-31T12:00:00Z", "2027-01-01T00:00:00+00:00"]}})),
        {"version": "2.0", "Statement": [
            {"Principal": {"qcs": [SUB, OTHER]}, "Effect": "allow", "Action": ["name/cdcs:*"],
             "Resource": [f"qcs::cdcs::uid/{APP}:{COFFER}/", RESOURCE]},
            {"Principal": {"qcs": [SUB]}, "Effect": "deny", "Action": ["name/cdcs:PutObject"],
             "Resource": [f"qcs::cdcs:ap-tianjin:uid/{APP}:{COFFER}/locked/*"],
             "Condition": {"date_greater_than": {"qcs:current_time": [
                 "2026-01-31T12:00:00Z", "2027-01-01T00:00:00+00:00"]}}}]},
        id="two-statements"),
    pytest.param(b'{"Statement": [], "version": "2.0"}', {"version": "2.0", "Statement": []},
                 id="empty"),
    pytest.param(
        document(statement(Condition={"ip_equal": {"qcs:ip": "10.0.0.7/24"},
                                      "DATE_NOT_EQUAL": {"qcs:current_time": "2026-01-31T12Z"},
                                      "date_greater_than_equal": {
                                          "qcs:current_time": ["2026-01-31T12:00:00.999Z"]}})),
        {"version": "2.0", "Statement": [statement(Principal={"qcs": [SUB]}, Condition={
            "ip_equal": {"qcs:ip": ["10.0.0.7/24"]},
            "date_not_equal": {"qcs:current_time": ["2026-01-31T12Z"]},
            "date_greater_than_equal": {"qcs:current_time": ["2026-01-31T12:00:00.999Z"]}})]},
        id="three-operators"),
]


@pytest.mark.parametrize(("raw", "expected"), CANONICAL_CASES)
def test_canonical_form(raw: bytes | str, expected: dict[str, Any]) -> None:
    """Canonical names and order, lists always, Effect and operators lower-case, keys trimmed,
    values as written; the canonical text parses back to itself."""
    policy = parse(raw, SCOPE)
    assert_same_order(policy.document, expected)
    assert_same_order(json.loads(policy.text()), expected)
    assert_same_order(parse(policy.text().encode(), SCOPE).document, expected)


# -- 2. refusals -------------------------------------------------------------------------------

NAMES_NO_OPERATION = "names no operation of the API"
NOT_ACTION = "is not name/cdcs:<Operation>"
CANNOT_GRANT = "cannot be granted; the policy operations stay the owner's"
NOT_PRINCIPAL = "is not qcs::cam::uin/<OwnerUin>:uin/<Uin>"
PRINCIPAL_SHAPE = 'Statement[0].Principal must be {"qcs": ['
NOT_RESOURCE = "is not qcs:<project>:cdcs:<region>:uid/<AppID>:<Coffer>/<Key>"
NOT_ADDRESS = "is not an IPv4 or IPv6 address or CIDR block"
NOT_TIME = "is not an ISO 8601 UTC time"
NON_EMPTY = "must be a string or a non-empty list of strings"


def _res(text: str) -> bytes:
    return document(statement(Resource=text))


def _cond(condition: Any) -> bytes:
    return document(statement(Condition=condition))


REFUSALS = [
    # the document
    pytest.param(b'{"version": "2.0", "Statement": [', "the document is not valid JSON",
                 id="invalid-json"),
    pytest.param(b"", "the document is not valid JSON", id="empty-body"),
    pytest.param(b'{"version": "2.0", "Statement": []} x', "the document is not valid JSON",
                 id="trailing-garbage"),
    pytest.param(b'{"version": "2.0", "Statement": [], "\xe9t\xe9": 1}',
                 "the document is not valid JSON: it is not UTF-8", id="latin-1"),
    pytest.param(b"[]", "the document must be a JSON object", id="not-an-object"),
    # missing elements
    pytest.param(document(version=MISSING), "the document is missing version",
                 id="missing-version"),
    pytest.param(document(Statement=MISSING), "the document is missing Statement",
                 id="missing-Statement"),
    *(pytest.param(document(statement(**{name: MISSING})), f"Statement[0] is missing {name}",
                   id=f"missing-{name}")
      for name in ("Principal", "Effect", "Action", "Resource")),
    pytest.param(document(statement(), statement(Action=MISSING)),
                 "Statement[1] is missing Action", id="missing-in-second-statement"),
    # unknown elements
    pytest.param(document(Id="x"), "the document has an unknown element 'Id'",
                 id="unknown-top"),
    pytest.param(document(statement(Sid="1")), "Statement[0] has an unknown element 'Sid'",
                 id="unknown-Sid"),
    pytest.param(document(statement(NotAction="name/cdcs:GetObject")),
                 "Statement[0] has an unknown element 'NotAction'", id="unknown-NotAction"),
    # duplicated elements (differing in case)
    pytest.param(b'{"version": "2.0", "Statement": [], "statement": []}',
                 "the document has Statement twice", id="twice-Statement"),
    pytest.param(b'{"version": "2.0", "VERSION": "2.0", "Statement": []}',
                 "the document has version twice", id="twice-version"),
    pytest.param(document({**statement(), "effect": "deny"}),
                 "Statement[0] has Effect twice", id="twice-Effect"),
    pytest.param(document({**statement(), "RESOURCE": RESOURCE}),
                 "Statement[0] has Resource twice", id="twice-Resource"),
    pytest.param(document(statement(Principal={"qcs": [SUB], "QCS": [OTHER]})),
                 PRINCIPAL_SHAPE, id="twice-qcs"),
    # version and Statement
    pytest.param(document(version="1.0"), 'version must be "2.0"', id="version-1.0"),
    pytest.param(document(version=2.0), 'version must be "2.0"', id="version-number"),
    pytest.param(document(version=" 2.0"), 'version must be "2.0"', id="version-space"),
    pytest.param(document(Statement={}), "Statement must be a list of statements",
                 id="Statement-object"),
    pytest.param(document(Statement=statement()), "Statement must be a list of statements",
                 id="Statement-single"),
    pytest.param(document(Statement=None), "Statement must be a list of statements",
                 id="Statement-null"),
    pytest.param(document("allow"), "Statement[0] must be a JSON object",
                 id="statement-string"),
    # Effect
    pytest.param(document(statement(Effect="permit")), "Statement[0].Effect must be allow or deny",
                 id="effect-permit"),
    pytest.param(document(statement(Effect=["allow"])),
                 "Statement[0].Effect must be allow or deny", id="effect-list"),
    # actions
    pytest.param(document(statement(Action="name/cdcs:Fly")),
                 f"'name/cdcs:Fly' {NAMES_NO_OPERATION}", id="action-Fly"),
    pytest.param(document(statement(Action="name/cdcs:HeadObject")),
                 "'name/cdcs:HeadObject' names no operation of the API (HeadObject's action is "
                 "CheckObject)", id="action-HeadObject"),
    pytest.param(document(statement(Action="name/cdcs:Zz*")),
                 f"'name/cdcs:Zz*' {NAMES_NO_OPERATION}", id="action-wildcard-none"),
    pytest.param(document(statement(Action="name/cdcs:*Policy")),
                 f"'name/cdcs:*Policy' {CANNOT_GRANT}", id="action-wildcard-Policy"),
    *(pytest.param(document(statement(Action=["name/cdcs:GetObject", f"name/cdcs:{op}"])),
                   f"'name/cdcs:{op}' {CANNOT_GRANT}", id=f"action-{op}")
      for op in ("PutCofferPolicy", "GetCofferPolicy", "deletecofferpolicy")),
    pytest.param(document(statement(Action="*")), f"'*' {NOT_ACTION}", id="action-bare-star"),
    pytest.param(document(statement(Action="GetObject")), f"'GetObject' {NOT_ACTION}",
                 id="action-no-prefix"),
    pytest.param(document(statement(Action="cdcs:GetObject")), f"'cdcs:GetObject' {NOT_ACTION}",
                 id="action-cdcs-prefix"),
    pytest.param(document(statement(Action="name/cdcs:")), f"'name/cdcs:' {NOT_ACTION}",
                 id="action-empty-name"),
    pytest.param(document(statement(Action=[])), f"Statement[0].Action {NON_EMPTY}",
                 id="action-empty-list"),
    pytest.param(document(statement(Action=[1])), f"Statement[0].Action {NON_EMPTY}",
                 id="action-number"),
    # principals
    pytest.param(document(statement(Principal={"qcs": "*"})), "'*' is not allowed",
                 id="principal-star"),
    pytest.param(document(statement(Principal={"qcs": [SUB, "*"]})), "'*' is not allowed",
                 id="principal-star-in-list"),
    pytest.param(document(statement(Principal="*")), PRINCIPAL_SHAPE, id="principal-bare-star"),
    pytest.param(document(statement(Principal={"qcs": ["qcs::cam::uin/x:uin/1"]})),
                 f"'qcs::cam::uin/x:uin/1' {NOT_PRINCIPAL}", id="principal-letter"),
    pytest.param(document(statement(Principal={"qcs": ["qcs::cam::uin/1"]})),
                 f"'qcs::cam::uin/1' {NOT_PRINCIPAL}", id="principal-short"),
    pytest.param(document(statement(Principal={"qcs": ["qcs::cam::uin/1:uin/2:uin/3"]})),
                 NOT_PRINCIPAL, id="principal-long"),
    pytest.param(document(statement(Principal={"qcs": ["qcs::cam::uin/1:root"]})),
                 NOT_PRINCIPAL, id="principal-root-word"),
    pytest.param(document(statement(Principal={"cam": [SUB]})), PRINCIPAL_SHAPE,
                 id="principal-wrong-key"),
    pytest.param(document(statement(Principal=SUB)), PRINCIPAL_SHAPE, id="principal-string"),
    pytest.param(document(statement(Principal=[SUB])), PRINCIPAL_SHAPE, id="principal-list"),
    pytest.param(document(statement(Principal={})), PRINCIPAL_SHAPE, id="principal-empty-object"),
    pytest.param(document(statement(Principal={"qcs": []})),
                 f"Statement[0].Principal {NON_EMPTY}", id="principal-empty-list"),
    # resources
    pytest.param(_res(f"qcs::cdcs:uid/{APP}:{COFFER}/*"), NOT_RESOURCE, id="resource-5-segments"),
    pytest.param(_res(f"uid/{APP}:{COFFER}/*"), NOT_RESOURCE, id="resource-2-segments"),
    pytest.param(_res(f"qcs::cos::uid/{APP}:{COFFER}/*"), NOT_RESOURCE, id="resource-cos"),
    pytest.param(_res(f"arn::cdcs::uid/{APP}:{COFFER}/*"), NOT_RESOURCE, id="resource-not-qcs"),
    pytest.param(_res(f"qcs::cdcs::{APP}:{COFFER}/*"), NOT_RESOURCE, id="resource-no-uid"),
    pytest.param(_res(f"qcs::cdcs::uid/:{COFFER}/*"), "has no AppID after uid/",
                 id="resource-empty-uid"),
    pytest.param(_res(f"qcs::cdcs::uid/{OTHER_APP}:{COFFER}/*"),
                 f"names AppID {OTHER_APP}, not this coffer's ({APP})", id="resource-other-app"),
    pytest.param(_res(f"qcs::cdcs::uid/{APP}:other-{APP}/*"),
                 f"names another coffer; its path must start with {COFFER}/",
                 id="resource-other-coffer"),
    pytest.param(_res(f"qcs::cdcs::uid/{APP}:{COFFER}x/*"), "names another coffer",
                 id="resource-coffer-prefix"),
    pytest.param(_res(f"qcs::cdcs::uid/{APP}:{COFFER}*"), "names another coffer",
                 id="resource-coffer-star"),
    pytest.param(_res(f"qcs::cdcs::uid/{APP}:*"), "names another coffer",
                 id="resource-star-path"),
    pytest.param(_res(f"qcs::cdcs:ap-mars:uid/{APP}:{COFFER}/*"),
                 "names region 'ap-mars', which this server does not have",
                 id="resource-unknown-region"),
    pytest.param(document(statement(Resource=[])), f"Statement[0].Resource {NON_EMPTY}",
                 id="resource-empty-list"),
    # conditions
    pytest.param(_cond({"ip_in": {"qcs:ip": "10.0.0.1"}}), "unknown operator 'ip_in'",
                 id="operator-unknown"),
    pytest.param(_cond({"string_equal": {"qcs:ip": "10.0.0.1"}}),
                 "unknown operator 'string_equal'", id="operator-string_equal"),
    pytest.param(_cond({"date_equal": {"qcs:ip": "10.0.0.1"}}),
                 "Statement[0].Condition.date_equal: unknown key 'qcs:ip'; date_equal takes "
                 "qcs:current_time", id="key-ip-on-date"),
    pytest.param(_cond({"ip_not_equal": {"qcs:current_time": "2026-01-31T12:00:00Z"}}),
                 "unknown key 'qcs:current_time'; ip_not_equal takes qcs:ip", id="key-date-on-ip"),
    pytest.param(_cond({"ip_equal": {"qcs:src_ip": "10.0.0.1"}}), "unknown key 'qcs:src_ip'",
                 id="key-unknown"),
    pytest.param(_cond(["ip_equal"]), "Statement[0].Condition must be a JSON object",
                 id="condition-list"),
    pytest.param(_cond({"ip_equal": {}}), "Statement[0].Condition.ip_equal must be an object",
                 id="operator-empty"),
    pytest.param(_cond({"ip_equal": "10.0.0.1"}),
                 "Statement[0].Condition.ip_equal must be an object", id="operator-string"),
    pytest.param(_cond({"ip_equal": {"qcs:ip": []}}), NON_EMPTY, id="values-empty"),
    *(pytest.param(_cond({"ip_equal": {"qcs:ip": ["10.0.0.1", value]}}),
                   f"{value!r} {NOT_ADDRESS}", id=f"address-{value}")
      for value in ("10.0.0.256", "fe80::zz", "10.0.0.0/33", "2001:db8::/129", "localhost")),
    *(pytest.param(_cond({op: {"qcs:current_time": value}}), f"{value!r} {NOT_TIME}",
                   id=f"time-{value}")
      for op, value in (("date_equal", "yesterday"), ("date_less_than", "2026-01-31"),
                        ("date_greater_than", "2026-01-31T12:00:00"),
                        ("date_not_equal", "2026-13-01T00:00:00Z"), ("date_equal", "1769860800"))),
    pytest.param(_cond({"date_less_than": {"qcs:current_time": "2026-01-31T20:00:00+08:00"}}),
                 "'2026-01-31T20:00:00+08:00' is not in UTC", id="time-offset"),
    pytest.param(_cond({"date_less_than_equal": {"qcs:current_time": "2026-01-31T12:00:00-01:00"}}),
                 "is not in UTC", id="time-negative-offset"),
]


@pytest.mark.parametrize(("raw", "fragment"), REFUSALS)
def test_refused(raw: bytes, fragment: str) -> None:
    """Each fault of security.md is refused with a message naming it."""
    refused(raw, fragment)


def test_fault_located_in_later_statement() -> None:
    """A fault is located by statement index and element."""
    refused(document(statement(), statement(Condition={"ip_equal": {"qcs:ip": "x"}})),
            "Statement[1].Condition.ip_equal: 'x' is not an IPv4")


@pytest.mark.parametrize("raw", [
    b'{"version": "2.0", "version": "2.0", "Statement": []}',
    document(statement()).replace(b'"Effect": "allow"', b'"Effect": "deny", "Effect": "allow"'),
], ids=["version", "Effect"])
def test_duplicated_element_same_spelling(raw: bytes) -> None:
    refused(raw, "twice")


@pytest.mark.parametrize("condition", [
    {"ip_equal": {"qcs:ip": "10.0.0.0/8"}, "IP_EQUAL": {"qcs:ip": "192.168.0.0/16"}},
    {"ip_equal": {"qcs:ip": "10.0.0.0/8", " QCS:IP": "192.168.0.0/16"}},
], ids=["operator", "key"])
def test_duplicated_condition_names(condition: dict[str, Any]) -> None:
    refused(_cond(condition), "twice")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32-le"])
def test_not_utf8_encodings(encoding: str) -> None:
    """Refused whatever json.loads could guess: UTF-16 fails to decode as UTF-8; UTF-32-LE
    decodes (its NULs are UTF-8 too) but is then no JSON."""
    with pytest.raises(PolicyError, match=r"not UTF-8|not valid JSON"):
        parse(document(statement()).decode().encode(encoding), SCOPE)


def test_region_scope() -> None:
    """A named region must be one of the server's; the same document parses where it is."""
    raw = _res(f"qcs::cdcs:ap-beijing:uid/{APP}:{COFFER}/*")
    refused(raw, "names region 'ap-beijing', which this server does not have")
    assert parse(raw, Scope(coffer=COFFER, app_id=APP, regions=("ap-beijing",))).document


def _sized(total: int, pad: str) -> bytes:
    """A valid document of exactly `total` UTF-8 bytes, its key padded with `pad` characters
    (and ASCII for the remainder)."""
    base = len(document(statement(Resource=f"qcs::cdcs::uid/{APP}:{COFFER}/")))
    room = total - base
    width = len(pad.encode())
    key = pad * (room // width) + "k" * (room % width)
    raw = document(statement(Resource=f"qcs::cdcs::uid/{APP}:{COFFER}/{key}"))
    assert len(raw) == total
    return raw


@pytest.mark.parametrize("pad", ["k", "é", "€"])
def test_size_limit(pad: str) -> None:
    """20480 bytes (not characters) are accepted; one more byte is refused, str or bytes."""
    at_limit = _sized(20480, pad)
    assert parse(at_limit, SCOPE).decide(request(path=json.loads(at_limit)["Statement"][0][
        "Resource"].split(":", 5)[5])) == "allow"
    assert parse(at_limit.decode(), SCOPE).document
    over = _sized(20481, pad)
    for raw in (over, over.decode()):
        refused(raw, "the document is 20481 bytes; a policy may have at most 20480 (20 KiB)")


def test_size_limit_white_space() -> None:
    """Trailing white space counts towards the limit."""
    raw = document(statement())
    assert parse(raw + b" " * (20480 - len(raw)), SCOPE).document
    refused(raw + b" " * (20481 - len(raw)), "20481 bytes")


# -- 3. evaluation -----------------------------------------------------------------------------


@pytest.mark.parametrize("deny_first", [True, False])
def test_explicit_deny_wins(deny_first: bool) -> None:
    allow = statement(Action="name/cdcs:*")
    deny = statement(Effect="deny", Resource=f"qcs::cdcs::uid/{APP}:{COFFER}/secret/*")
    policy = parse(document(*((deny, allow) if deny_first else (allow, deny))), SCOPE)
    assert policy.decide(request(path=f"{COFFER}/secret/x")) == "deny"
    assert not policy.allows(request(path=f"{COFFER}/secret/x"))
    assert policy.decide(request(path=f"{COFFER}/public/x")) == "allow"
    assert policy.allows(request(path=f"{COFFER}/public/x"))
    assert policy.decide(request(action="PutObject", path=f"{COFFER}/secret/x")) == "allow"


def test_implicit_deny() -> None:
    empty = parse(document(), SCOPE)
    assert empty.decide(request()) is None
    assert not empty.allows(request())
    only_deny = parse(document(statement(Effect="deny", Action="name/cdcs:PutObject")), SCOPE)
    assert only_deny.decide(request()) is None
    assert only_deny.decide(request(action="PutObject")) == "deny"


GRANT = statement(Resource=f"qcs::cdcs:ap-guangzhou:uid/{APP}:{COFFER}/photos/*")


@pytest.mark.parametrize(("change", "expected"), [
    ({}, "allow"),
    ({"principal": OTHER}, None),
    ({"principal": "qcs::cam::uin/100000000002:uin/100000000011"}, None),
    ({"principal": "qcs::cam::uin/100000000001:uin/100000000001"}, None),
    ({"action": "PutObject"}, None),
    ({"action": "CheckObject"}, None),
    ({"path": f"{COFFER}/docs/x"}, None),
    ({"path": f"other-{APP}/photos/x"}, None),
    ({"region": "ap-tianjin"}, None),
    ({"app_id": OTHER_APP}, None),
], ids=["match", "principal", "principal-other-account", "principal-owner-root", "action",
        "action-check", "path", "path-other-coffer", "region", "app-id"])
def test_each_field_alone(change: dict[str, str], expected: str | None) -> None:
    """Principal, action, resource path, region and AppID must each match."""
    assert decide(GRANT, request(**{"path": f"{COFFER}/photos/x", **change})) == expected


@pytest.mark.parametrize(("key_pattern", "key", "matches"), [
    ("*", "a/b/c", True),
    ("*", "", True),
    ("a*z", "az", True),
    ("a*z", "a/b/z", True),
    ("a*z", "a/z/", False),
    ("a*z", "ba/z", False),
    ("a*", "a", True),
    ("*/x", "/x", True),
    ("*/x", "a/b/x", True),
    ("*/x", "x", False),
    ("a/*/b", "a//b", True),
    ("a.b", "aXb", False),
    ("a.b", "a.b", True),
    ("a?c", "abc", False),
    ("(x)+[y]", "(x)+[y]", True),
    ("(x)+[y]", "xx", False),
    ("A", "a", False),
    ("*", "line\nbreak", True),
    ("a\\*", "a\\zz", True),
    ("exact", "exact/", False),
])
def test_key_wildcard(key_pattern: str, key: str, matches: bool) -> None:
    """`*` matches any run, including '/' and the empty run; every other character is literal
    and case matters."""
    stmt = statement(Resource=f"qcs::cdcs::uid/{APP}:{COFFER}/{key_pattern}")
    assert decide(stmt, request(path=f"{COFFER}/{key}")) == ("allow" if matches else None)


@pytest.mark.parametrize(("key_pattern", "coffer_level", "object_level"), [
    ("*", True, True),
    ("", True, False),
    ("a*", False, True),
    ("**", True, True),
])
def test_coffer_level_path(key_pattern: str, coffer_level: bool, object_level: bool) -> None:
    """A coffer-level action is checked against `<Coffer>/`."""
    stmt = statement(Action=["name/cdcs:GetCoffer", "name/cdcs:GetObject"],
                     Resource=f"qcs::cdcs::uid/{APP}:{COFFER}/{key_pattern}")
    assert decide(stmt, request(action="GetCoffer", path=f"{COFFER}/")) == \
        ("allow" if coffer_level else None)
    assert decide(stmt, request(path=f"{COFFER}/a")) == ("allow" if object_level else None)


@pytest.mark.parametrize("region", REGIONS)
def test_empty_region_matches_every_region(region: str) -> None:
    assert decide(statement(), request(region=region)) == "allow"
    named = statement(Resource=f"qcs::cdcs:{region}:uid/{APP}:{COFFER}/*")
    assert decide(named, request(region=region)) == "allow"
    assert decide(named, request(region=next(r for r in REGIONS if r != region))) is None


@pytest.mark.parametrize(("ip", "now", "expected"), [
    ("10.1.1.1", T0 - 1, "allow"),
    ("10.1.1.1", T0, None),
    ("11.1.1.1", T0 - 1, None),
    ("11.1.1.1", T0, None),
])
def test_conditions_and_across_operators(ip: str, now: int, expected: str | None) -> None:
    stmt = statement(Condition={"ip_equal": {"qcs:ip": "10.0.0.0/8"},
                                "date_less_than": {"qcs:current_time": iso(T0)}})
    assert decide(stmt, request(ip=ip, now=now)) == expected


@pytest.mark.parametrize(("ip", "equal"), [
    ("10.1.1.1", True), ("192.168.1.1", True), ("2001:db8::9", True), ("192.168.1.2", False),
    ("2001:db9::1", False),
])
def test_ip_or_within_list(ip: str, equal: bool) -> None:
    """ip_equal holds if any value matches; ip_not_equal only if none does."""
    values = ["10.0.0.0/8", "192.168.1.1", "2001:db8::/32"]
    assert decide(statement(Condition={"ip_equal": {"qcs:ip": values}}), request(ip=ip)) == \
        ("allow" if equal else None)
    assert decide(statement(Condition={"ip_not_equal": {"qcs:ip": values}}), request(ip=ip)) \
        == (None if equal else "allow")


def test_deny_with_condition() -> None:
    """A deny statement denies only where its condition holds."""
    policy = parse(document(statement(), statement(
        Effect="deny", Condition={"ip_not_equal": {"qcs:ip": "10.121.0.0/16"}})), SCOPE)
    assert policy.decide(request(ip="10.121.5.5")) == "allow"
    assert policy.decide(request(ip="10.122.5.5")) == "deny"


IP_CASES = [
    ("10.1.2.3", "10.1.2.3", True),
    ("10.1.2.3", "10.1.2.4", False),
    ("10.1.2.0/24", "10.1.2.255", True),
    ("10.1.2.0/24", "10.1.3.0", False),
    ("10.1.2.7/24", "10.1.2.200", True),
    ("0.0.0.0/0", "203.0.113.5", True),
    ("2001:db8::1", "2001:db8::1", True),
    ("2001:DB8:0:0::1", "2001:db8::1", True),
    ("2001:db8::1", "2001:db8::2", False),
    ("2001:db8::/32", "2001:db8:ffff::1", True),
    ("2001:db8::/32", "2001:db9::1", False),
    ("2001:db8::7/64", "2001:db8::ffff", True),
    ("10.1.2.0/24", "::ffff:10.1.2.3", True),
    ("10.1.2.3", "::ffff:10.1.2.3", True),
    ("::ffff:0:0/96", "::ffff:10.1.2.3", True),  # (the mapped block is all of IPv4)
    ("::/0", "10.1.2.3", False),
    ("0.0.0.0/0", "2001:db8::1", False),
    ("::1", "127.0.0.1", False),
]


@pytest.mark.parametrize("operator", ["ip_equal", "ip_not_equal"])
@pytest.mark.parametrize(("value", "client", "inside"), IP_CASES)
def test_ip_operators(operator: str, value: str, client: str, inside: bool) -> None:
    """IPv4, IPv6, CIDR blocks of both (host bits ignored); an IPv4-mapped client address is
    IPv4; an address never matches a block of the other version."""
    holds = inside if operator == "ip_equal" else not inside
    stmt = statement(Condition={operator: {"qcs:ip": value}})
    assert decide(stmt, request(ip=client)) == ("allow" if holds else None)


#: operator -> whether it holds at now = t-1, t, t+1
DATE_TABLE = {
    "date_equal": (False, True, False),
    "date_not_equal": (True, False, True),
    "date_greater_than": (False, False, True),
    "date_greater_than_equal": (False, True, True),
    "date_less_than": (True, False, False),
    "date_less_than_equal": (True, True, False),
}


@pytest.mark.parametrize("value", [
    "2026-01-31T12:00:00Z", "2026-01-31T12:00:00.999999Z", "2026-01-31T12:00:00.5+00:00"])
@pytest.mark.parametrize("operator", DATE_TABLE)
def test_date_operators_at_boundary(operator: str, value: str) -> None:
    """The server's whole second compared with the time's whole second, at t-1, t and t+1."""
    stmt = statement(Condition={operator: {"qcs:current_time": value}})
    got = tuple(decide(stmt, request(now=T0 + d)) == "allow" for d in (-1, 0, 1))
    assert got == DATE_TABLE[operator]


@pytest.mark.parametrize(("now", "equal"), [
    (T0 - 1, False), (T0, True), (T0 + 1, False), (T0 + 3600, True), (T0 + 3601, False)])
def test_date_lists(now: int, equal: bool) -> None:
    """date_equal holds if any time equals now; date_not_equal only if none does."""
    values = [iso(T0, ".4"), iso(T0 + 3600)]
    for operator, holds in (("date_equal", equal), ("date_not_equal", not equal)):
        stmt = statement(Condition={operator: {"qcs:current_time": values}})
        assert decide(stmt, request(now=now)) == ("allow" if holds else None)


# -- 4. property: the implementation against a reference evaluator --------------------------

H_COFFER = f"c-{APP}"
H_SCOPE = Scope(coffer=H_COFFER, app_id=APP, regions=("ap-a", "ap-b"))
H_PRINCIPALS = ("qcs::cam::uin/1:uin/1", "qcs::cam::uin/1:uin/2", "qcs::cam::uin/2:uin/2",
                "qcs::cam::uin/2:uin/3")
H_ACTIONS = ("name/cdcs:GetObject", "name/cdcs:PutObject", "NAME/CDCS:checkobject",
             "name/cdcs:Get*", "name/cdcs:*Object", "name/cdcs:*", "name/cdcs:*Coffer*",
             "name/cdcs:List*", "name/cdcs:*Upload*", "name/cdcs:g*T*e", "name/cdcs:GetService")
H_KEYS = ("*", "", "a*", "a/*", "*b", "a*b*", "ab", "*/b", "**", "b", "a/", "*a*")
H_IPS = ("10.0.0.0/8", "10.1.0.0/16", "192.168.1.1", "2001:db8::/32", "::1", "10.1.2.3/24")
H_CLIENTS = ("10.1.2.3", "10.2.0.1", "192.168.1.1", "2001:db8::5", "::1", "::ffff:10.1.2.3",
             "172.16.0.1")
H_DATE_OPS = tuple(DATE_TABLE)


@dataclass(frozen=True)
class RefStatement:
    """A statement as the reference sees it: plain values, no parsing."""

    effect: str
    principals: tuple[str, ...]
    actions: tuple[str, ...]
    #: (region, key pattern below the coffer)
    resources: tuple[tuple[str, str], ...]
    #: (operator, values); date values as whole seconds
    conditions: tuple[tuple[str, tuple[Any, ...]], ...]


@functools.cache
def ref_wild(pattern: str, text: str) -> bool:
    """`*` matches any run of characters; everything else matches itself."""
    if not pattern:
        return not text
    if pattern[0] == "*":
        return ref_wild(pattern[1:], text) or (bool(text) and ref_wild(pattern, text[1:]))
    return bool(text) and pattern[0] == text[0] and ref_wild(pattern[1:], text[1:])


def ref_ip(client: str, value: str) -> bool:
    addr = ipaddress.ip_address(client)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    net = ipaddress.ip_network(value, strict=False)
    return addr.version == net.version and addr in net


def ref_condition(operator: str, values: tuple[Any, ...], ip: str, now: int) -> bool:
    if operator == "ip_equal":
        return any(ref_ip(ip, v) for v in values)
    if operator == "ip_not_equal":
        return not any(ref_ip(ip, v) for v in values)
    if operator == "date_not_equal":
        return all(now != t for t in values)
    compare: dict[str, Callable[[int, int], bool]] = {
        "date_equal": lambda a, b: a == b, "date_greater_than": lambda a, b: a > b,
        "date_greater_than_equal": lambda a, b: a >= b, "date_less_than": lambda a, b: a < b,
        "date_less_than_equal": lambda a, b: a <= b}
    return any(compare[operator](now, t) for t in values)


@dataclass(frozen=True)
class RefRequest:
    principal: str
    action: str
    region: str
    app_id: str
    path: str
    ip: str
    now: int

    def real(self) -> Request:
        return Request(self.principal, self.action, self.region, self.app_id, self.path,
                       Context(client_address(self.ip), self.now))


def ref_matches(s: RefStatement, r: RefRequest) -> bool:
    return (r.principal in s.principals
            and any(ref_wild(a.split(":", 1)[1].lower(), r.action.lower()) for a in s.actions)
            and r.app_id == APP
            and any((not region or region == r.region) and ref_wild(f"{H_COFFER}/{key}", r.path)
                    for region, key in s.resources)
            and all(ref_condition(op, values, r.ip, r.now) for op, values in s.conditions))


def ref_decide(statements: list[RefStatement], r: RefRequest) -> str | None:
    matching = [s.effect for s in statements if ref_matches(s, r)]
    return "deny" if "deny" in matching else "allow" if matching else None


def _some(items: tuple[Any, ...], most: int = 3) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.lists(st.sampled_from(items), min_size=1, max_size=most).map(tuple)


REF_STATEMENTS = st.builds(
    RefStatement,
    effect=st.sampled_from(("allow", "deny")),
    principals=_some(H_PRINCIPALS),
    actions=_some(H_ACTIONS),
    resources=_some(tuple((region, key) for region in ("", "ap-a", "ap-b") for key in H_KEYS)),
    conditions=st.lists(st.one_of(
        st.tuples(st.sampled_from(("ip_equal", "ip_not_equal")), _some(H_IPS)),
        st.tuples(st.sampled_from(H_DATE_OPS), _some(tuple(T0 + d for d in range(-2, 3))))),
        max_size=2, unique_by=lambda c: c[0]).map(tuple),
)


def rendered(s: RefStatement, rnd: random.Random) -> dict[str, Any]:
    """The JSON form of a statement: names in random case, single values as a string or a
    list, condition keys padded, times with random fractions and zone spellings."""
    def name(text: str) -> str:
        return rnd.choice((text, text.lower(), text.upper()))

    def one_or_list(values: tuple[str, ...]) -> str | list[str]:
        return values[0] if len(values) == 1 and rnd.random() < 0.5 else list(values)

    shown: dict[str, Any] = {}
    for op, values in s.conditions:
        if op.startswith("ip_"):
            key, texts = "qcs:ip", values
        else:
            key = "qcs:current_time"
            texts = tuple(iso(t, rnd.choice(("", ".0", ".5", ".999999")),
                              rnd.choice(("Z", "+00:00"))) for t in values)
        shown[name(op)] = {rnd.choice(("", " ")) + name(key): one_or_list(texts)}
    project = rnd.choice(("", "proj"))
    element = {
        name("Principal"): {name("qcs"): one_or_list(s.principals)},
        name("Effect"): name(s.effect),
        name("Action"): one_or_list(s.actions),
        name("Resource"): one_or_list(tuple(
            f"qcs:{project}:cdcs:{region}:uid/{APP}:{H_COFFER}/{key}"
            for region, key in s.resources)),
    }
    if shown:
        element[name("Condition")] = shown
    return element


def near_request(model: list[RefStatement], rnd: random.Random) -> RefRequest:
    """A request near one of the statements (its principal, action, region, AppID and a path
    its key pattern matches, each most often), so that decisions other than None are common."""
    near = rnd.choice(model)

    def mostly(own: tuple[Any, ...], others: tuple[Any, ...]) -> Any:
        return rnd.choice(own) if rnd.random() < 0.85 else rnd.choice(others)

    def run(most: int) -> str:
        return "".join(rnd.choice("ab/") for _ in range(rnd.randint(0, most)))

    region, key = rnd.choice(near.resources)
    if rnd.random() < 0.75:
        path = f"{H_COFFER}/" + "".join(
            part if i == 0 else run(2) + part for i, part in enumerate(key.split("*")))
    else:
        path = f"{rnd.choice((H_COFFER, f'd-{APP}'))}/{run(4)}"
    granted = tuple(a for a in ACTIONS if any(
        ref_wild(p.split(":", 1)[1].lower(), a.lower()) for p in near.actions))
    return RefRequest(
        principal=mostly(near.principals, (*H_PRINCIPALS, "qcs::cam::uin/9:uin/9")),
        action=mostly(granted, ACTIONS),
        region=mostly((region or rnd.choice(("ap-a", "ap-b")),), ("ap-a", "ap-b")),
        app_id=mostly((APP,), (OTHER_APP,)),
        path=path,
        ip=rnd.choice(H_CLIENTS),
        now=rnd.randint(T0 - 3, T0 + 3),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(REF_STATEMENTS, min_size=1, max_size=8), st.randoms(use_true_random=True))
def test_decide_matches_reference(model: list[RefStatement], rnd: random.Random) -> None:
    """Random policies decide random requests as the reference evaluator does, and so does
    their canonical form parsed again."""
    raw = json.dumps({"version": "2.0", "Statement": [rendered(s, rnd) for s in model]})
    policy = parse(raw, H_SCOPE)
    again = parse(policy.text().encode(), H_SCOPE)
    assert again.document == policy.document
    for _ in range(8):
        req = near_request(model, rnd)
        expected = ref_decide(model, req)
        assert policy.decide(req.real()) == expected, (raw, req)
        assert again.decide(req.real()) == expected


# -- hostile documents and requests (found on review) ---------------------------------------


def test_many_stars_in_an_action_parse_in_linear_time() -> None:
    """A regular expression of '.*' pieces backtracked here for seconds (48 s for 12 stars)."""
    started = time.perf_counter()
    refused(document(statement(Action="name/cdcs:" + "*" * 40 + "X")), "names no operation")
    grants = parse(document(statement(Action="name/cdcs:" + "*" * 40 + "t")), SCOPE)
    assert time.perf_counter() - started < 0.5
    assert grants.statements[0].actions == {"CheckObject", "GetObject", "PutObject",
                                            "UploadPart"}


def test_many_stars_in_a_resource_decide_in_linear_time() -> None:
    """A caller-chosen 850-byte key against a pattern with many stars: no backtracking."""
    pattern = f"{COFFER}/" + "*/" * 20 + "*.txt"
    policy = parse(document(statement(Resource=f"qcs::cdcs::uid/{APP}:{pattern}")), SCOPE)
    long_key = f"{COFFER}/" + "a/" * 420 + "b"
    started = time.perf_counter()
    for _ in range(100):
        assert policy.decide(request(path=long_key)) is None
    assert time.perf_counter() - started < 0.5
    assert policy.decide(request(path=f"{COFFER}/" + "a/" * 20 + "b.txt")) == "allow"


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"[" * 20000, "it nests too deeply"),
    (b'{"version": ' + b"1" * 5000 + b', "Statement": []}', "a number in it is too long"),
], ids=["deep", "long-number"])
def test_json_the_decoder_cannot_take(raw: bytes, fragment: str) -> None:
    refused(raw, f"not valid JSON: {fragment}")


@pytest.mark.parametrize(("value", "ip", "expected"), [
    ("::ffff:10.0.0.0/104", "10.0.0.7", "deny"),
    ("::ffff:10.0.0.0/104", "::ffff:10.0.0.7", "deny"),
    ("::ffff:10.0.0.7", "10.0.0.7", "deny"),
    ("::ffff:10.0.0.0/120", "10.0.1.7", "allow"),
], ids=["block-v4-client", "block-mapped-client", "address", "outside"])
def test_an_ipv4_mapped_value_matches_the_ipv4_client(value: str, ip: str,
                                                       expected: str) -> None:
    """A deny written with IPv4-mapped addresses applies to the IPv4 client it names (the
    client's mapped address is compared as IPv4)."""
    raw = document(statement(), statement(Effect="deny",
                                          Condition={"ip_equal": {"qcs:ip": value}}))
    assert parse(raw, SCOPE).decide(request(ip=ip)) == expected


def test_a_stored_coffer_policy_keeps_principal_required() -> None:
    """Re-read from the store, a coffer policy is parsed with the coffer rules: a statement
    without Principal (which only an inline policy may have) is never taken to name anyone."""
    raw = document(statement(Principal=MISSING)).decode()
    with pytest.raises(PolicyError, match="is missing Principal"):
        stored(raw)
    assert stored(raw, inline=True).decide(request()) == "allow"
