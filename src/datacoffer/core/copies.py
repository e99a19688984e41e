"""Which regions hold a copy of an object, and which are still owed one.

An object is stored in its coffer's primary region first; in the same transaction, every other
Location of the coffer gets an entry in the replication queue (service.md, "Regions and
replication"). The replication workers (core/replication.py) turn entries into copies.

A damaged or missing copy, found by a read, the scrubber or replication, is reported here: the
finding is kept (`integrity_findings`), and the region is owed a good copy again when another
region holds one, so that replication repairs it.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from datacoffer.core.clock import now_ms
from datacoffer.core.coffers import STORED, Coffer
from datacoffer.meta.db import Database
from datacoffer.meta.schema import (
    coffers,
    integrity_findings,
    object_copies,
    objects,
    replication_queue,
)

log = logging.getLogger("datacoffer.integrity")


def record_stored(conn: sa.Connection, object_id: int, coffer: Coffer, now: int) -> None:
    """In the transaction that makes an object stored: its primary copy exists, and each
    other Location is owed one."""
    conn.execute(object_copies.insert(), {"object_id": object_id, "region": coffer.primary,
                                          "created_ms": now})
    owed = [_owed(object_id, region, coffer.id, now) for region in coffer.locations[1:]]
    if owed:
        conn.execute(replication_queue.insert(), owed)
    # (deleting the object deletes its rows in both tables: their foreign keys cascade)



def _owed(object_id: int, region: str, coffer_id: int, now: int) -> dict[str, object]:
    """A queue entry: a copy of the object owed to the region, due now."""
    return {"object_id": object_id, "region": region, "coffer_id": coffer_id,
            "created_ms": now, "next_ms": now, "attempts": 0, "last_error": ""}


def report_damage(db: Database, object_id: int, region: str, blob_id: str, problem: str,
                  found_by: str) -> None:
    """Record that `region`'s copy of blob `blob_id` of an object is damaged or missing, and
    owe the region a good copy (unless it is owed one already, or no other region holds a
    copy to repair it from: then the finding stays open until a scrub finds the copy good,
    restored from a backup, say)."""
    now = now_ms()
    with db.write() as conn:
        row = conn.execute(sa.select(objects.c.coffer_id, objects.c.key,
                                     coffers.c.name.label("coffer"))
                           .join(coffers, coffers.c.id == objects.c.coffer_id)
                           .where((objects.c.id == object_id)
                                  & (objects.c.state == STORED))).first()
        if row is None:
            return  # expiring or expired: its files are going, that is no damage
        log.error("damaged copy of %s/%s in region %s (blob %s, found by %s): %s", row.coffer,
                  row.key, region, blob_id, found_by, problem)
        known = conn.execute(sa.select(integrity_findings.c.id).where(
            (integrity_findings.c.object_id == object_id)
            & (integrity_findings.c.region == region)
            & (integrity_findings.c.blob_id == blob_id)
            & integrity_findings.c.repaired_ms.is_(None)).limit(1)).first()
        if known is None:  # (a copy that stays bad is one finding, not one per look)
            conn.execute(integrity_findings.insert(), {
                "found_ms": now, "object_id": object_id, "coffer": row.coffer, "key": row.key,
                "region": region, "blob_id": blob_id, "problem": problem[:256],
                "found_by": found_by, "repaired_ms": None})
        owed = conn.execute(sa.select(replication_queue.c.object_id).where(
            (replication_queue.c.object_id == object_id)
            & (replication_queue.c.region == region))).first()
        elsewhere = conn.execute(sa.select(object_copies.c.region).where(
            (object_copies.c.object_id == object_id)
            & (object_copies.c.region != region)).limit(1)).first()
        if owed is None and elsewhere is not None:
            try:  # (another process may owe it at the same moment: one entry is enough)
                with conn.begin_nested():
                    conn.execute(replication_queue.insert(),
                                 _owed(object_id, region, row.coffer_id, now))
            except sa.exc.IntegrityError:
                pass


def record_copy(conn: sa.Connection, object_id: int, region: str, now: int) -> None:
    """In the transaction that ends a region's queue entry: the region holds a good copy
    (again: a repaired copy closes its findings)."""
    held = conn.execute(sa.select(object_copies.c.region).where(
        (object_copies.c.object_id == object_id) & (object_copies.c.region == region))).first()
    if held is None:
        conn.execute(object_copies.insert(), {"object_id": object_id, "region": region,
                                              "created_ms": now})
    close_findings(conn, [object_id], now, region)


def open_findings(db: Database, object_id: int | None = None) -> set[tuple[int, str]]:
    """(object id, region) of the copies (of one object, or all) with findings not yet
    repaired."""
    f = integrity_findings
    query = sa.select(f.c.object_id, f.c.region).where(f.c.repaired_ms.is_(None))
    if object_id is not None:
        query = query.where(f.c.object_id == object_id)
    with db.read() as conn:
        return {(found, region) for found, region in conn.execute(query)}


def close_findings(conn: sa.Connection, object_ids: list[int], now: int,
                   region: str | None = None) -> None:
    """The objects' copies in `region` (or all their copies, gone with them) are good again
    or no more: their open findings are closed."""
    f = integrity_findings
    which = f.c.object_id.in_(object_ids) & f.c.repaired_ms.is_(None)
    if region is not None:
        which &= f.c.region == region
    conn.execute(f.update().where(which).values(repaired_ms=now))


def findings(db: Database, latest: int = 10) -> tuple[int, int, list[sa.Row]]:
    """Damage found so far: how many findings, how many not yet repaired, the latest ones."""
    f = integrity_findings
    with db.read() as conn:
        found, unrepaired = conn.execute(sa.select(
            sa.func.count(), sa.func.count().filter(f.c.repaired_ms.is_(None)))).one()
        rows = conn.execute(sa.select(f).order_by(f.c.id.desc()).limit(latest)).all() \
            if latest else []
    return found, unrepaired, list(rows)
