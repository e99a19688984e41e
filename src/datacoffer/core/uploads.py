"""Multipart uploads: initiate, upload parts, list them, abort; list a coffer's uploads.

An initiated upload holds its key through an `objects` row in state "multipart" (so PutObject
and a second initiate answer ObjectAlreadyUploading), and an `uploads` row. Each part is a blob
of its own, written like a PutObject's (reserved row with a lease, streamed, fsynced, then
"stored"); a re-upload of a part number replaces the stored blob in one transaction, so a reader
sees the old part or the new one, never half of either.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import pairwise

import anyio
import sqlalchemy as sa

from datacoffer.core.checksums import multipart_etag, multipart_sha256
from datacoffer.core.clock import now_ms
from datacoffer.core.coffers import MULTIPART, STORED, WRITING, Coffer, successor
from datacoffer.core.copies import record_stored
from datacoffer.core.identities import Identity
from datacoffer.core.ingest import Digest, write_leased
from datacoffer.core.objects import DEFAULT_CONTENT_TYPE, Objects, StoredObject
from datacoffer.errors import CdcsError
from datacoffer.meta.db import Database
from datacoffer.meta.schema import objects, parts, uploads
from datacoffer.storage.blobs import RegionStore, new_blob_id

log = logging.getLogger("datacoffer.uploads")

ACTIVE = "active"
COMPLETING = "completing"
COMPLETED = "completed"
#: aborted: the row goes once its parts' rows are gone
ABORTED = "aborted"
#: a part blob that no longer counts (replaced, unlisted at completion, aborted): its file is
#: removed, then its row, so that a crash in between leaves a row that recovery finishes
DISCARDED = "discarded"
MAX_PART_NUMBER = 10000


@dataclass(frozen=True)
class Upload:
    upload_id: str
    coffer: Coffer
    key: str
    object_id: int
    initiator_uin: str
    content_type: str
    state: str
    created_ms: int

    @property
    def resource(self) -> str:
        return f"{self.coffer.name}/{self.key}"


@dataclass(frozen=True)
class Part:
    number: int
    size: int
    etag: str
    sha256: str
    created_ms: int
    blob_id: str


@dataclass(frozen=True)
class PartsPage:
    parts: list[Part]
    is_truncated: bool
    next_marker: int


@dataclass(frozen=True)
class UploadsPage:
    uploads: list[Upload]
    is_truncated: bool
    next_key_marker: str
    next_upload_id_marker: str


def check_part_list(listed: list[tuple[int, str]], resource: str) -> None:
    """The checks of a CompleteMultipartUpload list that need nothing stored: strictly
    ascending (InvalidPartOrder), then numbered 1..N without a gap (InvalidPart)."""
    numbers = [n for n, _ in listed]
    if any(b <= a for a, b in pairwise(numbers)):
        raise CdcsError("InvalidPartOrder", resource=resource)
    if numbers != list(range(1, len(numbers) + 1)):
        raise CdcsError("InvalidPart", "The parts must be numbered from 1 without a gap.",
                        resource=resource)


def new_upload_id() -> str:
    """128 bits from the OS's random source: upload IDs must be unguessable."""
    return secrets.token_hex(16)


def _row_to_upload(row: sa.Row, coffer: Coffer) -> Upload:
    return Upload(row.upload_id, coffer, row.key, row.object_id, row.initiator_uin,
                  row.content_type, row.state, row.created_ms)


def _row_to_part(row: sa.Row) -> Part:
    return Part(row.part_number, row.size, row.etag, row.sha256, row.created_ms, row.blob_id)


_UPLOAD = sa.select(uploads).where(
    (uploads.c.upload_id == sa.bindparam("upload_id"))
    & (uploads.c.coffer_id == sa.bindparam("coffer_id")) & (uploads.c.key == sa.bindparam("key")))
_LOCK_UPLOAD = (sa.select(uploads.c.state).where(uploads.c.upload_id == sa.bindparam("upload_id"))
                .with_for_update())
_MINE = ((parts.c.blob_id == sa.bindparam("part_blob"))
         & (parts.c.holder == sa.bindparam("me")) & (parts.c.state == WRITING))
_RENEW = parts.update().where(_MINE).values(lease_until_ms=sa.bindparam("until"))
_CANCEL = parts.delete().where(_MINE)


class Uploads:
    def __init__(self, db: Database, stores: dict[str, RegionStore], objects: Objects, *,
                 max_part_size: int, min_part_size: int) -> None:
        self.db = db
        self.stores = stores
        self.objects = objects
        self.max_part_size = max_part_size
        self.min_part_size = min_part_size

    # -- initiate, find, abort -----------------------------------------------------------

    def initiate(self, coffer: Coffer, key: str, initiator: Identity,
                 content_type: str) -> Upload:
        """Start an upload: it holds the key until it is completed or aborted."""
        self.objects.keyring.check(coffer)
        for _ in range(3):
            try:
                with self.db.write() as conn:
                    object_id, _ = self.objects.take_key(conn, coffer, key, initiator, MULTIPART)
                    upload_id, created = new_upload_id(), now_ms()
                    conn.execute(uploads.insert(), {
                        "upload_id": upload_id, "coffer_id": coffer.id, "key": key,
                        "object_id": object_id, "initiator_uin": initiator.uin,
                        "content_type": content_type, "state": ACTIVE, "created_ms": created})
                return Upload(upload_id, coffer, key, object_id, initiator.uin, content_type,
                              ACTIVE, created)
            except sa.exc.IntegrityError:
                continue  # another writer took the key between our look and our insert
        raise CdcsError("ObjectAlreadyUploading", resource=f"{coffer.name}/{key}")

    def find(self, coffer: Coffer, key: str, upload_id: str) -> Upload:
        """The upload with this ID for this coffer and key (in any state), or NoSuchUpload."""
        row = None
        # An ID that is not printable ASCII was never issued (and not every database can
        # even compare it: text that is not UTF-8, a NUL).
        if upload_id.isascii() and upload_id.isprintable():
            with self.db.engine.connect() as conn:
                row = conn.execute(_UPLOAD, {"upload_id": upload_id, "coffer_id": coffer.id,
                                             "key": key}).first()
        if row is None or row.state == ABORTED:
            raise CdcsError("NoSuchUpload",
                            "This coffer and key have no upload with that ID (it may have been "
                            "aborted).", resource=f"{coffer.name}/{key}")
        return _row_to_upload(row, coffer)

    @staticmethod
    def _check_active(state: str | None, upload: Upload) -> None:
        """Refuse a change to an upload that is gone, completed, or being completed."""
        if state is None or state == ABORTED:
            raise CdcsError("NoSuchUpload", "The upload was aborted.", resource=upload.resource)
        if state == COMPLETED:
            raise CdcsError("MultipartAlreadyCompleted", resource=upload.resource)
        if state == COMPLETING:
            raise CdcsError("AlreadyLock", "The upload is being completed; retry later.",
                            resource=upload.resource)

    def abort(self, upload: Upload) -> None:
        """Discard the upload and its parts, and free its key.

        A part write still streaming keeps its row and its file: removing the file under the
        writer would fail its rename, and removing the row would leave its blob unknown to
        crash recovery. That write fails at its commit (NoSuchUpload) and removes its own blob;
        the upload's row, marked aborted, goes when no part row is left.
        """
        now = now_ms()
        with self.db.write() as conn:
            self._check_active(conn.execute(_LOCK_UPLOAD, {"upload_id": upload.upload_id})
                               .scalar(), upload)
            rows = conn.execute(sa.select(parts.c.blob_id, parts.c.state, parts.c.holder,
                                          parts.c.lease_until_ms).where(
                parts.c.upload_id == upload.upload_id)).all()
            streaming = {r.blob_id for r in rows if r.state == WRITING
                         and not self.objects.lapsed(r.holder, r.lease_until_ms, now)}
            gone = [r.blob_id for r in rows if r.blob_id not in streaming]
            self._discard(conn, gone)
            conn.execute(uploads.update().where(uploads.c.upload_id == upload.upload_id)
                         .values(state=ABORTED))
            conn.execute(objects.delete().where((objects.c.id == upload.object_id)
                                                & (objects.c.state == MULTIPART)))
        self._purge(gone)

    @staticmethod
    def _discard(conn: sa.Connection, blob_ids: list[str]) -> None:
        """In the caller's transaction: these part blobs no longer count."""
        if blob_ids:
            conn.execute(parts.update().where(parts.c.blob_id.in_(blob_ids))
                         .values(state=DISCARDED))

    def _purge(self, blob_ids: list[str]) -> None:
        """After the discarding transaction: remove the files, then the rows (and aborted
        uploads left without parts)."""
        for blob_id in blob_ids:
            self.objects.remove_blob(blob_id)
        with self.db.write(durable=False) as conn:
            if blob_ids:
                conn.execute(parts.delete().where(parts.c.blob_id.in_(blob_ids)
                                                  & (parts.c.state == DISCARDED)))
            self._forget_if_aborted(conn)

    def _forget_if_aborted(self, conn: sa.Connection) -> None:
        """Remove aborted uploads whose last part write has cleaned up."""
        conn.execute(uploads.delete().where(
            (uploads.c.state == ABORTED)
            & ~sa.exists().where(parts.c.upload_id == uploads.c.upload_id)))

    # -- parts ---------------------------------------------------------------------------

    def _reserve_part(self, upload: Upload, number: int) -> str:
        now = now_ms()
        with self.db.write(durable=False) as conn:
            self._check_active(conn.execute(_LOCK_UPLOAD.with_for_update(read=True),
                                            {"upload_id": upload.upload_id}).scalar(), upload)
            blob_id = new_blob_id()
            conn.execute(parts.insert(), {
                "blob_id": blob_id, "upload_id": upload.upload_id, "part_number": number,
                "state": WRITING, "size": 0, "etag": "", "sha256": "", "created_ms": now,
                "holder": self.objects.holder,
                "lease_until_ms": now + 3 * self.objects.lease_ms})
        return blob_id

    def _renew_part(self, blob_id: str) -> bool:
        with self.db.write(durable=False) as conn:
            result = conn.execute(_RENEW, {"part_blob": blob_id, "me": self.objects.holder,
                                           "until": now_ms() + 3 * self.objects.lease_ms})
            return result.rowcount == 1

    def _cancel_part(self, blob_id: str) -> None:
        with self.db.write(durable=False) as conn:
            conn.execute(_CANCEL, {"part_blob": blob_id, "me": self.objects.holder})
            self._forget_if_aborted(conn)
        self.objects.remove_blob(blob_id)

    def _finish_part(self, upload: Upload, number: int, blob_id: str, digest: Digest) -> Part:
        """Store the part, replacing a previous blob of the same number, in one transaction."""
        created = now_ms()
        with self.db.write() as conn:
            self._check_active(conn.execute(_LOCK_UPLOAD.with_for_update(read=True),
                                            {"upload_id": upload.upload_id}).scalar(), upload)
            replaced = conn.execute(sa.select(parts.c.blob_id).where(
                (parts.c.upload_id == upload.upload_id) & (parts.c.part_number == number)
                & (parts.c.state == STORED))).scalars().all()
            self._discard(conn, replaced)
            result = conn.execute(parts.update().where(_MINE).values(
                state=STORED, size=digest.size, etag=digest.etag, sha256=digest.sha256,
                crcs=digest.crcs,
                created_ms=created, holder="", lease_until_ms=0),
                {"part_blob": blob_id, "me": self.objects.holder})
            if result.rowcount != 1:
                raise RuntimeError(f"part blob {blob_id} was reclaimed during the write")
        self._purge(replaced)
        return Part(number, digest.size, digest.etag, digest.sha256, created, blob_id)

    async def upload_part(self, upload: Upload, number: int, body: AsyncIterator[bytes],
                          length: int, content_md5: bytes | None) -> Part:
        sealer = (None if upload.coffer.encrypt_type == 0
                  else await anyio.to_thread.run_sync(self.objects.keyring.sealer, upload.coffer))
        blob_id = await anyio.to_thread.run_sync(self._reserve_part, upload, number)
        return await write_leased(
            self.stores[upload.coffer.primary], blob_id, body, length, content_md5,
            resource=upload.resource, idle_timeout=self.objects.body_timeout,
            lease_seconds=self.objects.lease_ms / 1000,
            renew=lambda: self._renew_part(blob_id), cancel=lambda: self._cancel_part(blob_id),
            finish=lambda d: self._finish_part(upload, number, blob_id, d), sealer=sealer)

    def list_parts(self, upload: Upload, marker: int, max_count: int) -> PartsPage:
        """The stored parts numbered above `marker`, at most `max_count` of them."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(sa.select(parts).where(
                (parts.c.upload_id == upload.upload_id) & (parts.c.state == STORED)
                & (parts.c.part_number > marker))
                .order_by(parts.c.part_number).limit(max_count + 1)).all()
        found = [_row_to_part(r) for r in rows[:max_count]]
        truncated = len(rows) > max_count
        return PartsPage(found, truncated, found[-1].number if truncated else 0)

    def reclaim_lapsed_parts(self) -> tuple[int, set[str]]:
        """Discard part writes whose writer is gone, and finish purging discarded parts;
        return how many were reclaimed and the blobs still being written."""
        now = now_ms()
        reclaimed, live = 0, set()
        with self.db.engine.connect() as conn:
            discarded = list(conn.execute(sa.select(parts.c.blob_id).where(
                parts.c.state == DISCARDED)).scalars())
        self._purge(discarded)
        with self.db.write(durable=False) as conn:
            rows = conn.execute(sa.select(parts.c.blob_id, parts.c.holder,
                                          parts.c.lease_until_ms)
                                .where(parts.c.state == WRITING)).all()
            for row in rows:
                if self.objects.lapsed(row.holder, row.lease_until_ms, now):
                    conn.execute(parts.delete().where(parts.c.blob_id == row.blob_id))
                    self.objects.remove_blob(row.blob_id)
                    reclaimed += 1
                else:
                    live.add(row.blob_id)
            self._forget_if_aborted(conn)
        return reclaimed, live

    # -- completing ----------------------------------------------------------------------

    def complete(self, upload: Upload, listed: list[tuple[int, str]]) -> StoredObject:
        """Make the listed parts the upload's object, in one transaction: time proportional
        to the number of parts, never to the bytes (no data is copied or re-read).

        The list is checked in the order errors.md fixes; a refused complete changes nothing.
        """
        resource = upload.resource
        check_part_list(listed, resource)
        numbers = [n for n, _ in listed]
        created = now_ms()
        with self.db.write() as conn:
            self._check_active(conn.execute(_LOCK_UPLOAD, {"upload_id": upload.upload_id})
                               .scalar(), upload)
            stored = {r.part_number: r for r in conn.execute(sa.select(
                parts.c.part_number, parts.c.blob_id, parts.c.size, parts.c.etag,
                parts.c.sha256).where((parts.c.upload_id == upload.upload_id)
                                      & (parts.c.state == STORED)))}
            missing = [n for n in numbers if n not in stored]
            if missing:
                raise CdcsError("MultipartNotExists", f"Part {missing[0]} was never uploaded.",
                                resource=resource)
            for number, etag in listed:
                if etag.strip().strip('"').lower() != stored[number].etag:
                    raise CdcsError("InvalidPart", f"The ETag of part {number} differs from "
                                    "the uploaded part's.", resource=resource)
            small = [n for n in numbers[:-1] if stored[n].size < self.min_part_size]
            if small:
                raise CdcsError("EntityTooSmall", f"Part {small[0]} is smaller than "
                                f"{self.min_part_size} bytes and is not the last.",
                                resource=resource)
            chosen = [stored[n] for n in numbers]
            size = sum(p.size for p in chosen)
            if size == 0:
                raise CdcsError("ObjectEmpty", resource=resource)
            unlisted = [p.blob_id for n, p in stored.items() if n > len(numbers)]
            etag = multipart_etag([bytes.fromhex(p.etag) for p in chosen])
            sha256 = multipart_sha256([bytes.fromhex(p.sha256) for p in chosen])
            self._discard(conn, unlisted)
            conn.execute(uploads.update().where(uploads.c.upload_id == upload.upload_id)
                         .values(state=COMPLETED))
            conn.execute(objects.update().where(objects.c.id == upload.object_id).values(
                state=STORED, size=size, etag=etag, sha256=sha256,
                content_type=upload.content_type or DEFAULT_CONTENT_TYPE, created_ms=created))
            record_stored(conn, upload.object_id, upload.coffer, created)
        self._purge(unlisted)
        return StoredObject(id=upload.object_id, key=upload.key, size=size, etag=etag,
                            sha256=sha256, content_type=upload.content_type
                            or DEFAULT_CONTENT_TYPE, created_ms=created,
                            writer_uin=upload.initiator_uin, blob_id="",
                            encrypt_type=upload.coffer.encrypt_type,
                            coffer_id=upload.coffer.id)

    # -- listing uploads -----------------------------------------------------------------

    def list_uploads(self, coffer: Coffer, prefix: str, key_marker: str,
                     upload_id_marker: str, max_uploads: int) -> UploadsPage:
        """Uploads in progress, by key then initiation time, after the markers (S3 semantics:
        with an upload-id-marker, the key-marker's own uploads after that one are included)."""
        q = sa.select(uploads).where((uploads.c.coffer_id == coffer.id)
                                     & uploads.c.state.in_((ACTIVE, COMPLETING)))
        if prefix:  # a range, not LIKE: byte order and case as the keys themselves
            q = q.where(uploads.c.key >= prefix)
            upper = successor(prefix)
            if upper is not None:
                q = q.where(uploads.c.key < upper)
        with self.db.engine.connect() as conn:
            after_key = uploads.c.key > key_marker
            if key_marker and upload_id_marker:
                mark = conn.execute(sa.select(uploads.c.created_ms).where(
                    uploads.c.upload_id == upload_id_marker)).scalar()
                if mark is not None:
                    after_key = after_key | ((uploads.c.key == key_marker) & (sa.tuple_(
                        uploads.c.created_ms, uploads.c.upload_id) > sa.tuple_(
                        sa.literal(mark), sa.literal(upload_id_marker))))
            if key_marker:
                q = q.where(after_key)
            rows = conn.execute(q.order_by(uploads.c.key, uploads.c.created_ms,
                                           uploads.c.upload_id).limit(max_uploads + 1)).all()
        found = [_row_to_upload(r, coffer) for r in rows[:max_uploads]]
        truncated = len(rows) > max_uploads
        last = found[-1] if truncated else None
        return UploadsPage(found, truncated, last.key if last else "",
                           last.upload_id if last else "")
