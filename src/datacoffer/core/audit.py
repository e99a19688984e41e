"""The audit log: every request that reached a coffer and every lifecycle deletion, in a hash
chain (service.md, "Audit log").

Entry N holds the hash of entry N-1 and its own: the SHA-256 of its number, fields and that
previous hash. Editing, removing or reordering an entry breaks a link that `verify` finds;
anyone holding an export can check it, no key needed. The chain's head (last number and hash)
is also kept in `audit_head`, which every append locks, so that appends of several processes
(the server, the operator's `admin run lifecycle`) chain one after another.

Requests are recorded by `AuditWriter`: entries wait in memory for a moment and are written
in one transaction per batch, and a request is answered only once its entry is committed
(group commit): no acknowledged request is ever missing from the log, and a request pays for
one shared commit, not one of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import sqlalchemy as sa

from datacoffer.meta.db import Database
from datacoffer.meta.schema import AUDIT_GENESIS, audit_head, audit_log

log = logging.getLogger("datacoffer.audit")

GENESIS = AUDIT_GENESIS
#: entries read at a time by verify and export
PAGE = 1000


#: longest resource kept in an entry, characters (a coffer name, '/', the longest key, with
#: room for escapes); a longer one, from a request no key rule allows, is cut
MAX_RESOURCE = 2048
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def storable(text: str, limit: int = MAX_RESOURCE) -> str:
    """`text` fit for an entry in any metadata store: bytes that are not UTF-8 (kept as
    surrogates) and control characters (NUL, which PostgreSQL refuses) as \\xNN, at most
    `limit` characters."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = text.translate(_CONTROL)
    return text if len(text) <= limit else text[:limit - 1] + "…"


@dataclass(frozen=True)
class AuditEntry:
    time_ms: int
    request_id: str
    identity: str
    source: str
    operation: str
    resource: str
    status: int
    code: str


def entry_hash(seq: int, entry: AuditEntry, prev_hash: str) -> str:
    material = [seq, entry.time_ms, entry.request_id, entry.identity, entry.source,
                entry.operation, entry.resource, entry.status, entry.code, prev_hash]
    return hashlib.sha256(json.dumps(material, ensure_ascii=False, separators=(",", ":"))
                          .encode("utf-8")).hexdigest()


_LOCK_HEAD = sa.select(audit_head.c.seq, audit_head.c.hash).where(
    audit_head.c.id == 1).with_for_update()


def append(conn: sa.Connection, entries: list[AuditEntry]) -> None:
    """Chain `entries` onto the log, in the caller's write transaction."""
    if not entries:
        return
    head = conn.execute(_LOCK_HEAD).one()  # (made with the schema: meta/db.py)
    seq, prev = head.seq, head.hash
    rows = []
    for entry in entries:
        seq += 1
        digest = entry_hash(seq, entry, prev)
        rows.append({"seq": seq, "time_ms": entry.time_ms, "request_id": entry.request_id,
                     "identity": entry.identity, "source": entry.source,
                     "operation": entry.operation, "resource": entry.resource,
                     "status": entry.status, "code": entry.code, "prev_hash": prev,
                     "hash": digest})
        prev = digest
    conn.execute(audit_log.insert(), rows)
    conn.execute(audit_head.update().where(audit_head.c.id == 1).values(seq=seq, hash=prev))


@dataclass(frozen=True)
class Verdict:
    entries: int
    head_seq: int
    head_hash: str
    #: the first broken link: its entry number and what is wrong (None: the chain holds)
    broken_seq: int | None = None
    reason: str = ""


def _rows(db: Database, since_ms: int | None = None,
          until: int | None = None) -> Iterator[sa.Row]:
    after = 0
    while True:
        query = sa.select(audit_log).where(audit_log.c.seq > after)
        if until is not None:
            query = query.where(audit_log.c.seq <= until)
        if since_ms is not None:
            query = query.where(audit_log.c.time_ms >= since_ms)
        with db.read() as conn:
            rows = conn.execute(query.order_by(audit_log.c.seq).limit(PAGE)).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].seq


def _entry(row: sa.Row) -> AuditEntry:
    return AuditEntry(row.time_ms, row.request_id, row.identity, row.source, row.operation,
                      row.resource, row.status, row.code)


def head(db: Database) -> tuple[int, str]:
    """The chain's head as recorded: the number of entries and the last one's hash."""
    with db.read() as conn:
        row = conn.execute(sa.select(audit_head.c.seq, audit_head.c.hash)).first()
    return (row.seq, row.hash) if row else (0, GENESIS)


def verify(db: Database) -> Verdict:
    """Walk the chain from its first entry to the head as it is now (entries appended while
    it walks are the next verify's); stop at the first link that does not hold."""
    head_seq, head_hash = head(db)
    count, expected_seq, prev = 0, 1, GENESIS

    def broken(seq: int, reason: str) -> Verdict:
        return Verdict(count, head_seq, head_hash, seq, reason)

    for row in _rows(db, until=head_seq):
        if row.seq != expected_seq:
            return broken(expected_seq, f"entry {expected_seq} is missing (the next one is "
                                        f"{row.seq})")
        if row.prev_hash != prev:
            return broken(row.seq, "its previous-entry hash is not the hash of the entry "
                                   "before it (entries removed or reordered)")
        if entry_hash(row.seq, _entry(row), row.prev_hash) != row.hash:
            return broken(row.seq, "its hash does not match its contents (the entry was "
                                   "edited)")
        count += 1
        expected_seq, prev = row.seq + 1, row.hash
    if count != head_seq:
        return broken(count + 1, f"the chain ends at entry {count} but its head says "
                                 f"{head_seq} (entries removed from the end)")
    if prev != head_hash:
        return broken(count + 1, "the last entry's hash is not the one its head recorded "
                                 "(entries were rewritten)")
    return Verdict(count, head_seq, head_hash)


def export(db: Database, since_ms: int | None = None) -> Iterator[dict[str, object]]:
    """The entries (from `since_ms` on), as documents of their fields and hashes."""
    for row in _rows(db, since_ms):
        yield {"Seq": row.seq, "Time": row.time_ms, "RequestId": row.request_id,
               "Identity": row.identity, "Source": row.source, "Operation": row.operation,
               "Resource": row.resource, "Status": row.status, "Code": row.code,
               "PrevHash": row.prev_hash, "Hash": row.hash}


class AuditWriter:
    """Group commit of request entries: `record` returns once its entry is committed."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: list[tuple[AuditEntry, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()

    async def record(self, entry: AuditEntry) -> None:
        """Append an entry; raises if it could not be committed."""
        done = asyncio.get_running_loop().create_future()
        self._pending.append((entry, done))
        self._wake.set()
        await done

    async def run(self) -> None:
        """Write the waiting entries, a batch per transaction, until cancelled (entries that
        are waiting then are still written)."""
        try:
            while True:
                await self._wake.wait()
                await self._flush()
        finally:
            with anyio.CancelScope(shield=True):
                await self._flush()

    async def _flush(self) -> None:
        self._wake.clear()
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await anyio.to_thread.run_sync(self._write, [entry for entry, _ in batch])
        except Exception:
            if len(batch) == 1:
                log.exception("could not write an audit entry")
                _settle(batch[0][1], sys.exc_info()[1])
                return
            # one entry a store refuses must not fail the others: each on its own
            for entry, done in batch:
                try:
                    await anyio.to_thread.run_sync(self._write, [entry])
                except Exception as exc:
                    log.exception("could not write an audit entry")
                    _settle(done, exc)
                else:
                    _settle(done, None)
            return
        for _, done in batch:
            _settle(done, None)

    def _write(self, entries: list[AuditEntry]) -> None:
        with self.db.write() as conn:
            append(conn, entries)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # (its request went away)
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
