"""Who may do what to a coffer.

The owning account's root identity may do everything. Everybody else — its sub-accounts and
other accounts — gets only what the coffer's policy grants. Coffer policies are not stored yet,
so for now nothing is granted to them (deny by default).
"""

from __future__ import annotations

from datacoffer.core.coffers import Coffer
from datacoffer.core.identities import Identity
from datacoffer.errors import CdcsError


def is_owner(identity: Identity, coffer: Coffer) -> bool:
    return identity.is_root and identity.account_uin == coffer.owner_uin


def allowed(identity: Identity, action: str, coffer: Coffer) -> bool:
    """Whether `identity` may do `action` (a policy action name, e.g. "GetObject") here."""
    return is_owner(identity, coffer)


def require(identity: Identity, action: str, coffer: Coffer, resource: str) -> None:
    if not allowed(identity, action, coffer):
        raise CdcsError(
            "PolicyCheckFailed",
            f"The coffer's policy does not allow {identity.principal} to {action} here.",
            resource=resource)


def require_root(identity: Identity, action: str, resource: str) -> None:
    """Operations only an account's root identity may call (e.g. PutCoffer)."""
    if not identity.is_root:
        raise CdcsError("PolicyCheckFailed",
                        f"Only an account's root identity may call {action}.",
                        resource=resource)
