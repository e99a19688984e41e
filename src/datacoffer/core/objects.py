"""Objects: the key reservation, durable writes, verified reads, and crash recovery.

Every key has at most one row in `objects`. A PutObject first inserts the row in state
"writing" (the reservation: it lives in the metadata store, so it holds across processes and
machines), streams the bytes to a temporary blob, commits the blob (fsync, rename) and only then
turns the row into "stored" in one transaction. The reservation carries its holder
(host:pid:token) and a lease that the writer renews; a reservation whose holder died is
reclaimed, its files removed, and the key is free again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import anyio
import sqlalchemy as sa

from datacoffer.core.clock import now_ms
from datacoffer.core.coffers import EXPIRING, STORED, WRITING, Coffer
from datacoffer.core.copies import record_stored, report_damage
from datacoffer.core.identities import Identity
from datacoffer.core.ingest import write_leased
from datacoffer.core.keyring import KeyOpener, Keyring
from datacoffer.core.reading import Blob, CorruptData, checked_bytes
from datacoffer.crypto import envelope
from datacoffer.errors import CdcsError
from datacoffer.meta.db import Database
from datacoffer.meta.schema import coffers, object_copies, objects, parts, uploads
from datacoffer.storage.blobs import RegionStore, new_blob_id

log = logging.getLogger("datacoffer.objects")

DEFAULT_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class StoredObject:
    id: int
    key: str
    size: int
    etag: str
    sha256: str
    content_type: str
    created_ms: int
    writer_uin: str
    blob_id: str
    encrypt_type: int
    coffer_id: int
    #: chunk CRC-32s of a simple plain object's blob (core/checksums.py)
    crcs: bytes = b""


@dataclass(frozen=True)
class Reservation:
    object_id: int
    coffer: Coffer
    key: str
    blob_id: str
    writer_uin: str


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# The statements of the hot paths are built once: composing one costs more than running it.
_SHARE_COFFER = (sa.select(coffers.c.id).where(coffers.c.id == sa.bindparam("coffer_id"))
                 .with_for_update(read=True))
_FIND_KEY = sa.select(objects).where((objects.c.coffer_id == sa.bindparam("coffer_id"))
                                     & (objects.c.key == sa.bindparam("key")))
_MINE = ((objects.c.id == sa.bindparam("object_id")) & (objects.c.holder == sa.bindparam("me"))
         & (objects.c.state == WRITING))
_RENEW = objects.update().where(_MINE).values(lease_until_ms=sa.bindparam("until"))
_CANCEL = objects.delete().where(_MINE)
_FINISH = objects.update().where(_MINE).values(
    state=STORED, size=sa.bindparam("b_size"), etag=sa.bindparam("b_etag"),
    sha256=sa.bindparam("b_sha256"), content_type=sa.bindparam("b_content_type"),
    crcs=sa.bindparam("b_crcs"),
    created_ms=sa.bindparam("b_created"), holder="", lease_until_ms=0)
#: The parts that make a completed multipart object, in order.
_SEGMENTS = (
    sa.select(parts.c.blob_id, parts.c.size, parts.c.sha256, parts.c.crcs)
    .join(uploads, uploads.c.upload_id == parts.c.upload_id)
    .where((uploads.c.object_id == sa.bindparam("object_id")) & (parts.c.state == STORED))
    .order_by(parts.c.part_number))
#: A stored object and whether a region holds its copy.
_HEAD = (
    sa.select(objects, object_copies.c.region.label("held_in"))
    .outerjoin(object_copies, (object_copies.c.object_id == objects.c.id)
               & (object_copies.c.region == sa.bindparam("region")))
    .where((objects.c.coffer_id == sa.bindparam("coffer_id"))
           & (objects.c.key == sa.bindparam("key")) & (objects.c.state == STORED)))


class Objects:
    def __init__(self, db: Database, stores: dict[str, RegionStore], keyring: Keyring, *,
                 lease_seconds: int, max_object_size: int, body_timeout: int = 60) -> None:
        self.db = db
        self.stores = stores
        self.keyring = keyring
        self.lease_ms = lease_seconds * 1000
        self.max_object_size = max_object_size
        self.body_timeout = body_timeout
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.token = secrets.token_hex(8)
        self.holder = f"{self.host}:{self.pid}:{self.token}"
        #: names this process in the temporary files of its copies between regions
        self.copy_tag = f"{self.pid}.{_host_tag(self.host)}"

    # -- reservations ------------------------------------------------------------------------

    def lapsed(self, holder: str, lease_until_ms: int, now: int) -> bool:
        """Whether a "writing" reservation's holder is gone, so the key may be reclaimed."""
        if lease_until_ms < now:
            return True
        host, pid, token = [*holder.rsplit(":", 2), "", "", ""][:3]
        if host != self.host or not pid.isdigit():
            return False
        if int(pid) == self.pid:
            return token != self.token
        return not _pid_alive(int(pid))

    def _discard(self, conn: sa.Connection, object_id: int, blob_id: str) -> None:
        conn.execute(objects.delete().where(objects.c.id == object_id))
        self.remove_blob(blob_id)

    def remove_blob(self, blob_id: str) -> None:
        """Remove a blob's files from every region. A region that fails (a disk error) is
        logged and the rest still cleaned: the blob is unreferenced garbage either way."""
        for store in self.stores.values():
            try:
                store.remove(blob_id)
            except OSError as exc:
                log.error("could not remove blob %s from region %s: %s", blob_id,
                          store.name, exc)

    def take_key(self, conn: sa.Connection, coffer: Coffer, key: str, writer: Identity,
                 state: str) -> tuple[int, str]:
        """In the caller's write transaction: insert the row that holds `key` (state WRITING
        for a PutObject, MULTIPART for an upload), or refuse with the code that says who holds
        it. Returns the row's id and its new blob id."""
        resource = f"{coffer.name}/{key}"
        now = now_ms()
        # Share-lock the coffer row: DeleteCoffer takes it exclusively.
        if conn.execute(_SHARE_COFFER, {"coffer_id": coffer.id}).first() is None:
            raise CdcsError("CofferNotFound", resource=resource)
        row = conn.execute(_FIND_KEY, {"coffer_id": coffer.id, "key": key}).first()
        if row is not None:
            if row.state == STORED:
                code = ("ObjectAlreadyExistsOwnedByYou" if row.writer_uin == writer.uin
                        else "ObjectAlreadyExists")
                raise CdcsError(code, resource=resource)
            if row.state == EXPIRING:
                raise CdcsError("AlreadyLock", "The object under this key is being expired by "
                                "the coffer's lifecycle rule; retry in a moment.",
                                resource=resource)
            if row.state != WRITING or not self.lapsed(row.holder, row.lease_until_ms, now):
                raise CdcsError("ObjectAlreadyUploading", resource=resource)
            log.info("reclaiming lapsed reservation of %s (holder %s)", resource, row.holder)
            self._discard(conn, row.id, row.blob_id)
        leased = state == WRITING
        blob_id = new_blob_id() if leased else ""
        result = conn.execute(objects.insert(), {
            "coffer_id": coffer.id, "key": key, "state": state, "writer_uin": writer.uin,
            "blob_id": blob_id, "created_ms": now, "holder": self.holder if leased else "",
            "lease_until_ms": now + 3 * self.lease_ms if leased else 0,
            "encrypt_type": coffer.encrypt_type, "content_type": "", "size": 0, "etag": "",
            "sha256": ""})
        (object_id,) = result.inserted_primary_key
        return object_id, blob_id

    def reserve(self, coffer: Coffer, key: str, writer: Identity) -> Reservation:
        """Take the key for a PutObject, or refuse with the code that says who holds it."""
        for _ in range(3):
            try:
                with self.db.write(durable=False) as conn:
                    object_id, blob_id = self.take_key(conn, coffer, key, writer, WRITING)
                return Reservation(object_id, coffer, key, blob_id, writer.uin)
            except sa.exc.IntegrityError:
                continue  # another writer inserted the key between our look and our insert
        raise CdcsError("ObjectAlreadyUploading", resource=f"{coffer.name}/{key}")

    def renew(self, res: Reservation) -> bool:
        with self.db.write(durable=False) as conn:
            result = conn.execute(_RENEW, {"object_id": res.object_id, "me": self.holder,
                                           "until": now_ms() + 3 * self.lease_ms})
            return result.rowcount == 1

    def cancel(self, res: Reservation) -> None:
        """Give the key back and remove whatever was written."""
        with self.db.write(durable=False) as conn:  # a lost cancel is reclaimed at start
            conn.execute(_CANCEL, {"object_id": res.object_id, "me": self.holder})
        self.remove_blob(res.blob_id)

    def finish(self, res: Reservation, *, size: int, etag: str, sha256: str,
               content_type: str, crcs: bytes = b"") -> StoredObject:
        """Make a committed blob the object of its key (the blob is already durable)."""
        created = now_ms()
        with self.db.write() as conn:
            result = conn.execute(_FINISH, {
                "object_id": res.object_id, "me": self.holder, "b_size": size, "b_etag": etag,
                "b_sha256": sha256, "b_content_type": content_type, "b_crcs": crcs,
                "b_created": created})
            if result.rowcount != 1:
                raise RuntimeError(f"reservation {res.object_id} was reclaimed during the write")
            record_stored(conn, res.object_id, res.coffer, created)
        return StoredObject(
            id=res.object_id, key=res.key, size=size, etag=etag, sha256=sha256,
            content_type=content_type, created_ms=created, writer_uin=res.writer_uin,
            blob_id=res.blob_id, encrypt_type=res.coffer.encrypt_type,
            coffer_id=res.coffer.id, crcs=crcs)

    # -- writing -----------------------------------------------------------------------------

    async def put(self, coffer: Coffer, key: str, writer: Identity,
                  body: AsyncIterator[bytes], length: int, content_type: str,
                  content_md5: bytes | None) -> StoredObject:
        """Store a new object from a byte stream of exactly `length` bytes."""
        # the coffer's key is checked (and a data key wrapped) before the key is taken
        sealer = (None if coffer.encrypt_type == 0
                  else await anyio.to_thread.run_sync(self.keyring.sealer, coffer))
        res = await anyio.to_thread.run_sync(self.reserve, coffer, key, writer)
        return await write_leased(
            self.stores[coffer.primary], res.blob_id, body, length, content_md5,
            resource=f"{coffer.name}/{key}", idle_timeout=self.body_timeout,
            lease_seconds=self.lease_ms / 1000, renew=lambda: self.renew(res),
            cancel=lambda: self.cancel(res),
            finish=lambda d: self.finish(res, size=d.size, etag=d.etag, sha256=d.sha256,
                                         crcs=d.crcs,
                                         content_type=content_type or DEFAULT_CONTENT_TYPE),
            sealer=sealer)

    # -- reading -----------------------------------------------------------------------------

    def head(self, coffer: Coffer, key: str, region: str) -> StoredObject:
        """The stored object at `key`, as held in `region`."""
        with self.db.engine.connect() as conn:
            row = conn.execute(_HEAD, {"coffer_id": coffer.id, "key": key,
                                       "region": region}).first()
        if row is None:
            raise CdcsError("ObjectNotExists", resource=f"{coffer.name}/{key}")
        if row.held_in is None:
            raise CdcsError("DataSynchronization",
                            f"Region {region} has not yet received this object; retry later.",
                            resource=f"{coffer.name}/{key}")
        return _row_to_object(row)

    def stored(self, object_id: int) -> StoredObject | None:
        """The object with this row id, if it is (still) stored."""
        with self.db.engine.connect() as conn:
            row = conn.execute(sa.select(objects).where(
                (objects.c.id == object_id) & (objects.c.state == STORED))).first()
        return _row_to_object(row) if row else None

    def blobs(self, obj: StoredObject) -> list[Blob]:
        """The blobs that make the object, in order: one for a simple object, its parts for a
        multipart one."""
        if obj.blob_id:
            return [Blob(obj.blob_id, obj.size, obj.sha256, obj.crcs)]
        with self.db.engine.connect() as conn:
            rows = conn.execute(_SEGMENTS, {"object_id": obj.id}).all()
        return [Blob(r.blob_id, r.size, r.sha256, r.crcs or b"") for r in rows]

    def segments(self, obj: StoredObject) -> list[tuple[int, int, str]]:
        """(offset, size, SHA-256) of each part of the object, in order; a simple object is
        one part."""
        spans, offset = [], 0
        for blob in self.blobs(obj):
            spans.append((offset, blob.size, blob.sha256))
            offset += blob.size
        return spans

    def read(self, obj: StoredObject, region: str, start: int, length: int,
             open_key: KeyOpener | None = None) -> Iterator[bytes]:
        """The bytes [start, start+length) of the copy in `region`, decrypted with `open_key`
        (`Keyring.opener`) when the object is encrypted, each checked before it is yielded
        (core/reading.py). At a damaged or missing blob the read goes on, from the same byte,
        in another region that holds a copy; the damage is reported and its repair queued."""
        others: list[str] | None = None  # the other regions holding a copy, once needed
        offset, end = 0, start + length
        for blob in self.blobs(obj):
            if offset + blob.size > start and offset < end:
                pos = max(start, offset) - offset
                stop = min(end, offset + blob.size) - offset
                # each blob from the addressed region first, then from the others in turn
                candidates = iter([region])
                source = next(candidates)
                refused: list[str] = []  # regions whose data key of this blob the KMS refused
                while True:
                    try:
                        for chunk in checked_bytes(self.stores[source], blob, pos, stop - pos,
                                                   open_key):
                            pos += len(chunk)
                            yield chunk
                        break
                    except CorruptData as exc:
                        self._damaged(obj, source, blob, str(exc))
                        if not exc.resumable:
                            raise
                        failure: Exception = exc
                    except CdcsError as exc:
                        if exc.code.name != "KMSFailed":
                            raise
                        refused.append(source)
                        failure = exc
                    if others is None:
                        others = [r for r in self.regions_holding(obj) if r != region]
                    if source == region:
                        candidates = iter(others)
                    source = next(candidates, None)
                    if source is None:
                        raise failure
                    log.warning("reading %s from region %s instead", blob.blob_id, source)
                for bad in refused:  # another copy's key unwraps: this one is damaged
                    self._damaged(obj, bad, blob, f"blob {blob.blob_id} in region {bad}: its "
                                  f"wrapped data key does not unwrap, region {source}'s does")
            offset += blob.size

    def _damaged(self, obj: StoredObject, region: str, blob: Blob, problem: str) -> None:
        """Report damage met by a read; a report that fails (a store refusing the write)
        must not stop the read from going on elsewhere."""
        try:
            report_damage(self.db, obj.id, region, blob.blob_id, problem, "read")
        except Exception:
            log.exception("could not record the damage of blob %s in region %s",
                          blob.blob_id, region)

    def regions_holding(self, obj: StoredObject) -> list[str]:
        """The regions that hold a copy of the object, the oldest copy first."""
        with self.db.engine.connect() as conn:
            return list(conn.execute(
                sa.select(object_copies.c.region).where(object_copies.c.object_id == obj.id)
                .order_by(object_copies.c.created_ms)).scalars())

    def preflight(self, obj: StoredObject, region: str, open_key: KeyOpener) -> None:
        """Unwrap the first blob's data key before a streamed answer starts, so that the KMS's
        refusal (KMSFailed: no copy's key unwraps) is an error answer; damaged data is left
        for the read to find."""
        blob_id = self.blobs(obj)[0].blob_id
        refusal: CdcsError | None = None
        for source in [region, *(r for r in self.regions_holding(obj) if r != region)]:
            try:
                with self.stores[source].open_blob(blob_id) as fh:
                    header, _ = envelope.Header.read(
                        lambda offset, n: os.pread(fh.fileno(), n, offset))
                open_key(header)
                return
            except (envelope.DecryptError, OSError):
                return  # damaged or missing: the read finds it and turns to another copy
            except CdcsError as exc:  # refused here: a damaged key, or the KMS's refusal
                if exc.code.name != "KMSFailed":
                    raise
                refusal = refusal or exc
        if refusal is not None:  # no copy's key unwraps: the KMS refuses
            raise refusal

    # -- recovery ----------------------------------------------------------------------------

    def reclaim_lapsed(self, coffer: Coffer | None = None) -> tuple[int, set[str]]:
        """Discard the reservations whose writer is gone (in one coffer, or everywhere).

        Returns how many were reclaimed and the blob ids of the reservations still live.
        """
        now = now_ms()
        reclaimed, live = 0, set()
        query = sa.select(objects.c.id, objects.c.blob_id, objects.c.holder,
                          objects.c.lease_until_ms).where(objects.c.state == WRITING)
        if coffer is not None:
            query = query.where(objects.c.coffer_id == coffer.id)
        with self.db.write() as conn:
            for row in conn.execute(query).all():
                if self.lapsed(row.holder, row.lease_until_ms, now):
                    self._discard(conn, row.id, row.blob_id)
                    reclaimed += 1
                else:
                    live.add(row.blob_id)
        return reclaimed, live

    def _copy_alive(self, store: RegionStore, name: str) -> bool:
        """Whether a temporary file is a copy between regions that a live process is still
        writing: its name is "<blob>.<pid>.<host tag>.<random>" (core/integrity.copy_blob)."""
        parts = name.split(".")
        if len(parts) != 4 or not parts[1].isdigit():
            return False
        pid, host = int(parts[1]), parts[2]
        if host == _host_tag(self.host):
            return pid != self.pid and _pid_alive(pid)
        try:
            idle = time.time() - (store.tmp_dir / name).stat().st_mtime
        except FileNotFoundError:
            return False
        return idle < COPY_IDLE_SECONDS

    def recover(self, *others: Callable[[], tuple[int, set[str]]]) -> dict[str, int]:
        """Reclaim the reservations of dead writers (those of objects, and those `others`
        reclaim, such as parts) and remove stray temporary files."""
        # List the files before reading the rows: a reservation row is committed before its
        # file is created, so every listed file of a live upload has a row by then.
        listed = {name: store.tmp_blob_ids() for name, store in self.stores.items()}
        reclaimed, live = self.reclaim_lapsed()
        for reclaim in others:
            count, still = reclaim()
            reclaimed += count
            live |= still
        stray = 0
        for name, blob_ids in listed.items():
            for blob_id in blob_ids:
                if blob_id not in live and not self._copy_alive(self.stores[name], blob_id):
                    try:  # a reclaimed reservation's file is already gone: not a stray
                        (self.stores[name].tmp_dir / blob_id).unlink()
                        stray += 1
                    except FileNotFoundError:
                        pass
        return {"reclaimed": reclaimed, "stray_files": stray}


def _host_tag(host: str) -> str:
    return hashlib.sha256(host.encode()).hexdigest()[:8]


#: a copy's temporary file that another host writes is taken for abandoned after this long
#: without a write (the region directories may be shared between machines)
COPY_IDLE_SECONDS = 3600


def _row_to_object(row: sa.Row) -> StoredObject:
    return StoredObject(id=row.id, key=row.key, size=row.size, etag=row.etag,
                        sha256=row.sha256, content_type=row.content_type,
                        created_ms=row.created_ms, writer_uin=row.writer_uin,
                        blob_id=row.blob_id, encrypt_type=row.encrypt_type,
                        coffer_id=row.coffer_id, crcs=row.crcs or b"")
