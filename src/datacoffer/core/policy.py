"""The policy language (security.md, "Coffer policies"): parse, show, evaluate.

A document is parsed once, when it is stored, into statements whose principals and actions
are sets (wildcards expanded over the finite list of actions) and whose resources are
wildcard patterns matched in linear time, so that deciding a request is a loop of set
look-ups.

The same language serves two kinds of policy: a coffer's policy, whose resources must name
that coffer, and a temporary credential's inline policy, which may name any coffer and needs
no Principal (it applies to the credential's identity).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from datacoffer.core import conditions
from datacoffer.core.conditions import ConditionError, Context, Predicate
from datacoffer.core.wildcards import Wildcard

MAX_DOCUMENT = 20 * 1024
VERSION = "2.0"
ALLOW, DENY = "allow", "deny"

#: The actions a policy can grant: the operations of api.md (HeadObject is CheckObject),
#: except the policy operations themselves, which stay the owner's.
ACTIONS = (
    "GetService", "PutCoffer", "GetCoffer", "DeleteCoffer", "PutCofferLifecycle",
    "GetCofferLifecycle", "PutObject", "GetObject", "CheckObject", "InitiateMultipartUpload",
    "UploadPart", "ListParts", "CompleteMultipartUpload", "AbortMultipartUpload",
    "ListMultipartUploads")
OWNER_ONLY = ("PutCofferPolicy", "GetCofferPolicy", "DeleteCofferPolicy")
ACTION_PREFIX = "name/cdcs:"

_PRINCIPAL = re.compile(r"qcs::cam::uin/([0-9]{1,20}):uin/([0-9]{1,20})")
_TOP = ("version", "Statement")
_STATEMENT = ("Principal", "Effect", "Action", "Resource", "Condition")


class PolicyError(ValueError):
    """A document that is not a valid policy; the text names the fault."""


@dataclass(frozen=True)
class Request:
    """What a policy decides about: who does what to which resource, from where and when."""

    principal: str
    action: str
    region: str
    app_id: str
    #: `<Coffer>/<Key>`, or `<Coffer>/` for a coffer-level action
    path: str
    context: Context


@dataclass(frozen=True)
class Resource:
    region: str  #: "" matches every region
    app_id: str
    pattern: Wildcard

    def matches(self, req: Request) -> bool:
        return ((not self.region or self.region == req.region) and self.app_id == req.app_id
                and self.pattern.fullmatch(req.path))


@dataclass(frozen=True)
class Statement:
    effect: str
    #: None: any principal (an inline policy without Principal)
    principals: frozenset[str] | None
    actions: frozenset[str]
    resources: tuple[Resource, ...]
    conditions: tuple[Predicate, ...]

    def matches(self, req: Request) -> bool:
        return ((self.principals is None or req.principal in self.principals)
                and req.action in self.actions
                and any(r.matches(req) for r in self.resources)
                and all(test(req.context) for test in self.conditions))


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]
    #: the canonical document, as GetCofferPolicy shows it
    document: dict[str, Any]
    #: the statements that name each principal, and those that name none (inline policies):
    #: a decision looks only at the statements that can apply to its requester
    by_principal: dict[str, tuple[Statement, ...]] = field(init=False, repr=False)
    anyone: tuple[Statement, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        index: dict[str, list[Statement]] = {}
        for statement in self.statements:
            for principal in statement.principals or ():
                index.setdefault(principal, []).append(statement)
        object.__setattr__(self, "by_principal", {p: tuple(s) for p, s in index.items()})
        object.__setattr__(self, "anyone", tuple(s for s in self.statements
                                                 if s.principals is None))

    def decide(self, req: Request) -> str | None:
        """DENY if a matching statement denies, else ALLOW if one allows, else None. (The
        order of the statements does not matter: a deny anywhere wins.)"""
        allowed = False
        for statements in (self.by_principal.get(req.principal, ()), self.anyone):
            for statement in statements:
                if statement.matches(req):
                    if statement.effect == DENY:
                        return DENY
                    allowed = True
        return ALLOW if allowed else None

    def allows(self, req: Request) -> bool:
        return self.decide(req) == ALLOW

    def text(self) -> str:
        return json.dumps(self.document, ensure_ascii=False)


@dataclass(frozen=True)
class Scope:
    """Where a policy applies. `coffer` and `app_id` are set for a coffer's policy (its
    resources must name them); `regions` are the configured ones (None: not checked)."""

    coffer: str | None = None
    app_id: str | None = None
    regions: Collection[str] | None = None
    inline: bool = False


# -- parsing ------------------------------------------------------------------------------


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose names are all different (json.loads would keep the last)."""
    found: dict[str, Any] = {}
    for name, value in pairs:
        if name in found:
            raise PolicyError(f"the element {name!r} is given twice in one object")
        found[name] = value
    return found


def _elements(obj: Any, names: tuple[str, ...], where: str,
              required: tuple[str, ...]) -> dict[str, Any]:
    """The elements of a JSON object under their canonical names (matched ignoring case)."""
    if not isinstance(obj, dict):
        raise PolicyError(f"{where} must be a JSON object")
    found: dict[str, Any] = {}
    canonical = {n.lower(): n for n in names}
    for name, value in obj.items():
        key = canonical.get(name.lower())
        if key is None:
            raise PolicyError(f"{where} has an unknown element {name!r}; "
                              f"allowed: {', '.join(names)}")
        if key in found:
            raise PolicyError(f"{where} has {key} twice")
        found[key] = value
    for name in required:
        if name not in found:
            raise PolicyError(f"{where} is missing {name}")
    return found


def _strings(value: Any, where: str) -> list[str]:
    """A string or a non-empty list of strings, as a list."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise PolicyError(f"{where} must be a string or a non-empty list of strings")
    return items


def _principals(value: Any, where: str) -> list[str]:
    if not isinstance(value, dict) or [k.lower() for k in value] != ["qcs"]:
        raise PolicyError(f'{where} must be {{"qcs": ["qcs::cam::uin/<OwnerUin>:uin/<Uin>"]}}')
    entries = _strings(next(iter(value.values())), where)
    for entry in entries:
        if entry.strip() == "*":
            raise PolicyError(f"{where}: '*' is not allowed; name each identity")
        if not _PRINCIPAL.fullmatch(entry):
            raise PolicyError(f"{where}: {entry!r} is not qcs::cam::uin/<OwnerUin>:uin/<Uin>")
    return entries


def _actions(values: list[str], where: str) -> frozenset[str]:
    granted: set[str] = set()
    for value in values:
        name = value[len(ACTION_PREFIX):] if value.lower().startswith(ACTION_PREFIX) else None
        if not name:
            raise PolicyError(f"{where}: {value!r} is not name/cdcs:<Operation>")
        pattern = Wildcard.of(name.lower())
        matched = {a for a in ACTIONS if pattern.fullmatch(a.lower())}
        if not matched and any(pattern.fullmatch(o.lower()) for o in OWNER_ONLY):
            raise PolicyError(f"{where}: {value!r} cannot be granted; the policy operations "
                              "stay the owner's")
        if not matched:
            hint = " (HeadObject's action is CheckObject)" if name.lower() == "headobject" else ""
            raise PolicyError(f"{where}: {value!r} names no operation of the API{hint}")
        granted |= matched
    return frozenset(granted)


def _resource(value: str, where: str, scope: Scope) -> Resource:
    segments = value.split(":", 5)
    if (len(segments) != 6 or segments[0] != "qcs" or segments[2] != "cdcs"
            or not segments[4].startswith("uid/")):
        raise PolicyError(f"{where}: {value!r} is not "
                          "qcs:<project>:cdcs:<region>:uid/<AppID>:<Coffer>/<Key>")
    region, app_id, path = segments[3], segments[4][4:], segments[5]
    if region and scope.regions is not None and region not in scope.regions:
        raise PolicyError(f"{where}: {value!r} names region {region!r}, which this server "
                          "does not have")
    if not app_id.isdigit():
        raise PolicyError(f"{where}: {value!r} has no AppID after uid/")
    if scope.app_id is not None and app_id != scope.app_id:
        raise PolicyError(f"{where}: {value!r} names AppID {app_id}, not this coffer's "
                          f"({scope.app_id})")
    # a request's path always has a '/', so a pattern with neither '/' nor '*' matches nothing
    if "/" not in path and "*" not in path:
        raise PolicyError(f"{where}: {value!r} has no <Coffer>/<Key> path")
    if scope.coffer is not None and not path.startswith(scope.coffer + "/"):
        raise PolicyError(f"{where}: {value!r} names another coffer; its path must start with "
                          f"{scope.coffer}/")
    return Resource(region, app_id, Wildcard.of(path))


def _conditions(value: Any, where: str) -> tuple[list[Predicate], dict[str, Any]]:
    if not isinstance(value, dict):
        raise PolicyError(f"{where} must be a JSON object of operators")
    tests, shown = [], {}
    for operator, keys in value.items():
        op = operator.strip().lower()
        if op in shown:
            raise PolicyError(f"{where}: the operator {op} is given twice")
        if op not in conditions.OPERATORS:
            raise PolicyError(f"{where}: unknown operator {operator!r}; known: "
                              f"{', '.join(conditions.OPERATORS)}")
        if not isinstance(keys, dict) or not keys:
            raise PolicyError(f"{where}.{op} must be an object such as "
                              f'{{"{conditions.OPERATORS[op]}": [...]}}')
        shown_keys: dict[str, list[str]] = {}
        for key, values in keys.items():
            if key.strip().lower() != conditions.OPERATORS[op]:
                raise PolicyError(f"{where}.{op}: unknown key {key!r}; {op} takes "
                                  f"{conditions.OPERATORS[op]}")
            if shown_keys:
                raise PolicyError(f"{where}.{op}: the key {conditions.OPERATORS[op]} is "
                                  "given twice")
            items = _strings(values, f"{where}.{op}.{key.strip()}")
            try:
                tests.append(conditions.predicate(op, items))
            except ConditionError as exc:
                raise PolicyError(f"{where}.{op}: {exc}") from None
            shown_keys[conditions.OPERATORS[op]] = items
        shown[op] = shown_keys
    return tests, shown


def _statement(obj: Any, where: str, scope: Scope) -> tuple[Statement, dict[str, Any]]:
    required = ("Effect", "Action", "Resource") if scope.inline else _STATEMENT[:4]
    el = _elements(obj, _STATEMENT, where, required)
    effect = el["Effect"].lower() if isinstance(el["Effect"], str) else None
    if effect not in (ALLOW, DENY):
        raise PolicyError(f"{where}.Effect must be allow or deny")
    principals = (None if "Principal" not in el
                  else _principals(el["Principal"], f"{where}.Principal"))
    actions = _strings(el["Action"], f"{where}.Action")
    resources = _strings(el["Resource"], f"{where}.Resource")
    tests, shown_conditions = ([], None) if "Condition" not in el else _conditions(
        el["Condition"], f"{where}.Condition")
    statement = Statement(
        effect=effect,
        principals=None if principals is None else frozenset(principals),
        actions=_actions(actions, f"{where}.Action"),
        resources=tuple(_resource(r, f"{where}.Resource", scope) for r in resources),
        conditions=tuple(tests))
    shown: dict[str, Any] = {}
    if principals is not None:
        shown["Principal"] = {"qcs": principals}
    shown |= {"Effect": effect, "Action": actions, "Resource": resources}
    if shown_conditions is not None:
        shown["Condition"] = shown_conditions
    return statement, shown


def parse(raw: bytes | str, scope: Scope) -> Policy:
    """The policy of a document, or PolicyError naming the first fault found."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > MAX_DOCUMENT:
        raise PolicyError(f"the document is {size} bytes; a policy may have at most "
                          f"{MAX_DOCUMENT} (20 KiB)")
    return _parse(raw, scope)


def _parse(raw: bytes | str, scope: Scope) -> Policy:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        doc = json.loads(text, object_pairs_hook=_unique)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, PolicyError):
            raise
        reason = (exc.msg if isinstance(exc, json.JSONDecodeError) else
                  "it is not UTF-8" if isinstance(exc, UnicodeDecodeError) else
                  "it nests too deeply" if isinstance(exc, RecursionError) else
                  "a number in it is too long")
        raise PolicyError(f"the document is not valid JSON: {reason}") from None
    top = _elements(doc, _TOP, "the document", _TOP)
    if top["version"] != VERSION:
        raise PolicyError(f'version must be "{VERSION}"')
    if not isinstance(top["Statement"], list):
        raise PolicyError("Statement must be a list of statements")
    parsed = [_statement(s, f"Statement[{i}]", scope) for i, s in enumerate(top["Statement"])]
    policy = Policy(statements=tuple(s for s, _ in parsed),
                    document={"version": VERSION, "Statement": [shown for _, shown in parsed]})
    try:
        policy.text().encode("utf-8")
    except UnicodeEncodeError:
        raise PolicyError("the document has an unpaired surrogate escape (\\ud800-\\udfff), "
                          "which is not a character") from None
    return policy


@functools.lru_cache(maxsize=256)
def stored(text: str, *, inline: bool = False) -> Policy:
    """A document checked when it was stored (a coffer's, or with `inline` a temporary
    credential's), parsed once per distinct text: deciding a request then costs no parse.
    (Its canonical text may be longer than the 20 KiB that was sent.)"""
    return _parse(text, Scope(inline=inline))


def principal_of(account_uin: str, uin: str) -> str:
    return f"qcs::cam::uin/{account_uin}:uin/{uin}"
