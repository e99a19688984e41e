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


def is_owner(identity: Identity, coffer: Coffer) -> bool:
    return identity.is_root and identity.account_uin == coffer.owner_uin


def denied(identity: Identity, action: str, resource: str, message: str | None = None
           ) -> CdcsError:
    return CdcsError("PolicyCheckFailed", message or
                     f"The coffer's policy does not allow {identity.principal} to {action} "
                     "here.", resource=resource)


def require_root(identity: Identity, action: str, resource: str) -> None:
    """Operations only an account's root identity may call (e.g. PutCoffer)."""
    if not identity.is_root:
        raise denied(identity, action, resource,
                     f"Only an account's root identity may call {action}.")


def _request(identity: Identity, action: str, coffer: Coffer, key: str, region: str,
             context: Context) -> Request:
    return Request(principal=identity.principal, action=action, region=region,
                   app_id=coffer.app_id, path=f"{coffer.name}/{key}", context=context)


def allowed(identity: Identity, action: str, coffer: Coffer, key: str, region: str,
            context: Context) -> bool:
    """Whether `identity` may do `action` (a policy action name) on `key` of `coffer`
    (`key` "" for a coffer-level action)."""
    if action in OWNER_ONLY:
        return is_owner(identity, coffer) and identity.inline_policy is None
    owner = is_owner(identity, coffer)
    if owner and identity.inline_policy is None:
        return True
    req = _request(identity, action, coffer, key, region, context)
    if identity.inline_policy is not None and not identity.inline_policy.allows(req):
        return False
    if owner:
        return True
    return coffer.policy is not None and policy.stored(coffer.policy).allows(req)


def require(identity: Identity, action: str, coffer: Coffer, key: str, region: str,
            context: Context) -> None:
    if not allowed(identity, action, coffer, key, region, context):
        resource = f"{coffer.name}/{key}" if key else coffer.name
        if action in OWNER_ONLY:
            raise denied(identity, action, resource,
                         f"Only the coffer owner's root identity may call {action}"
                         + (", and not with temporary credentials that carry an inline "
                            "policy." if is_owner(identity, coffer) else "."))
        inline = identity.inline_policy
        if inline is not None and not inline.allows(
                _request(identity, action, coffer, key, region, context)):
            raise denied(identity, action, resource,
                         "The inline policy of these temporary credentials does not "
                         f"allow {action} here.")
        raise denied(identity, action, resource)


def require_create(identity: Identity, name: str, region: str, context: Context
                   ) -> None:
    """PutCoffer: an account's root, within its credential's inline policy if any."""
    require_root(identity, "PutCoffer", name)
    if identity.inline_policy is not None and not identity.inline_policy.allows(Request(
            principal=identity.principal, action="PutCoffer", region=region,
            app_id=identity.app_id, path=f"{name}/", context=context)):
        raise denied(identity, "PutCoffer", name,
                     "The inline policy of these temporary credentials does not allow "
                     "PutCoffer here.")


def visible(identity: Identity, owned: list[Coffer], context: Context
            ) -> list[Coffer]:
    """GetService: the account's coffers that the identity may list."""
    if identity.is_root and identity.inline_policy is None:
        return owned
    return [c for c in owned
            if allowed(identity, "GetService", c, "", c.primary, context)]
