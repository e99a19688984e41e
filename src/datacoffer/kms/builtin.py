"""The built-in KMS: keys in the metadata store, their material sealed under the root key."""

from __future__ import annotations

import os
import uuid

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from datacoffer.core.clock import now_ms
from datacoffer.kms import KmsError, KmsKey
from datacoffer.meta.db import Database
from datacoffer.meta.schema import kms_keys
from datacoffer.rootkey import SealingKey


class BuiltinKms:
    def __init__(self, db: Database, root_key: SealingKey) -> None:
        self.db = db
        self.root_key = root_key

    def create_key(self, app_id: str, region: str) -> KmsKey:
        key_id = str(uuid.uuid4())
        sealed = self.root_key.seal(os.urandom(32), f"kms:{key_id}")
        with self.db.write() as conn:
            conn.execute(kms_keys.insert(), {
                "key_id": key_id, "app_id": app_id, "region": region, "enabled": True,
                "sealed_material": sealed, "created_ms": now_ms()})
        return KmsKey(key_id, app_id, region, True)

    def _row(self, key_id: str) -> sa.Row:
        with self.db.read() as conn:
            row = conn.execute(sa.select(kms_keys).where(kms_keys.c.key_id == key_id)).first()
        if row is None:
            raise KmsError(f"no key {key_id!r} in the built-in KMS")
        return row

    def describe(self, key_id: str) -> KmsKey:
        row = self._row(key_id)
        return KmsKey(row.key_id, row.app_id, row.region, row.enabled)

    def list_keys(self, app_id: str | None = None) -> list[KmsKey]:
        query = sa.select(kms_keys).order_by(kms_keys.c.created_ms)
        if app_id is not None:
            query = query.where(kms_keys.c.app_id == app_id)
        with self.db.read() as conn:
            return [KmsKey(r.key_id, r.app_id, r.region, r.enabled) for r in conn.execute(query)]

    def set_enabled(self, key_id: str, enabled: bool) -> KmsKey:
        with self.db.write() as conn:
            done = conn.execute(kms_keys.update().where(kms_keys.c.key_id == key_id)
                                .values(enabled=enabled))
        if done.rowcount != 1:
            raise KmsError(f"no key {key_id!r} in the built-in KMS")
        return self.describe(key_id)

    def _cipher(self, key_id: str) -> AESGCM:
        row = self._row(key_id)
        if not row.enabled:
            raise KmsError(f"key {key_id} is disabled")
        return AESGCM(self.root_key.open(row.sealed_material, f"kms:{key_id}"))

    def wrap(self, key_id: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._cipher(key_id).encrypt(nonce, plaintext, key_id.encode())

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        try:
            return self._cipher(key_id).decrypt(wrapped[:12], wrapped[12:], key_id.encode())
        except InvalidTag:
            raise KmsError(f"a data key does not unwrap with key {key_id}") from None
