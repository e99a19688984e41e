"""Reading a blob's bytes, each checked before it is sent.

A plain blob carries a CRC-32 of every MiB (core/checksums.py): each chunk is checked before it
is yielded. An encrypted blob's chunks are authenticated by their decryption. Either way a
damaged chunk is found before any of its bytes leave, so the reader (Objects.read) can go on
from the same offset in another region's copy. A plain blob read whole is also checked by its
SHA-256 (service.md: on every full read), with its last chunk held back until then: damage
found so late (by the SHA-256 alone: forged, or in a blob written before chunk CRCs existed)
cannot be taken back, so it ends the answer.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from datacoffer.core.checksums import CRC_CHUNK, chunk_ok
from datacoffer.core.keyring import KeyOpener
from datacoffer.crypto import envelope
from datacoffer.storage.blobs import RegionStore


@dataclass(frozen=True)
class Blob:
    """One stored blob of an object: a simple object's only one, or one of its parts."""

    blob_id: str
    size: int
    sha256: str
    #: chunk CRC-32s of a plain blob; empty for an encrypted one (and an old plain one)
    crcs: bytes


class CorruptData(Exception):
    """Stored bytes do not match their record. `resumable`: found before any bad byte was
    yielded, so the read may go on from another copy."""

    def __init__(self, message: str, *, resumable: bool = True) -> None:
        super().__init__(message)
        self.resumable = resumable


def checked_bytes(store: RegionStore, blob: Blob, first: int, count: int,
                  open_key: KeyOpener | None) -> Iterator[bytes]:
    """Bytes [first, first+count) of the blob's copy in `store`, checked as they are read."""
    try:
        fh = store.open_blob(blob.blob_id)
    except FileNotFoundError:
        raise CorruptData(f"blob {blob.blob_id} is missing in region {store.name}") from None
    with fh:
        fd = fh.fileno()
        if open_key is not None:
            chunks = _decrypted(fd, store, blob, first, count, open_key)
        else:
            chunks = (_crc_checked if blob.crcs else _unchecked)(fd, store, blob, first, count)
            if count == blob.size:
                chunks = _sha_checked(chunks, store, blob)
        yield from chunks


def _crc_checked(fd: int, store: RegionStore, blob: Blob, first: int,
                 count: int) -> Iterator[bytes]:
    index, end = first // CRC_CHUNK, first + count
    offset = index * CRC_CHUNK
    while offset < end:
        want = min(CRC_CHUNK, blob.size - offset)
        data = os.pread(fd, want, offset)
        if len(data) != want or not chunk_ok(blob.crcs, index, data):
            raise CorruptData(f"blob {blob.blob_id} in region {store.name}: chunk {index} "
                              "does not match its CRC-32")
        low, high = max(first, offset) - offset, min(end, offset + want) - offset
        yield data if (low, high) == (0, want) else data[low:high]
        offset += want
        index += 1


def _unchecked(fd: int, store: RegionStore, blob: Blob, first: int,
               count: int) -> Iterator[bytes]:
    """A plain blob written before chunk CRCs: only a whole read of it can be checked."""
    offset, end = first, first + count
    while offset < end:
        chunk = os.pread(fd, min(CRC_CHUNK, end - offset), offset)
        if not chunk:
            raise CorruptData(f"blob {blob.blob_id} in region {store.name} is shorter than "
                              "its size", resumable=offset == first)
        offset += len(chunk)
        yield chunk


def _sha_checked(chunks: Iterator[bytes], store: RegionStore, blob: Blob) -> Iterator[bytes]:
    """The whole blob's chunks, checked by SHA-256; the last is held back until the check
    passed, so that a client never receives every byte of damaged data."""
    check = hashlib.sha256()
    held: bytes | None = None
    for chunk in chunks:
        check.update(chunk)
        if held is not None:
            yield held
        held = chunk
    if check.hexdigest() != blob.sha256:
        raise CorruptData(f"blob {blob.blob_id} in region {store.name}: SHA-256 mismatch",
                          resumable=False)
    if held is not None:
        yield held


def decrypted(fd: int, blob_id: str, size: int, first: int, count: int,
              open_key: KeyOpener) -> Iterator[bytes]:
    """Plaintext bytes [first, first+count) of the encrypted blob `blob_id` (of `size`
    plaintext bytes) open at `fd`; envelope.DecryptError where it does not authenticate."""
    return envelope.read_plain(lambda offset, n: os.pread(fd, n, offset),
                               os.fstat(fd).st_size, blob_id, size, first, count, open_key)


def _decrypted(fd: int, store: RegionStore, blob: Blob, first: int, count: int,
               open_key: KeyOpener) -> Iterator[bytes]:
    try:
        yield from decrypted(fd, blob.blob_id, blob.size, first, count, open_key)
    except envelope.DecryptError as exc:
        raise CorruptData(f"blob {blob.blob_id} in region {store.name}: {exc}") from None
