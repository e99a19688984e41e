"""Objects: the key reservation, durable writes, verified reads, and crash recovery.

Every key has at most one row in `objects`. A PutObject first inserts the row in state
"writing" (the reservation: it lives in the metadata store, so it holds across processes and
machines), streams the bytes to a temporary blob, commits the blob (fsync, rename) and only then
turns the row into "stored" in one transaction. The reservation carries its holder
(host:pid:token) and a lease that the writer renews; a reservation whose holder died is
reclaimed, its files removed, and the key is free again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from dataclasses import dataclass

import anyio
import sqlalchemy as sa

from datacoffer.core.clock import now_ms
from datacoffer.core.coffers import STORED, WRITING, Coffer
from datacoffer.core.identities import Identity
from datacoffer.errors import CdcsError
from datacoffer.meta.db import Database
from datacoffer.meta.schema import coffers, object_copies, objects
from datacoffer.storage.blobs import BlobWriter, RegionStore, new_blob_id

log = logging.getLogger("datacoffer.objects")

#: Bytes gathered from the network before one write+hash step runs in a worker thread.
WRITE_BATCH = 1024 * 1024
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


@dataclass(frozen=True)
class Reservation:
    object_id: int
    coffer: Coffer
    key: str
    blob_id: str
    writer_uin: str


class CorruptData(Exception):
    """Stored bytes do not match their recorded SHA-256."""


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
    created_ms=sa.bindparam("b_created"), holder="", lease_until_ms=0)
#: A stored object and whether a region holds its copy.
_HEAD = (
    sa.select(objects, object_copies.c.region.label("held_in"))
    .outerjoin(object_copies, (object_copies.c.object_id == objects.c.id)
               & (object_copies.c.region == sa.bindparam("region")))
    .where((objects.c.coffer_id == sa.bindparam("coffer_id"))
           & (objects.c.key == sa.bindparam("key")) & (objects.c.state == STORED)))


class Objects:
    def __init__(self, db: Database, stores: dict[str, RegionStore], *,
                 lease_seconds: int, max_object_size: int, body_timeout: int = 60) -> None:
        self.db = db
        self.stores = stores
        self.lease_ms = lease_seconds * 1000
        self.max_object_size = max_object_size
        self.body_timeout = body_timeout
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.token = secrets.token_hex(8)
        self.holder = f"{self.host}:{self.pid}:{self.token}"

    # -- reservations ------------------------------------------------------------------------

    def _lapsed(self, holder: str, lease_until_ms: int, now: int) -> bool:
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
        self._remove_blob(blob_id)

    def _remove_blob(self, blob_id: str) -> None:
        """Remove a blob's files from every region. A region that fails (a disk error) is
        logged and the rest still cleaned: the blob is unreferenced garbage either way."""
        for store in self.stores.values():
            try:
                store.remove(blob_id)
            except OSError as exc:
                log.error("could not remove blob %s from region %s: %s", blob_id,
                          store.name, exc)

    def reserve(self, coffer: Coffer, key: str, writer: Identity) -> Reservation:
        """Take the key for a new object, or refuse with the code that says who holds it."""
        resource = f"{coffer.name}/{key}"
        for _ in range(3):
            now = now_ms()
            try:
                with self.db.write(durable=False) as conn:
                    # Share-lock the coffer row: DeleteCoffer takes it exclusively.
                    if conn.execute(_SHARE_COFFER, {"coffer_id": coffer.id}).first() is None:
                        raise CdcsError("CofferNotFound", resource=resource)
                    row = conn.execute(_FIND_KEY, {"coffer_id": coffer.id, "key": key}).first()
                    if row is not None:
                        if row.state == STORED:
                            code = ("ObjectAlreadyExistsOwnedByYou"
                                    if row.writer_uin == writer.uin else "ObjectAlreadyExists")
                            raise CdcsError(code, resource=resource)
                        if not self._lapsed(row.holder, row.lease_until_ms, now):
                            raise CdcsError("ObjectAlreadyUploading", resource=resource)
                        log.info("reclaiming lapsed reservation of %s (holder %s)",
                                 resource, row.holder)
                        self._discard(conn, row.id, row.blob_id)
                    blob_id = new_blob_id()
                    result = conn.execute(objects.insert(), {
                        "coffer_id": coffer.id, "key": key, "state": WRITING,
                        "writer_uin": writer.uin, "blob_id": blob_id, "created_ms": now,
                        "holder": self.holder, "lease_until_ms": now + 3 * self.lease_ms,
                        "encrypt_type": coffer.encrypt_type, "content_type": "", "size": 0,
                        "etag": "", "sha256": ""})
                    (object_id,) = result.inserted_primary_key
                    return Reservation(object_id, coffer, key, blob_id, writer.uin)
            except sa.exc.IntegrityError:
                continue  # another writer inserted the key between our look and our insert
        raise CdcsError("ObjectAlreadyUploading", resource=resource)

    def renew(self, res: Reservation) -> bool:
        with self.db.write(durable=False) as conn:
            result = conn.execute(_RENEW, {"object_id": res.object_id, "me": self.holder,
                                           "until": now_ms() + 3 * self.lease_ms})
            return result.rowcount == 1

    def cancel(self, res: Reservation) -> None:
        """Give the key back and remove whatever was written."""
        with self.db.write(durable=False) as conn:  # a lost cancel is reclaimed at start
            conn.execute(_CANCEL, {"object_id": res.object_id, "me": self.holder})
        self._remove_blob(res.blob_id)

    def finish(self, res: Reservation, *, size: int, etag: str, sha256: str,
               content_type: str) -> StoredObject:
        """Make a committed blob the object of its key (the blob is already durable)."""
        created = now_ms()
        with self.db.write() as conn:
            result = conn.execute(_FINISH, {
                "object_id": res.object_id, "me": self.holder, "b_size": size, "b_etag": etag,
                "b_sha256": sha256, "b_content_type": content_type, "b_created": created})
            if result.rowcount != 1:
                raise RuntimeError(f"reservation {res.object_id} was reclaimed during the write")
            conn.execute(object_copies.insert(), {"object_id": res.object_id,
                                                  "region": res.coffer.primary,
                                                  "created_ms": created})
        return StoredObject(
            id=res.object_id, key=res.key, size=size, etag=etag, sha256=sha256,
            content_type=content_type, created_ms=created, writer_uin=res.writer_uin,
            blob_id=res.blob_id, encrypt_type=res.coffer.encrypt_type)

    # -- writing -----------------------------------------------------------------------------

    async def put(self, coffer: Coffer, key: str, writer: Identity,
                  body: AsyncIterator[bytes], length: int, content_type: str,
                  content_md5: bytes | None) -> StoredObject:
        """Store a new object from a byte stream of exactly `length` bytes."""
        resource = f"{coffer.name}/{key}"
        res = await anyio.to_thread.run_sync(self.reserve, coffer, key, writer)
        store = self.stores[coffer.primary]
        writer_blob: BlobWriter | None = None
        renewer = asyncio.create_task(self._keep_renewing(res))
        try:
            writer_blob = await anyio.to_thread.run_sync(store.create, res.blob_id)
            md5, sha = hashlib.md5(), hashlib.sha256()
            await _pump(body, writer_blob, md5, sha, length, resource, self.body_timeout)
            if content_md5 is not None and md5.digest() != content_md5:
                raise CdcsError("InvalidArgument",
                                "Content-MD5 does not match the bytes received.",
                                resource=resource)
            await anyio.to_thread.run_sync(writer_blob.commit)
            renewer.cancel()
            return await anyio.to_thread.run_sync(lambda: self.finish(
                res, size=length, etag=md5.hexdigest(), sha256=sha.hexdigest(),
                content_type=content_type or DEFAULT_CONTENT_TYPE))
        except BaseException:
            renewer.cancel()
            with anyio.CancelScope(shield=True):
                try:  # a failing clean-up must not hide why the write failed
                    if writer_blob is not None:
                        await anyio.to_thread.run_sync(writer_blob.abort)
                    await anyio.to_thread.run_sync(self.cancel, res)
                except Exception:
                    log.exception("clean-up after a failed write of %s failed", resource)
            raise
        finally:
            with suppress(asyncio.CancelledError):
                await renewer

    async def _keep_renewing(self, res: Reservation) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 1000)
            if not await anyio.to_thread.run_sync(self.renew, res):
                log.error("reservation %s lost while writing", res.object_id)
                return

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

    def read(self, obj: StoredObject, region: str, start: int, length: int) -> Iterator[bytes]:
        """The bytes [start, start+length); a whole-object read is checked against SHA-256."""
        chunks = self.stores[region].read(obj.blob_id, start, length)
        if start != 0 or length != obj.size:
            yield from chunks
            return
        # The last chunk is held back until the hash is checked: were it sent first, the client
        # would have every Content-Length byte, and damaged data would look like a good answer.
        sha = hashlib.sha256()
        held: bytes | None = None
        for chunk in chunks:
            sha.update(chunk)
            if held is not None:
                yield held
            held = chunk
        if sha.hexdigest() != obj.sha256:
            raise CorruptData(f"object {obj.id} in region {region}: SHA-256 mismatch")
        if held is not None:
            yield held

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
                if self._lapsed(row.holder, row.lease_until_ms, now):
                    self._discard(conn, row.id, row.blob_id)
                    reclaimed += 1
                else:
                    live.add(row.blob_id)
        return reclaimed, live

    def recover(self) -> dict[str, int]:
        """Reclaim the reservations of dead writers and remove stray temporary files."""
        # List the files before reading the rows: a reservation row is committed before its
        # file is created, so every listed file of a live upload has a row by then.
        listed = {name: store.tmp_blob_ids() for name, store in self.stores.items()}
        reclaimed, live = self.reclaim_lapsed()
        stray = 0
        for name, blob_ids in listed.items():
            for blob_id in blob_ids:
                if blob_id not in live:
                    try:  # a reclaimed reservation's file is already gone: not a stray
                        (self.stores[name].tmp_dir / blob_id).unlink()
                        stray += 1
                    except FileNotFoundError:
                        pass
        return {"reclaimed": reclaimed, "stray_files": stray}


def _row_to_object(row: sa.Row) -> StoredObject:
    return StoredObject(id=row.id, key=row.key, size=row.size, etag=row.etag,
                        sha256=row.sha256, content_type=row.content_type,
                        created_ms=row.created_ms, writer_uin=row.writer_uin,
                        blob_id=row.blob_id, encrypt_type=row.encrypt_type)


async def _pump(body: AsyncIterator[bytes], blob: BlobWriter, md5: hashlib._Hash,
                sha: hashlib._Hash, length: int, resource: str, idle_timeout: float) -> None:
    """Move the body into the blob, hashing it, in batches run off the event loop.

    While one batch is written and hashed in a worker thread, the next is received. A client
    that sends nothing for `idle_timeout` seconds loses its upload (and the key it held).
    """

    def digest_and_write(data: bytearray) -> None:
        sha.update(data)
        blob.write(data)

    async def step(data: bytearray) -> None:
        # MD5 and SHA-256 each take a core's time per byte: run them side by side.
        await asyncio.gather(anyio.to_thread.run_sync(md5.update, data),
                             anyio.to_thread.run_sync(digest_and_write, data))

    pending: asyncio.Future[None] | None = None  # the batch being hashed and written
    buf = bytearray()
    received = 0
    chunks = aiter(body)
    try:
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise CdcsError("InvalidArgument",
                                f"No body bytes arrived for {idle_timeout:g} seconds; the "
                                "upload was abandoned.", resource=resource) from None
            received += len(chunk)
            if received > length:
                raise CdcsError("InvalidArgument", "The body is longer than Content-Length.",
                                resource=resource)
            buf += chunk
            if len(buf) >= WRITE_BATCH:
                if pending is not None:
                    await pending
                data, buf = buf, bytearray()
                pending = asyncio.ensure_future(step(data))
        if received < length:
            raise CdcsError("InvalidArgument", "The body ended before Content-Length bytes.",
                            resource=resource)
    finally:
        if pending is not None:  # never leave a write running on a blob about to be aborted
            with anyio.CancelScope(shield=True):
                await pending
    if buf:
        await step(buf)
