"""The lifecycle sweeper: the only way an object leaves a coffer (service.md, "Lifecycle").

An object expires `Days` (its coffer's rule) after its upload completed. Expiring it takes
three steps: its row is marked "expiring" (from then on it is neither read nor listed, and
its key is not yet free), its files are removed from every region, then its rows are
deleted, which frees the key. A crash between the steps leaves rows marked "expiring";
every pass finishes those first, and so does the server's start.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from datacoffer.core import audit, clock
from datacoffer.core.coffers import EXPIRING, STORED
from datacoffer.core.copies import close_findings
from datacoffer.core.lifecycle import DAY_MS
from datacoffer.core.objects import Objects
from datacoffer.meta.db import Database
from datacoffer.meta.schema import (
    coffer_lifecycles,
    coffers,
    objects,
    parts,
    uploads,
)

log = logging.getLogger("datacoffer.lifecycle")

#: objects expired per transaction
BATCH = 200


@dataclass(frozen=True)
class Expired:
    coffer: str
    key: str
    size: int
    created_ms: int
    expired_ms: int


_due = (objects.c.created_ms + coffer_lifecycles.c.days * DAY_MS).label("due")
#: A batch of stored objects whose coffer's rule says they are due at `now`. Built once:
#: composing a statement costs more than running it.
_DUE = (sa.select(objects.c.id, objects.c.key, objects.c.size, objects.c.created_ms,
                  coffers.c.name, _due)
        .join(coffers, coffers.c.id == objects.c.coffer_id)
        .join(coffer_lifecycles, coffer_lifecycles.c.coffer_id == coffers.c.id)
        .where((objects.c.state == STORED) & (_due <= sa.bindparam("now")))
        .order_by(objects.c.id).limit(BATCH)
        # (PostgreSQL: a concurrent sweeper's batch is skipped, not expired and logged twice)
        .with_for_update(skip_locked=True, of=objects))


def _blob_ids(conn: sa.Connection, ids: list[int]) -> list[str]:
    """The blobs of these objects: a simple object's own, a multipart object's parts'."""
    simple = conn.execute(sa.select(objects.c.blob_id).where(
        objects.c.id.in_(ids) & (objects.c.blob_id != ""))).scalars().all()
    of_parts = conn.execute(sa.select(parts.c.blob_id).join(
        uploads, uploads.c.upload_id == parts.c.upload_id).where(
        uploads.c.object_id.in_(ids))).scalars().all()
    return [*simple, *of_parts]


class Expiry:
    def __init__(self, db: Database, objects_: Objects) -> None:
        self.db = db
        self.objects = objects_

    def sweep(self, now_ms: int) -> list[Expired]:
        """One pass as of `now_ms`: finish what a crash left, then expire every object whose
        time has come, in batches."""
        self.finish()
        expired: list[Expired] = []
        while True:
            batch = self._mark(now_ms)
            if not batch:
                return expired
            self.finish()
            for gone in batch:
                log.info("expired %s/%s (%d bytes, uploaded at %d ms, due at %d ms)",
                         gone.coffer, gone.key, gone.size, gone.created_ms, gone.expired_ms)
            expired += batch

    def _mark(self, now_ms: int) -> list[Expired]:
        """Mark a batch of due objects "expiring" (they are no longer served) and write their
        deletions to the audit log, in one transaction."""
        pass_id = f"lifecycle-{secrets.token_hex(8)}"
        with self.db.write() as conn:
            rows = conn.execute(_DUE, {"now": now_ms}).all()
            if rows:
                conn.execute(objects.update().where(
                    objects.c.id.in_([r.id for r in rows]) & (objects.c.state == STORED))
                    .values(state=EXPIRING))
                audit.append(conn, [audit.AuditEntry(
                    clock.now_ms(), pass_id, "lifecycle", "-", "LifecycleExpire",
                    f"{r.name}/{r.key}", 204, "OK") for r in rows])
        return [Expired(r.name, r.key, r.size, r.created_ms, r.due) for r in rows]

    def finish(self) -> int:
        """Remove the files of the objects marked "expiring", then their rows (which frees
        their keys). Returns how many were finished."""
        with self.db.read() as conn:
            ids = list(conn.execute(sa.select(objects.c.id).where(
                objects.c.state == EXPIRING)).scalars())
            blob_ids = _blob_ids(conn, ids) if ids else []
        if not ids:
            return 0
        for blob_id in blob_ids:
            self.objects.remove_blob(blob_id)
        with self.db.write() as conn:
            # damage found in their copies is over: the copies are gone
            close_findings(conn, ids, clock.now_ms())
            upload_ids = sa.select(uploads.c.upload_id).where(uploads.c.object_id.in_(ids))
            conn.execute(parts.delete().where(parts.c.upload_id.in_(upload_ids)))
            conn.execute(uploads.delete().where(uploads.c.object_id.in_(ids)))
            conn.execute(objects.delete().where(objects.c.id.in_(ids)
                                                & (objects.c.state == EXPIRING)))
        return len(ids)
