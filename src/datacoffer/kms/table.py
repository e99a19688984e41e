"""The KMS keys this installation knows: owner, region and whether it is enabled.

Both KMS back-ends keep these rows in the metadata store (`kms_keys`); the built-in one also
keeps the key material there, sealed under the root key, while an external key manager keeps
its own (the row then has no material).
"""

from __future__ import annotations

import sqlalchemy as sa

from datacoffer.core.clock import now_ms
from datacoffer.kms import KmsError, KmsKey
from datacoffer.meta.db import Database
from datacoffer.meta.schema import kms_keys


class KeyTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, key_id: str, app_id: str, region: str, material: bytes = b"") -> KmsKey:
        with self.db.write() as conn:
            conn.execute(kms_keys.insert(), {
                "key_id": key_id, "app_id": app_id, "region": region, "enabled": True,
                "sealed_material": material, "created_ms": now_ms()})
        return KmsKey(key_id, app_id, region, True)

    def row(self, key_id: str) -> sa.Row:
        with self.db.read() as conn:
            row = conn.execute(sa.select(kms_keys).where(kms_keys.c.key_id == key_id)).first()
        if row is None:
            raise KmsError(f"no key {key_id!r} in the KMS")
        return row

    def describe(self, key_id: str) -> KmsKey:
        row = self.row(key_id)
        return KmsKey(row.key_id, row.app_id, row.region, row.enabled)

    def enabled_row(self, key_id: str) -> sa.Row:
        row = self.row(key_id)
        if not row.enabled:
            raise KmsError(f"key {key_id} is disabled")
        return row

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
            raise KmsError(f"no key {key_id!r} in the KMS")
        return self.describe(key_id)
