"""The service role: which accounts let the coffer service use their KMS keys."""

from __future__ import annotations

import sqlalchemy as sa

from datacoffer.core.clock import now_ms
from datacoffer.meta.db import Database
from datacoffer.meta.schema import service_roles


class Roles:
    def __init__(self, db: Database) -> None:
        self.db = db

    def grant(self, app_id: str) -> None:
        with self.db.write() as conn:
            if not self._granted(conn, app_id):
                conn.execute(service_roles.insert(), {"app_id": app_id, "granted_ms": now_ms()})

    def revoke(self, app_id: str) -> None:
        with self.db.write() as conn:
            conn.execute(service_roles.delete().where(service_roles.c.app_id == app_id))

    def granted(self, app_id: str) -> bool:
        with self.db.read() as conn:
            return self._granted(conn, app_id)

    @staticmethod
    def _granted(conn: sa.Connection, app_id: str) -> bool:
        return conn.execute(sa.select(service_roles.c.app_id)
                            .where(service_roles.c.app_id == app_id)).first() is not None
