"""Streaming a request body into a new blob: hashed, verified, durable, and cleaned up.

PutObject and UploadPart share this: the caller has reserved a row for the blob (with a
lease); `write_leased` keeps that lease alive while the bytes arrive, writes and hashes them
off the event loop, commits the blob, and lets the caller record it. On any failure the blob
and the reservation are removed, so nothing of an unacknowledged write remains.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import TypeVar

import anyio

from datacoffer.core.checksums import ChunkCrcs
from datacoffer.crypto.envelope import Sealer
from datacoffer.errors import CdcsError
from datacoffer.storage.blobs import BlobWriter, RegionStore

log = logging.getLogger("datacoffer.ingest")

#: Bytes gathered from the network before one write+hash step runs in worker threads.
WRITE_BATCH = 1024 * 1024

T = TypeVar("T")


class SealedBlob:
    """A blob written through a `Sealer`: what is written is the encrypted format."""

    def __init__(self, blob: BlobWriter, sealer: Sealer) -> None:
        self.blob = blob
        self.sealer = sealer
        blob.write(sealer.start(blob.blob_id))

    def write(self, data: bytes | bytearray) -> None:
        sealed = self.sealer.update(data)
        if sealed:
            self.blob.write_all(sealed)

    def commit(self) -> None:
        self.blob.write(self.sealer.finish())
        self.blob.commit()

    def abort(self) -> None:
        self.blob.abort()


@dataclass(frozen=True)
class Digest:
    size: int
    md5: bytes
    sha256: str
    #: the chunk CRC-32s of a plain blob (`checksums.ChunkCrcs`); empty when encrypted
    crcs: bytes = b""

    @property
    def etag(self) -> str:
        return self.md5.hex()


async def write_leased(
    store: RegionStore, blob_id: str, body: AsyncIterator[bytes], length: int,
    content_md5: bytes | None, *, resource: str, idle_timeout: float, lease_seconds: float,
    renew: Callable[[], bool], cancel: Callable[[], None], finish: Callable[[Digest], T],
    sealer: Sealer | None = None,
) -> T:
    """Write exactly `length` bytes of `body` to a new blob (encrypted by `sealer`, when
    given) and record it with `finish`. The digests are of the plaintext.

    `renew`, `cancel` and `finish` run in worker threads: they touch the metadata store.
    """
    blob: BlobWriter | SealedBlob | None = None
    renewer = asyncio.create_task(_keep_renewing(renew, lease_seconds, resource))
    try:
        plain = await anyio.to_thread.run_sync(store.create, blob_id)
        blob = plain if sealer is None else SealedBlob(plain, sealer)
        md5, sha = hashlib.md5(), hashlib.sha256()
        crcs = ChunkCrcs() if sealer is None else None
        await _pump(body, blob, (md5, sha, crcs), length, resource, idle_timeout)
        if content_md5 is not None and md5.digest() != content_md5:
            raise CdcsError("InvalidArgument", "Content-MD5 does not match the bytes received.",
                            resource=resource)
        await anyio.to_thread.run_sync(blob.commit)
        renewer.cancel()
        digest = Digest(length, md5.digest(), sha.hexdigest(),
                        crcs.digest() if crcs is not None else b"")
        return await anyio.to_thread.run_sync(finish, digest)
    except BaseException:
        renewer.cancel()
        with anyio.CancelScope(shield=True):
            try:  # a failing clean-up must not hide why the write failed
                if blob is not None:
                    await anyio.to_thread.run_sync(blob.abort)
                await anyio.to_thread.run_sync(cancel)
            except Exception:
                log.exception("clean-up after a failed write of %s failed", resource)
        raise
    finally:
        with suppress(asyncio.CancelledError):
            await renewer


async def _keep_renewing(renew: Callable[[], bool], period: float, resource: str) -> None:
    while True:
        await asyncio.sleep(period)
        if not await anyio.to_thread.run_sync(renew):
            log.error("the reservation of %s was lost while writing", resource)
            return


async def _pump(body: AsyncIterator[bytes], blob: BlobWriter | SealedBlob,
                sums: tuple[hashlib._Hash, hashlib._Hash, ChunkCrcs | None], length: int,
                resource: str, idle_timeout: float) -> None:
    """Move the body into the blob, hashing it, in batches run off the event loop.

    While one batch is written and hashed in a worker thread, the next is received. A client
    that sends nothing for `idle_timeout` seconds loses its upload (and the key it held).
    """

    md5, sha, crcs = sums

    def digest_and_write(data: bytearray) -> None:
        sha.update(data)
        blob.write(data)

    def md5_and_crcs(data: bytearray) -> None:
        md5.update(data)
        if crcs is not None:
            crcs.update(data)

    async def step(data: bytearray) -> None:
        # MD5 and SHA-256 each take a core's time per byte: run them side by side.
        await asyncio.gather(anyio.to_thread.run_sync(md5_and_crcs, data),
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
