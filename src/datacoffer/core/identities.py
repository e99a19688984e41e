"""Accounts, sub-accounts, API keys and the whitelist.

An account is a root identity with an AppID; a sub-account belongs to one account. SecretKeys
are sealed under the installation's root key before they reach the metadata store.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass

import sqlalchemy as sa

from datacoffer.core.clock import now_ms
from datacoffer.core.policy import Policy, principal_of
from datacoffer.meta.db import Database
from datacoffer.meta.schema import api_keys, identities
from datacoffer.rootkey import SealingKey

_ALNUM = string.ascii_letters + string.digits


class IdentityError(ValueError):
    """An operator's identity command cannot be done; the text says why."""


@dataclass(frozen=True)
class Identity:
    uin: str
    account_uin: str  #: the root's UIN: the identity's own for an account
    app_id: str  #: the account's AppID
    whitelisted: bool  #: the account's
    #: a temporary credential's inline policy: it must allow every request too
    inline_policy: Policy | None = None

    @property
    def is_root(self) -> bool:
        return self.uin == self.account_uin

    @property
    def principal(self) -> str:
        return principal_of(self.account_uin, self.uin)


@dataclass(frozen=True)
class ApiKey:
    secret_id: str
    secret_key: str
    enabled: bool
    identity: Identity


def new_secret_id() -> str:
    return "AKID" + "".join(secrets.choice(_ALNUM) for _ in range(32))


def new_secret_key() -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(32))


def _check_number(kind: str, value: str) -> None:
    if not value.isdigit() or not 1 <= len(value) <= 20:
        raise IdentityError(f"{kind} must be 1-20 digits, got {value!r}")


def hash_password(password: str) -> str:
    """A memory-hard (scrypt) hash for console passwords."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt$16384$8$1${salt.hex()}${digest.hex()}"


def with_identity(table: sa.Table, id_column: sa.Column) -> sa.Select:
    """The row of `table` (keys, temporary credentials) whose `id_column` is the bound
    `secret_id`, with its identity's columns and its account's: one query per request."""
    account = identities.alias("account")
    return (
        sa.select(table, account.c.uin.label("account_uin"), account.c.app_id,
                  account.c.whitelisted)
        .join(identities, identities.c.uin == table.c.uin)
        .join(account, account.c.uin == sa.func.coalesce(identities.c.parent_uin,
                                                           identities.c.uin))
        .where(id_column == sa.bindparam("secret_id")))


def identity_of(row: sa.Row, inline_policy: Policy | None = None) -> Identity:
    """The identity of a `with_identity` row."""
    return Identity(uin=row.uin, account_uin=row.account_uin, app_id=row.app_id,
                    whitelisted=row.whitelisted, inline_policy=inline_policy)


#: Built once: composing a statement costs more than running it.
_KEY_QUERY = with_identity(api_keys, api_keys.c.secret_id)


class Identities:
    def __init__(self, db: Database, root_key: SealingKey) -> None:
        self.db = db
        self.root_key = root_key

    # -- accounts and sub-accounts -------------------------------------------------------

    def create_account(self, app_id: str, uin: str, *, whitelisted: bool = True,
                       password: str | None = None) -> ApiKey:
        _check_number("AppID", app_id)
        _check_number("UIN", uin)
        with self.db.write() as conn:
            if conn.execute(sa.select(identities.c.uin).where(
                    (identities.c.uin == uin) | (identities.c.app_id == app_id))).first():
                raise IdentityError(f"an identity with UIN {uin} or AppID {app_id} exists")
            conn.execute(identities.insert().values(
                uin=uin, parent_uin=None, app_id=app_id, whitelisted=whitelisted,
                console_password=hash_password(password) if password else None,
                created_ms=now_ms()))
            return self._new_key(conn, uin)

    def create_subaccount(self, parent_uin: str, uin: str, *,
                          password: str | None = None) -> ApiKey:
        _check_number("UIN", uin)
        with self.db.write() as conn:
            parent = conn.execute(sa.select(identities).where(
                identities.c.uin == parent_uin)).first()
            if parent is None or parent.parent_uin is not None:
                raise IdentityError(f"no account with UIN {parent_uin}")
            if conn.execute(sa.select(identities.c.uin).where(identities.c.uin == uin)).first():
                raise IdentityError(f"an identity with UIN {uin} exists")
            conn.execute(identities.insert().values(
                uin=uin, parent_uin=parent_uin, app_id=None, whitelisted=False,
                console_password=hash_password(password) if password else None,
                created_ms=now_ms()))
            return self._new_key(conn, uin)

    def root_key_matches(self) -> bool:
        """Whether the root key opens the sealed secrets (checked on one key, if any)."""
        with self.db.read() as conn:
            row = conn.execute(sa.select(api_keys.c.secret_id, api_keys.c.sealed_key)
                               .limit(1)).first()
        if row is None:
            return True
        try:
            self.root_key.open(row.sealed_key, row.secret_id)
        except ValueError:
            return False
        return True

    def get(self, uin: str) -> Identity | None:
        with self.db.read() as conn:
            return self._identity(conn, uin)

    def _identity(self, conn: sa.Connection, uin: str) -> Identity | None:
        row = conn.execute(sa.select(identities).where(identities.c.uin == uin)).first()
        if row is None:
            return None
        account = row
        if row.parent_uin is not None:
            account = conn.execute(sa.select(identities).where(
                identities.c.uin == row.parent_uin)).one()
        return Identity(uin=row.uin, account_uin=account.uin, app_id=account.app_id,
                        whitelisted=account.whitelisted)

    # -- API keys --------------------------------------------------------------------------

    def _new_key(self, conn: sa.Connection, uin: str) -> ApiKey:
        secret_id, secret_key = new_secret_id(), new_secret_key()
        conn.execute(api_keys.insert().values(
            secret_id=secret_id, uin=uin, enabled=True, created_ms=now_ms(),
            sealed_key=self.root_key.seal(secret_key.encode(), secret_id)))
        identity = self._identity(conn, uin)
        assert identity is not None
        return ApiKey(secret_id, secret_key, True, identity)

    def create_key(self, uin: str) -> ApiKey:
        with self.db.write() as conn:
            if self._identity(conn, uin) is None:
                raise IdentityError(f"no identity with UIN {uin}")
            return self._new_key(conn, uin)

    def lookup_key(self, secret_id: str) -> ApiKey | None:
        """The key with this SecretId (enabled or not), or None. One query: it runs for
        every request."""
        with self.db.engine.connect() as conn:
            row = conn.execute(_KEY_QUERY, {"secret_id": secret_id}).first()
        if row is None:
            return None
        secret_key = self.root_key.open(row.sealed_key, secret_id).decode()
        return ApiKey(secret_id, secret_key, row.enabled, identity_of(row))

    def set_key_enabled(self, secret_id: str, enabled: bool) -> None:
        with self.db.write() as conn:
            result = conn.execute(api_keys.update().where(
                api_keys.c.secret_id == secret_id).values(enabled=enabled))
            if result.rowcount == 0:
                raise IdentityError(f"no key with SecretId {secret_id}")

    def delete_key(self, secret_id: str) -> None:
        with self.db.write() as conn:
            result = conn.execute(api_keys.delete().where(api_keys.c.secret_id == secret_id))
            if result.rowcount == 0:
                raise IdentityError(f"no key with SecretId {secret_id}")

    def list_keys(self, uin: str) -> list[dict[str, object]]:
        """The keys of an identity, without their secrets."""
        with self.db.read() as conn:
            if self._identity(conn, uin) is None:
                raise IdentityError(f"no identity with UIN {uin}")
            rows = conn.execute(sa.select(api_keys.c.secret_id, api_keys.c.enabled,
                                          api_keys.c.created_ms)
                                .where(api_keys.c.uin == uin)
                                .order_by(api_keys.c.created_ms, api_keys.c.secret_id))
            return [{"SecretId": r.secret_id, "Enabled": r.enabled, "CreatedMs": r.created_ms}
                    for r in rows]

    # -- the whitelist ---------------------------------------------------------------------

    def set_whitelisted(self, app_id: str, whitelisted: bool) -> None:
        with self.db.write() as conn:
            result = conn.execute(identities.update().where(
                (identities.c.app_id == app_id) & identities.c.parent_uin.is_(None))
                .values(whitelisted=whitelisted))
            if result.rowcount == 0:
                raise IdentityError(f"no account with AppID {app_id}")

    def require_account(self, app_id: str) -> None:
        """IdentityError unless an account has this AppID."""
        with self.db.read() as conn:
            found = conn.execute(sa.select(identities.c.uin).where(
                (identities.c.app_id == app_id) & identities.c.parent_uin.is_(None))).first()
        if found is None:
            raise IdentityError(f"no account with AppID {app_id}")

    def whitelist(self) -> list[dict[str, str]]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(identities.c.app_id, identities.c.uin).where(
                identities.c.whitelisted.is_(True)).order_by(identities.c.app_id))
            return [{"AppId": r.app_id, "Uin": r.uin} for r in rows]

    def counts(self) -> dict[str, int]:
        with self.db.read() as conn:
            accounts = conn.execute(sa.select(sa.func.count()).where(
                identities.c.parent_uin.is_(None))).scalar_one()
            subs = conn.execute(sa.select(sa.func.count()).where(
                identities.c.parent_uin.is_not(None))).scalar_one()
            keys = conn.execute(sa.select(sa.func.count()).select_from(api_keys)).scalar_one()
        return {"accounts": accounts, "subaccounts": subs, "keys": keys}
