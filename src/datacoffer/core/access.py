"""Who may do what to a coffer (security.md, "Coffer policies").

The owning account's root identity may do everything; everybody else — its sub-accounts and
other accounts' roots — only what the coffer's policy allows (an explicit deny wins, no
match is a deny). A temporary credential's inline policy must allow the request as well,
even for the owner's root: it can only narrow. The policy operations stay the owner's.
"""

from __future__ import annotations

from datacoffer.core import policy
from datacoffer.core.coffers import Coffer
from datacoffer.core.conditions import Context
from datacoffer.core.identities import Identity
from datacoffer.core.policy import OWNER_ONLY, Request
from datacoffer.errors import CdcsError

_INLINE = "The inline policy of these temporary credentials does not allow {action} here."
_POLICY = "The coffer's policy does not allow {principal} to {action} here."


def is_owner(identity: Identity, coffer: Coffer) -> bool:
    return identity.is_root and identity.account_uin == coffer.owner_uin


def refusal(resource: str, message: str) -> CdcsError:
    return CdcsError("PolicyCheckFailed", message, resource=resource)


def require_root(identity: Identity, action: str, resource: str) -> None:
    """Operations only an account's root identity may call (e.g. PutCoffer)."""
    if not identity.is_root:
        raise refusal(resource, f"Only an account's root identity may call {action}.")


def _request(identity: Identity, action: str, app_id: str, path: str, region: str,
             context: Context) -> Request:
    return Request(principal=identity.principal, action=action, region=region, app_id=app_id,
                   path=path, context=context)


def _refused(identity: Identity, action: str, coffer: Coffer, key: str, region: str,
             context: Context) -> str | None:
    """Why `identity` may not do `action` (a policy action name) on `key` of `coffer` (`key`
    "" for a coffer-level action), as the message of the refusal; None when it may."""
    owner = is_owner(identity, coffer)
    inline = identity.inline_policy
    if action in OWNER_ONLY:
        if owner and inline is None:
            return None
        return (f"Only the coffer owner's root identity may call {action}"
                + (", and not with temporary credentials that carry an inline policy."
                   if owner else "."))
    if owner and inline is None:
        return None
    req = _request(identity, action, coffer.app_id, f"{coffer.name}/{key}", region, context)
    if inline is not None and not inline.allows(req):
        return _INLINE.format(action=action)
    if owner or (coffer.policy is not None and policy.stored(coffer.policy).allows(req)):
        return None
    return _POLICY.format(principal=identity.principal, action=action)


def allowed(identity: Identity, action: str, coffer: Coffer, key: str, region: str,
            context: Context) -> bool:
    return _refused(identity, action, coffer, key, region, context) is None


def require(identity: Identity, action: str, coffer: Coffer, key: str, region: str,
            context: Context) -> None:
    """PolicyCheckFailed, saying which rule refused, unless the request is allowed."""
    message = _refused(identity, action, coffer, key, region, context)
    if message is not None:
        raise refusal(f"{coffer.name}/{key}" if key else coffer.name, message)


def require_create(identity: Identity, name: str, region: str, context: Context) -> None:
    """PutCoffer: an account's root, within its credential's inline policy if any."""
    require_root(identity, "PutCoffer", name)
    inline = identity.inline_policy
    if inline is not None and not inline.allows(
            _request(identity, "PutCoffer", identity.app_id, f"{name}/", region, context)):
        raise refusal(name, _INLINE.format(action="PutCoffer"))


def visible(identity: Identity, owned: list[Coffer], context: Context) -> list[Coffer]:
    """GetService: the account's coffers that the identity may list."""
    if identity.is_root and identity.inline_policy is None:
        return owned
    return [c for c in owned if allowed(identity, "GetService", c, "", c.primary, context)]
