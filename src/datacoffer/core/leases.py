"""Installation-wide background tasks that one process at a time does (the scrub pass).

A lease is a row in the metadata store (`worker_leases`): the holder ("host:pid:token") and
when its claim lapses. Another process takes it over once the holder is gone (at once on the
same host, else when the lease lapses), the rule of the object reservations.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from datacoffer.core.clock import now_ms
from datacoffer.meta.db import Database
from datacoffer.meta.schema import worker_leases


class Leases:
    def __init__(self, db: Database, holder: str,
                 lapsed: Callable[[str, int, int], bool]) -> None:
        self.db = db
        self.holder = holder
        self.lapsed = lapsed

    def take(self, name: str, ms: int) -> bool:
        """Hold `name` for `ms`, unless another live process holds it."""
        now = now_ms()
        try:
            with self.db.write(durable=False) as conn:
                row = conn.execute(sa.select(worker_leases).where(
                    worker_leases.c.name == name).with_for_update()).first()
                if row is None:
                    conn.execute(worker_leases.insert().values(
                        name=name, holder=self.holder, lease_until_ms=now + ms))
                    return True
                if row.holder != self.holder and not self.lapsed(row.holder,
                                                                 row.lease_until_ms, now):
                    return False
                conn.execute(worker_leases.update().where(worker_leases.c.name == name)
                             .values(holder=self.holder, lease_until_ms=now + ms))
                return True
        except sa.exc.IntegrityError:  # (PostgreSQL: another process inserted it first)
            return False

    def release(self, name: str) -> None:
        with self.db.write(durable=False) as conn:
            conn.execute(worker_leases.delete().where(
                (worker_leases.c.name == name) & (worker_leases.c.holder == self.holder)))
