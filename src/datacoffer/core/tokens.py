"""Temporary credentials: TmpSecretId, TmpSecretKey and Token, for 15 minutes to 36 hours.

The TmpSecretKey is sealed under the root key like a SecretKey; the Token, which proves
that the credentials were issued together, is kept only as its SHA-256, so a copy of the
metadata database yields neither. An inline policy narrows what the identity may do.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa

from datacoffer.core import policy
from datacoffer.core.clock import iso8601, now_ms
from datacoffer.core.identities import (
    ApiKey,
    Identities,
    IdentityError,
    identity_of,
    new_secret_id,
    new_secret_key,
    with_identity,
)
from datacoffer.meta.schema import temp_credentials

MIN_DURATION = 15 * 60
MAX_DURATION = 36 * 3600
DEFAULT_DURATION = 30 * 60

_LOOKUP = with_identity(temp_credentials, temp_credentials.c.tmp_secret_id)


class TokenRefused(Exception):
    """The token does not make these credentials valid; the text says why (for the log)."""


@dataclass(frozen=True)
class TempCredentials:
    tmp_secret_id: str
    tmp_secret_key: str
    token: str
    #: Unix seconds
    expired_time: int

    def document(self) -> dict[str, object]:
        return {"TmpSecretId": self.tmp_secret_id, "TmpSecretKey": self.tmp_secret_key,
                "Token": self.token, "ExpiredTime": self.expired_time}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class Tokens:
    def __init__(self, identities: Identities) -> None:
        self.identities = identities
        self.db = identities.db
        self.root_key = identities.root_key

    def issue(self, uin: str, duration: int = DEFAULT_DURATION, inline: bytes | None = None,
              regions: Collection[str] | None = None) -> TempCredentials:
        """New credentials for the identity `uin`; IdentityError says what is wrong,
        PolicyError what is wrong with the inline policy."""
        if not MIN_DURATION <= duration <= MAX_DURATION:
            raise IdentityError(f"the duration must be {MIN_DURATION} to {MAX_DURATION} "
                                f"seconds (15 minutes to 36 hours), got {duration}")
        document = None
        if inline is not None:
            document = policy.parse(inline, policy.Scope(regions=regions, inline=True)).text()
        if self.identities.get(uin) is None:
            raise IdentityError(f"no identity with UIN {uin}")
        tmp_secret_id, tmp_secret_key = new_secret_id(), new_secret_key()
        token = secrets.token_urlsafe(48)
        created = now_ms()
        expires = created + duration * 1000
        with self.db.write() as conn:
            conn.execute(temp_credentials.insert().values(
                tmp_secret_id=tmp_secret_id, uin=uin,
                sealed_key=self.root_key.seal(tmp_secret_key.encode(), tmp_secret_id),
                token_sha256=_digest(token), policy=document, created_ms=created,
                expires_ms=expires, revoked=False))
        return TempCredentials(tmp_secret_id, tmp_secret_key, token, expires // 1000)

    def lookup(self, tmp_secret_id: str, token: str) -> ApiKey:
        """The credentials as a key with its identity (and inline policy), or TokenRefused."""
        with self.db.engine.connect() as conn:
            row = conn.execute(_LOOKUP, {"secret_id": tmp_secret_id}).first()
        if row is None:
            raise TokenRefused(f"no temporary credentials {tmp_secret_id}")
        if not hmac.compare_digest(row.token_sha256, _digest(token)):
            raise TokenRefused(f"the token is not the one issued with {tmp_secret_id}")
        if row.revoked:
            raise TokenRefused(f"{tmp_secret_id} was revoked")
        if row.expires_ms <= now_ms():
            raise TokenRefused(f"{tmp_secret_id} expired at {iso8601(row.expires_ms)}")
        inline = policy.stored(row.policy, inline=True) if row.policy else None
        secret = self.root_key.open(row.sealed_key, tmp_secret_id).decode()
        return ApiKey(tmp_secret_id, secret, True, identity_of(row, inline))

    def revoke(self, *, tmp_secret_id: str | None = None, uin: str | None = None) -> int:
        """Revoke one credential, or every credential of an identity; how many were valid
        until now. IdentityError for credentials or an identity that never existed."""
        column, value = ((temp_credentials.c.tmp_secret_id, tmp_secret_id) if tmp_secret_id
                         else (temp_credentials.c.uin, uin))
        if uin is not None and self.identities.get(uin) is None:
            raise IdentityError(f"no identity with UIN {uin}")
        with self.db.write() as conn:
            if tmp_secret_id is not None and conn.execute(sa.select(column).where(
                    column == value)).first() is None:
                raise IdentityError(f"no temporary credentials {tmp_secret_id}")
            return conn.execute(temp_credentials.update().where(
                (column == value) & temp_credentials.c.revoked.is_(False)
                & (temp_credentials.c.expires_ms > now_ms())).values(revoked=True)).rowcount

    def listing(self, uin: str) -> list[dict[str, object]]:
        """An identity's temporary credentials, without their secrets."""
        now = now_ms()
        with self.db.read() as conn:
            rows = conn.execute(sa.select(temp_credentials).where(
                temp_credentials.c.uin == uin).order_by(temp_credentials.c.created_ms))
            return [{"TmpSecretId": r.tmp_secret_id, "ExpiredTime": r.expires_ms // 1000,
                     "State": ("revoked" if r.revoked else "expired" if r.expires_ms <= now
                               else "valid"),
                     "InlinePolicy": r.policy is not None} for r in rows]
