"""Replication: copy each stored object to every other Location of its coffer.

The queue lives in the metadata store (`replication_queue`, written with the object, see
core/copies.py), so it survives restarts and is shared by the server's background workers and
`admin run replication`. A copy is made blob by blob (core/integrity.py: stored bytes as they
are, checked before they count) and recorded in `object_copies` in the transaction that
removes its queue entry. A failed copy is retried with exponential back-off; the next attempt
simply starts again, so a worker killed mid-copy leaves only a temporary file, removed at the
next start. A worker claims an entry before copying it (a holder and a lease on the row, taken
by a conditional update), so that the processes of one installation make each copy once; the
claim of a process that died is taken over (at once on the same host, else once it lapses).
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
from datacoffer.meta.schema import coffers, objects, replication_queue

log = logging.getLogger("datacoffer.replication")

#: queue entries read at a time
BATCH = 64
#: how long a claim on an entry holds; renewed after each blob copied
CLAIM_MS = 10 * 60 * 1000


@dataclass(frozen=True)
class Entry:
    object_id: int
    region: str
    coffer_id: int
    coffer: str
    key: str
    attempts: int
    #: the claim on the entry when it was read ("" when free)
    holder: str
    lease_until_ms: int


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
              replication_queue.c.holder, replication_queue.c.lease_until_ms,
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
    return Entry(row.object_id, row.region, row.coffer_id, row.coffer, row.key, row.attempts,
                 row.holder, row.lease_until_ms)


def _row_of(entry: Entry) -> sa.ColumnElement[bool]:
    return ((replication_queue.c.object_id == entry.object_id)
            & (replication_queue.c.region == entry.region))


class Replication:
    def __init__(self, db: Database, coffers_: Coffers, objects_: Objects, keyring: Keyring,
                 *, workers: int, retry_max_seconds: int, rate: int,
                 stop: threading.Event | None = None) -> None:
        """`stop`: once set, a pass ends where it is (Stopped), its entries still owed."""
        self.db = db
        self.coffers = coffers_
        self.objects = objects_
        self.keyring = keyring
        self.workers = workers
        self.retry_max_ms = retry_max_seconds * 1000
        self.throttle = Throttle(rate, stop)

    def run(self, *, due_only: bool = True) -> ReplicationPass:
        """One pass over the queue: every entry due now (with `due_only`, as the background
        workers do), or every entry whatever its back-off (an operator's pass), once."""
        result = ReplicationPass()
        after: tuple[int, str] = (0, "")
        with ThreadPoolExecutor(self.workers, thread_name_prefix="replicate") as pool:
            while True:
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

    def run_entry(self, object_id: int, region: str) -> Copied | Failed | None:
        """Make the copy owed to `region` now (a repair the scrubber asks for)."""
        with self.db.read() as conn:
            row = conn.execute(_ENTRY, {"object_id": object_id, "region": region}).first()
        return None if row is None else self._attempt(_entry(row))

    def _claim(self, entry: Entry) -> bool:
        """Take the entry for this process, unless a live one holds it."""
        if entry.holder and not self.objects.lapsed(entry.holder, entry.lease_until_ms,
                                                    now_ms()):
            return False
        with self.db.write(durable=False) as conn:
            return conn.execute(replication_queue.update().where(
                _row_of(entry) & (replication_queue.c.holder == entry.holder)).values(
                holder=self.objects.holder, lease_until_ms=now_ms() + CLAIM_MS)).rowcount == 1

    def _renew(self, entry: Entry) -> None:
        with self.db.write(durable=False) as conn:
            conn.execute(replication_queue.update().where(
                _row_of(entry) & (replication_queue.c.holder == self.objects.holder)).values(
                lease_until_ms=now_ms() + CLAIM_MS))

    def _attempt(self, entry: Entry) -> Copied | Failed | None:
        """Claim the entry and copy its object, or record the failure and when to try
        again. None: another process holds it, or the object is gone."""
        if not self._claim(entry):
            return None
        try:
            return self._copy(entry)
        except (OSError, BadCopy, CdcsError) as exc:
            reason = exc.message if isinstance(exc, CdcsError) else str(exc)
            error = f"{type(exc).__name__}: {reason}"[:256]
        except BaseException:  # (stopping): the entry is free for the next pass at once
            with self.db.write(durable=False) as conn:
                conn.execute(replication_queue.update().where(_row_of(entry)).values(
                    holder="", lease_until_ms=0))
            raise
        attempts = entry.attempts + 1
        # exponential back-off, 1 s, 2 s, 4 s ... up to retry_max, each waited 0.5-1 times
        # (so that copies failing together do not all come back at once)
        delay = random.uniform(0.5, 1.0) * min(self.retry_max_ms,
                                               1000 * 2 ** min(attempts - 1, 30))
        retry = now_ms() + int(delay)
        with self.db.write(durable=False) as conn:
            conn.execute(replication_queue.update().where(_row_of(entry)).values(
                attempts=attempts, next_ms=retry, last_error=error, holder="",
                lease_until_ms=0))
        log.warning("copy of %s/%s to %s failed (attempt %d, next in %.0f s): %s",
                    entry.coffer, entry.key, entry.region, attempts, delay / 1000, error)
        return Failed(entry.coffer, entry.key, entry.region, error, attempts, retry)

    def _copy(self, entry: Entry) -> Copied | None:
        obj = self.objects.stored(entry.object_id)
        coffer = self.coffers.by_id(entry.coffer_id)
        if obj is None or coffer is None:
            return None  # expired meanwhile: its entry went with it
        open_key = self.keyring.opener(coffer)
        held = set(self.objects.regions_holding(obj))
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
                              self.objects.copy_tag, self.throttle)
                    break
                except BadCopy as exc:
                    report_damage(self.db, obj.id, source.name, blob.blob_id, str(exc),
                                  "replication")
                    problems.append(f"{source.name}: {exc}")
            else:
                raise BadCopy("no region holds a good copy (" + "; ".join(problems) + ")"
                              if problems else "no other region holds a copy to copy from")
            copied += target.size_of(blob.blob_id)
            self._renew(entry)
        if not self._record(entry):
            # expired while we copied: the sweeper may have removed its files before this
            # copy landed, and nothing refers to them any more
            for blob in blobs:
                target.remove(blob.blob_id)
            return None
        return Copied(entry.coffer, entry.key, entry.region, copied)

    def _record(self, entry: Entry) -> bool:
        """Count the copy and drop its entry, if the object is still stored."""
        with self.db.write() as conn:
            state = conn.execute(sa.select(objects.c.state).where(
                objects.c.id == entry.object_id).with_for_update()).scalar()
            if state != STORED:
                return False
            done = conn.execute(replication_queue.delete().where(_row_of(entry))).rowcount
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
