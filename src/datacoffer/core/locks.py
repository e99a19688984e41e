"""AlreadyLock: one write at a time on a coffer's record (its policy, its lifecycle rule).

A writer takes the record's lock (a policy writer before it reads its request body) and
gives it back when it is done; a second writer meanwhile is refused at once (errors.md:
never a wait of more than a second). The lock is a row in the metadata store, so it holds
across server processes; its lease frees it if the holder dies, and the holder's final
write checks, in its own transaction, that the lock is still its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

from datacoffer.core.clock import now_ms
from datacoffer.core.coffers import Coffer
from datacoffer.errors import CdcsError
from datacoffer.meta.db import Database
from datacoffer.meta.schema import coffer_locks, coffers


@dataclass(frozen=True)
class Held:
    coffer: Coffer
    record: str
    lease_until_ms: int


def _row(held: Held) -> sa.ColumnElement[bool]:
    return ((coffer_locks.c.coffer_id == held.coffer.id)
            & (coffer_locks.c.record == held.record))


class RecordLocks:
    def __init__(self, db: Database, holder: str, lapsed: Callable[[str, int, int], bool],
                 lease_seconds: int) -> None:
        """`holder` names this process and `lapsed(holder, lease_until_ms, now)` tells
        whether another holder is gone (the object reservations' rule)."""
        self.db = db
        self.holder = holder
        self.lapsed = lapsed
        self.lease_ms = lease_seconds * 1000

    def _busy(self, record: str, coffer: Coffer) -> CdcsError:
        return CdcsError("AlreadyLock", f"Another request is changing this coffer's {record}; "
                         "retry later.", resource=coffer.name)

    def acquire(self, coffer: Coffer, record: str) -> Held:
        now = now_ms()
        # Every lease ends at a different millisecond, so a lease names its acquisition.
        held = Held(coffer, record, now + self.lease_ms)
        try:
            with self.db.write(durable=False) as conn:
                row = conn.execute(sa.select(coffer_locks).where(_row(held))
                                   .with_for_update()).first()
                if row is not None:
                    if not self.lapsed(row.holder, row.lease_until_ms, now):
                        raise self._busy(record, coffer)
                    conn.execute(coffer_locks.delete().where(_row(held)))
                conn.execute(coffer_locks.insert().values(
                    coffer_id=coffer.id, record=record, holder=self.holder,
                    lease_until_ms=held.lease_until_ms))
        except sa.exc.IntegrityError:
            # PostgreSQL: another writer inserted the row between our look and our insert
            # (or the coffer was deleted meanwhile: its next step says so)
            raise self._busy(record, coffer) from None
        return held

    def release(self, held: Held) -> None:
        with self.db.write(durable=False) as conn:
            conn.execute(coffer_locks.delete().where(
                _row(held) & (coffer_locks.c.holder == self.holder)
                & (coffer_locks.c.lease_until_ms == held.lease_until_ms)))

    @contextmanager
    def writing(self, held: Held) -> Iterator[sa.Connection]:
        """The holder's final write transaction: NoSuchCoffer if the coffer was deleted
        meanwhile, AlreadyLock if the lease lapsed and another writer took the record."""
        with self.db.write() as conn:
            if conn.execute(sa.select(coffers.c.id).where(
                    coffers.c.id == held.coffer.id)).first() is None:
                raise CdcsError("NoSuchCoffer", resource=held.coffer.name)
            row = conn.execute(sa.select(coffer_locks.c.holder, coffer_locks.c.lease_until_ms)
                               .where(_row(held))).first()
            if row is None or (row.holder, row.lease_until_ms) != (self.holder,
                                                                    held.lease_until_ms):
                raise self._busy(held.record, held.coffer)
            yield conn
