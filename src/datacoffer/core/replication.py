"""Replication: copy each stored object to every other Location of its coffer.

The queue lives in the metadata store (`replication_queue`, written with the object, see
core/copies.py), so it survives restarts and is shared by the server's background workers and
`admin run replication`. A copy is made blob by blob (core/integrity.py: stored bytes as they
are, checked before they count) and recorded in `object_copies` in the transaction that
removes its queue entry. A failed copy is retried with exponential back-off; the next attempt
simply starts again, so a worker killed mid-copy leaves only a temporary file, removed at the
next start.
"""

from __future__ import annotations

import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import sqlalchemy as sa

from datacoffer.core.clock import now_ms
from datacoffer.core.coffers import STORED, Coffers
from datacoffer.core.copies import record_copy, report_damage
from datacoffer.core.integrity import BadCopy, copy_blob
from datacoffer.core.keyring import Keyring
from datacoffer.core.objects import Objects
from datacoffer.core.throttle import Throttle
from datacoffer.errors import CdcsError
from datacoffer.meta.db import Database
from datacoffer.meta.schema import coffers, object_copies, objects, replication_queue

log = logging.getLogger("datacoffer.replication")

#: queue entries read at a time
BATCH = 64


@dataclass(frozen=True)
class Entry:
    object_id: int
    region: str
    coffer_id: int
    coffer: str
    key: str
    attempts: int


@dataclass(frozen=True)
class Copied:
    coffer: str
    key: str
    region: str
    bytes: int


@dataclass(frozen=True)
class Failed:
    coffer: str
    key: str
    region: str
    error: str
    attempts: int
    retry_ms: int


@dataclass
class ReplicationPass:
    copied: list[Copied] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)


@dataclass(frozen=True)
class Lag:
    """The queue as a whole: copies owed, the oldest one's age, and how many have failed."""

    pending: int
    oldest_ms: int | None
    failing: int

    def seconds(self, now: int) -> float:
        return 0.0 if self.oldest_ms is None else max(0, now - self.oldest_ms) / 1000


_QUEUE = (
    sa.select(replication_queue.c.object_id, replication_queue.c.region,
              replication_queue.c.coffer_id, replication_queue.c.attempts,
              coffers.c.name.label("coffer"), objects.c.key)
    .join(objects, objects.c.id == replication_queue.c.object_id)
    .join(coffers, coffers.c.id == replication_queue.c.coffer_id))
#: a batch of entries after a given one
_ENTRIES = (
    _QUEUE.where(sa.tuple_(replication_queue.c.object_id, replication_queue.c.region)
                 > sa.tuple_(sa.bindparam("after_id"), sa.bindparam("after_region")))
    .order_by(replication_queue.c.object_id, replication_queue.c.region).limit(BATCH))
_ENTRY = _QUEUE.where((replication_queue.c.object_id == sa.bindparam("object_id"))
                      & (replication_queue.c.region == sa.bindparam("region")))


def _entry(row: sa.Row) -> Entry:
    return Entry(row.object_id, row.region, row.coffer_id, row.coffer, row.key, row.attempts)
_HELD_BY = sa.select(object_copies.c.region).where(
    object_copies.c.object_id == sa.bindparam("object_id"))


class Replication:
    def __init__(self, db: Database, coffers_: Coffers, objects_: Objects, keyring: Keyring,
                 *, workers: int, retry_max_seconds: int, rate: int) -> None:
        self.db = db
        self.coffers = coffers_
        self.objects = objects_
        self.keyring = keyring
        self.workers = workers
        self.retry_max_ms = retry_max_seconds * 1000
        self.throttle = Throttle(rate)

    def run(self, *, due_only: bool = True,
            stop: threading.Event | None = None) -> ReplicationPass:
        """One pass over the queue: every entry due now (with `due_only`, as the background
        workers do), or every entry whatever its back-off (an operator's pass), once. `stop`
        ends it after the batch in hand."""
        result = ReplicationPass()
        after: tuple[int, str] = (0, "")
        with ThreadPoolExecutor(self.workers, thread_name_prefix="replicate") as pool:
            while stop is None or not stop.is_set():
                query = _ENTRIES.where(replication_queue.c.next_ms <= now_ms()) \
                    if due_only else _ENTRIES
                with self.db.read() as conn:
                    rows = conn.execute(query, {"after_id": after[0],
                                                "after_region": after[1]}).all()
                if not rows:
                    return result
                after = (rows[-1].object_id, rows[-1].region)
                for outcome in pool.map(self._attempt, map(_entry, rows)):
                    if isinstance(outcome, Copied):
                        result.copied.append(outcome)
                    elif outcome is not None:
                        result.failed.append(outcome)
        return result

    def run_entry(self, object_id: int, region: str) -> Copied | Failed | None:
        """Make the copy owed to `region` now (a repair the scrubber asks for)."""
        with self.db.read() as conn:
            row = conn.execute(_ENTRY, {"object_id": object_id, "region": region}).first()
        return None if row is None else self._attempt(_entry(row))

    def _attempt(self, entry: Entry) -> Copied | Failed | None:
        """Copy one entry's object, or record the failure and when to try again."""
        try:
            return self._copy(entry)
        except (OSError, BadCopy, CdcsError) as exc:
            reason = exc.message if isinstance(exc, CdcsError) else str(exc)
            error = f"{type(exc).__name__}: {reason}"[:256]
        attempts = entry.attempts + 1
        # exponential back-off, 1 s, 2 s, 4 s ... up to retry_max, each waited 0.5-1 times
        # (so that copies failing together do not all come back at once)
        delay = random.uniform(0.5, 1.0) * min(self.retry_max_ms,
                                               1000 * 2 ** min(attempts - 1, 30))
        retry = now_ms() + int(delay)
        with self.db.write(durable=False) as conn:
            conn.execute(replication_queue.update().where(
                (replication_queue.c.object_id == entry.object_id)
                & (replication_queue.c.region == entry.region)).values(
                attempts=attempts, next_ms=retry, last_error=error))
        log.warning("copy of %s/%s to %s failed (attempt %d, next in %.0f s): %s",
                    entry.coffer, entry.key, entry.region, attempts, delay / 1000, error)
        return Failed(entry.coffer, entry.key, entry.region, error, attempts, retry)

    def _copy(self, entry: Entry) -> Copied | None:
        obj = self.objects.stored(entry.object_id)
        coffer = self.coffers.by_id(entry.coffer_id)
        if obj is None or coffer is None:
            return None  # expired meanwhile: its entry went with it
        open_key = self.keyring.opener(coffer)
        with self.db.engine.connect() as conn:
            held = set(conn.execute(_HELD_BY, {"object_id": obj.id}).scalars())
        # the primary first: it holds every object, and the others' copies came from it
        sources = [self.objects.stores[r] for r in coffer.locations
                   if r in held and r != entry.region]
        target = self.objects.stores[entry.region]
        blobs = self.objects.blobs(obj)
        copied = 0
        for blob in blobs:
            problems = []
            for source in sources:
                try:
                    copy_blob(source, target, blob.blob_id, blob.size, blob.sha256, open_key,
                              self.throttle)
                    break
                except BadCopy as exc:
                    report_damage(self.db, obj.id, source.name, blob.blob_id, str(exc),
                                  "replication")
                    problems.append(f"{source.name}: {exc}")
            else:
                raise BadCopy("no region holds a good copy (" + "; ".join(problems) + ")"
                              if problems else "no other region holds a copy to copy from")
            copied += target.size_of(blob.blob_id)
        if not self._record(entry):
            if entry.region not in held:  # expired while we copied: nothing refers to it
                for blob in blobs:
                    target.remove(blob.blob_id)
            return None
        return Copied(entry.coffer, entry.key, entry.region, copied)

    def _record(self, entry: Entry) -> bool:
        """Count the copy and drop its entry, if the object is still stored."""
        with self.db.write() as conn:
            state = conn.execute(sa.select(objects.c.state).where(
                objects.c.id == entry.object_id)).scalar()
            if state != STORED:
                return False
            done = conn.execute(replication_queue.delete().where(
                (replication_queue.c.object_id == entry.object_id)
                & (replication_queue.c.region == entry.region))).rowcount
            if done:  # (another worker may have recorded it first)
                record_copy(conn, entry.object_id, entry.region, now_ms())
        return True

    def lag(self) -> Lag:
        q = replication_queue
        with self.db.read() as conn:
            pending, oldest, failing = conn.execute(sa.select(
                sa.func.count(), sa.func.min(q.c.created_ms),
                sa.func.count().filter(q.c.attempts > 0))).one()
        return Lag(pending, oldest, failing)
