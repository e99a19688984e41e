"""Blobs in a region directory: written to a temporary file, fsynced, renamed into place.

Layout of a region root:

    tmp/<blob_id>                 data still being written
    blobs/<ab>/<blob_id>          complete data, never modified again

A blob is complete only once renamed into `blobs/` and its directory fsynced; what is left in
`tmp/` after a crash is garbage, removed at the next start.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

READ_CHUNK = 1024 * 1024


def new_blob_id() -> str:
    return secrets.token_hex(16)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: A large blob's data is flushed to disk in the background every this many bytes, so that
#: the final fsync finds little left to write instead of the whole object.
FLUSH_EVERY = 16 * 1024 * 1024
_flusher = ThreadPoolExecutor(max_workers=4, thread_name_prefix="blob-flush")


class BlobWriter:
    """Appends bytes to one temporary file; `commit` makes it a durable blob."""

    def __init__(self, region: RegionStore, blob_id: str, tmp_name: str = "") -> None:
        self.region = region
        self.blob_id = blob_id
        self.tmp_path = region.tmp_dir / (tmp_name or blob_id)
        self._file: BinaryIO | None = open(self.tmp_path, "xb", buffering=0)  # noqa: SIM115
        self.size = 0
        self._unflushed = 0
        self._flush: Future[None] | None = None

    def write(self, data: bytes | memoryview) -> None:
        self.write_all([data])

    def write_all(self, pieces: list[bytes] | list[bytes | memoryview]) -> None:
        """Append the pieces in order, with one system call where the OS allows."""
        assert self._file is not None
        count = sum(len(p) for p in pieces)
        done = os.writev(self._file.fileno(), pieces)
        if done != count:  # a short write: finish it piece by piece
            rest = b"".join(pieces)[done:]
            while rest:
                rest = rest[os.write(self._file.fileno(), rest):]
        self.size += count
        self._unflushed += count
        if self._unflushed >= FLUSH_EVERY and (self._flush is None or self._flush.done()):
            self._unflushed = 0
            self._flush = _flusher.submit(os.fdatasync, self._file.fileno())

    def _wait_flush(self) -> None:
        if self._flush is not None:
            flush, self._flush = self._flush, None
            flush.result()

    def commit(self, check: Callable[[Path], None] | None = None) -> None:
        """fsync the data, rename it into place and fsync the directory. `check` may refuse
        the written file (by raising) before it becomes the blob; `abort` then removes it."""
        assert self._file is not None
        self._wait_flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        if check is not None:
            check(self.tmp_path)
        final = self.region.blob_path(self.blob_id)
        os.rename(self.tmp_path, final)
        _fsync_dir(final.parent)

    def abort(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._wait_flush()  # never close a descriptor a flush still uses
            self._file.close()
            self._file = None
        self.tmp_path.unlink(missing_ok=True)


class RegionStore:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.tmp_dir = root / "tmp"
        self.blobs_dir = root / "blobs"

    def prepare(self) -> None:
        """Create the directory tree once, durably: every blob's directory exists (and is
        on disk) before any blob is renamed into it, so a commit fsyncs only that one."""
        for path in (self.tmp_dir, self.blobs_dir):
            path.mkdir(parents=True, exist_ok=True)
        missing = [f"{i:02x}" for i in range(256)
                   if not (self.blobs_dir / f"{i:02x}").is_dir()]
        for name in missing:
            (self.blobs_dir / name).mkdir(exist_ok=True)
        if missing:
            _fsync_dir(self.blobs_dir)
            _fsync_dir(self.root)
            _fsync_dir(self.root.parent)

    def blob_path(self, blob_id: str) -> Path:
        return self.blobs_dir / blob_id[:2] / blob_id

    def create(self, blob_id: str, tmp_name: str = "") -> BlobWriter:
        """A writer of a new blob; `tmp_name` names its temporary file when several writers
        may make the same blob (copies of it from other regions)."""
        return BlobWriter(self, blob_id, tmp_name)

    def open_blob(self, blob_id: str) -> BinaryIO:
        """The complete blob, open for reading (unbuffered: readers use os.pread)."""
        return open(self.blob_path(blob_id), "rb", buffering=0)

    def remove(self, blob_id: str) -> None:
        """Remove a blob, finished or not; a missing one is fine."""
        (self.tmp_dir / blob_id).unlink(missing_ok=True)
        self.blob_path(blob_id).unlink(missing_ok=True)

    def size_of(self, blob_id: str) -> int:
        """The blob file's length in bytes (of an encrypted blob, more than its plaintext)."""
        return self.blob_path(blob_id).stat().st_size

    def tmp_blob_ids(self) -> list[str]:
        return [entry.name for entry in os.scandir(self.tmp_dir) if entry.is_file()]
