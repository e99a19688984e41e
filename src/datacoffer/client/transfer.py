"""Whole-file transfers: `upload_file` and `download_file`, parallel, resumable and verified.

Both move bytes in worker threads that share the client's connection pool; neither holds more
than one chunk (1 MiB) per worker in memory.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from datacoffer.client import errors, models
from datacoffer.core.checksums import multipart_etag, multipart_sha256

if TYPE_CHECKING:
    from datacoffer.client.client import Client

MiB = 1024 * 1024
CHUNK = MiB
MAX_PARTS = 10_000
MIN_PART = MiB
#: How often an uploaded part is sent when its ETag does not match its MD5, and how often a
#: part or range is fetched when its download breaks off.
PART_ATTEMPTS = 3

#: Told the number of bytes moved since the last call (negative when a retry starts a part
#: again); called from worker threads.
Progress = Callable[[int], None]


def _ignore(_: int) -> None:
    pass


class Stopped(Exception):
    """Raised in a transfer's worker threads once the transfer is being stopped."""


class _Progress:
    """The caller's progress callback, and the point where workers notice a stop: every chunk
    read, sent or written reports here, so a stop (a failure elsewhere, Ctrl-C) ends each
    worker within one chunk."""

    def __init__(self, report: Progress | None, cancel: threading.Event | None) -> None:
        self.report = report or _ignore
        self.stop = cancel or threading.Event()

    def __call__(self, count: int) -> None:
        if self.stop.is_set():
            raise Stopped
        self.report(count)


@dataclass(frozen=True)
class TransferConfig:
    """How files move. The defaults keep a small server busy without holding much: 4 parts in
    flight hold at most 4 MiB of the client's memory whatever the part size (the README's
    quick start moves 1 GiB in 64 parts this way)."""

    #: files larger than this are uploaded in parts and downloaded in parallel ranges
    threshold: int = 64 * MiB
    #: the size of a part (grown when a file would need more than 10,000 parts)
    part_size: int = 16 * MiB
    #: parts or ranges in flight at once
    concurrency: int = 4
    #: resume an interrupted multipart upload of the same key (found with ListMultipartUploads)
    resume: bool = True

    def part_size_for(self, size: int) -> int:
        return max(self.part_size, MIN_PART, math.ceil(size / MAX_PARTS))


def _spans(size: int, part_size: int) -> list[tuple[int, int, int]]:
    """(number, offset, length) of each part, numbered from 1."""
    return [(i + 1, off, min(part_size, size - off))
            for i, off in enumerate(range(0, size, part_size))]


class _Hashed:
    """The chunks of a file span, hashed (MD5, SHA-256 or both) and reported as they are read.

    Called once per attempt: each call starts the hashes and the progress count afresh."""

    def __init__(self, path: Path, offset: int, length: int, progress: Progress, *,
                 md5: bool = True, sha256: bool = True) -> None:
        self.path, self.offset, self.length, self.progress = path, offset, length, progress
        self.wanted = md5, sha256
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256()
        self.sent = 0

    def __call__(self) -> Iterator[bytes]:
        if self.sent:
            self.progress(-self.sent)
        self.md5, self.sha256, self.sent = hashlib.md5(), hashlib.sha256(), 0
        hashers = [h for h, wanted in zip((self.md5, self.sha256), self.wanted, strict=True)
                   if wanted]
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            left = self.length
            while left > 0:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:
                    raise errors.DataCofferError(f"{self.path} shrank while it was uploaded")
                left -= len(chunk)
                for hasher in hashers:
                    hasher.update(chunk)
                self.sent += len(chunk)
                self.progress(len(chunk))
                yield chunk

    def digest_all(self) -> None:
        """Hash the span without sending it (a resumed part is checked this way)."""
        for _ in self():
            pass


def _run_all(tasks: list[Callable[[], None]], concurrency: int, progress: _Progress) -> None:
    """Run the tasks on `concurrency` threads. The first failure, or an interrupt of the
    calling thread (Ctrl-C), cancels what has not started, stops the running ones at their
    next chunk, and is raised once they have ended."""
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency),
                              thread_name_prefix="datacoffer-transfer")
    try:
        futures: list[Future[None]] = [pool.submit(task) for task in tasks]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future.done() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
    except BaseException:
        progress.stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _check(what: str, expected: str, actual: str) -> None:
    if expected != actual:
        raise errors.ChecksumMismatch(f"{what}: the server reports {expected!r}, "
                                      f"the local data gives {actual!r}")


# -- upload ----------------------------------------------------------------------------------

def upload_file(client: Client, coffer: str, key: str, path: Path, *,
                config: TransferConfig | None = None, progress: Progress | None = None,
                content_type: str | None = None,
                cancel: threading.Event | None = None) -> models.TransferResult:
    """Store `path` at `key`: one PutObject up to `config.threshold`, else a multipart upload
    with `config.concurrency` parts in flight.

    Verified end to end: a PutObject is sent with its Content-MD5, each part's ETag is checked
    against the part's MD5, and the stored object's SHA-256 (HeadObject) against the file's.
    A multipart upload that fails is left in place so that running the same upload again
    resumes it: parts already stored with the right MD5 are kept (ListParts). Setting `cancel`
    (from another thread) stops the transfer within a chunk, with `Stopped`.
    """
    config = config or TransferConfig()
    size = path.stat().st_size
    if size <= config.threshold:
        return _put(client, coffer, key, path, size, _Progress(progress, cancel), content_type)
    return _multipart(client, coffer, key, path, size, config, _Progress(progress, cancel),
                      content_type)


def _put(client: Client, coffer: str, key: str, path: Path, size: int, progress: _Progress,
         content_type: str | None) -> models.TransferResult:
    # MD5 first (Content-MD5 goes before the body), SHA-256 while sending: each byte is
    # hashed once by each, though the file is read twice (the second time from the page cache)
    local = _Hashed(path, 0, size, _ignore, sha256=False)
    local.digest_all()
    md5_b64 = base64.b64encode(local.md5.digest()).decode()
    body = _Hashed(path, 0, size, progress, md5=False)
    result = client.put_object(coffer, key, body, length=size,
                               content_type=content_type, content_md5=md5_b64)
    _check(f"ETag of {key}", result.etag, local.md5.hexdigest())
    info = client.head_object(coffer, key)
    _check(f"SHA-256 of {key}", info.sha256, body.sha256.hexdigest())
    return models.TransferResult(coffer, key, size, result.etag, info.sha256, parts=1)


def find_upload(client: Client, coffer: str, key: str) -> models.Upload | None:
    """The upload in progress for exactly this key (a key has at most one)."""
    return next((u for u in client.iter_uploads(coffer, prefix=key) if u.key == key), None)


def _multipart(client: Client, coffer: str, key: str, path: Path, size: int,
               config: TransferConfig, progress: _Progress,
               content_type: str | None) -> models.TransferResult:
    part_size = config.part_size_for(size)
    upload = find_upload(client, coffer, key) if config.resume else None
    stored: dict[int, models.Part] = {}
    if upload is None:
        upload = client.initiate_multipart_upload(coffer, key, content_type=content_type)
    else:
        stored = {p.number: p for p in client.iter_parts(coffer, key, upload.upload_id)}
        # the interrupted run's part size: every part but the last has it, none is larger
        largest = max((p.size for p in stored.values()), default=0)
        if MIN_PART <= largest < size and len(_spans(size, largest)) <= MAX_PARTS:
            part_size = largest
    spans = _spans(size, part_size)
    md5s: dict[int, bytes] = {}
    sha256s: dict[int, bytes] = {}
    resumed = 0
    lock = threading.Lock()

    def send(number: int, offset: int, length: int) -> None:
        nonlocal resumed
        source = _Hashed(path, offset, length, progress)
        old = stored.get(number)
        if old is not None and old.size == length:
            source.digest_all()
            if source.md5.hexdigest() == old.etag:
                md5s[number], sha256s[number] = source.md5.digest(), source.sha256.digest()
                with lock:
                    resumed += 1
                return
        for attempt in range(PART_ATTEMPTS):
            part = client.upload_part(coffer, key, upload.upload_id, number, source,
                                      length=length)
            if part.etag == source.md5.hexdigest():
                md5s[number], sha256s[number] = source.md5.digest(), source.sha256.digest()
                return
            if attempt + 1 == PART_ATTEMPTS:
                _check(f"ETag of part {number} of {key}", part.etag, source.md5.hexdigest())

    _run_all([lambda s=s: send(*s) for s in spans], config.concurrency, progress)
    order = [n for n, _, _ in spans]
    parts = [models.Part(n, md5s[n].hex(), length) for n, _, length in spans]
    etag = multipart_etag([md5s[n] for n in order])
    try:
        client.complete_multipart_upload(coffer, key, upload.upload_id, parts)
    except errors.BY_CODE["MultipartAlreadyCompleted"]:
        pass  # an earlier run completed it; the checks below tell whether with these bytes
    except errors.TransportError as lost:
        # the answer was lost: the object exists if the complete was done
        try:
            info = client.head_object(coffer, key)
        except errors.NotFound:
            raise lost from None
    else:
        info = client.head_object(coffer, key)
    _check(f"ETag of {key}", info.etag, etag)
    _check(f"SHA-256 of {key}", info.sha256, multipart_sha256([sha256s[n] for n in order]))
    return models.TransferResult(coffer, key, size, etag, info.sha256, parts=len(spans),
                                 resumed_parts=resumed)


# -- download --------------------------------------------------------------------------------

def download_file(client: Client, coffer: str, key: str, path: Path, *,
                  config: TransferConfig | None = None, progress: Progress | None = None,
                  cancel: threading.Event | None = None) -> models.TransferResult:
    """Fetch an object into `path`, verified against its `x-cdcs-checksum-sha256`.

    A multipart object is fetched part by part (GetObject `partNumber`), each part checked
    against its own SHA-256 and the whole against the composite; a large simple object in
    parallel ranges, hashed in order as they land. The bytes go to a hidden file beside
    `path`, which replaces `path` only once verified and flushed to disk; a failed or
    cancelled (`cancel`, as for `upload_file`) download leaves nothing behind.
    """
    config = config or TransferConfig()
    stopper = _Progress(progress, cancel)
    info = client.head_object(coffer, key, part_number=1)
    tmp = path.with_name(f".{path.name[:200]}.datacoffer-{secrets.token_hex(4)}")
    # created as any new file would be (umask applies); a replaced file keeps its mode
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        os.ftruncate(fd, info.size)
        count = info.parts_count or 1
        if count > 1 or info.multipart:
            parts = count
            _download_parts(client, coffer, key, fd, info, count, config, stopper)
        else:
            part_size = (config.part_size_for(info.size) if info.size > config.threshold
                         else info.size)
            spans = _spans(info.size, part_size)
            parts = len(spans)
            _download_ranges(client, coffer, key, fd, info, spans, config, stopper)
        with contextlib.suppress(FileNotFoundError):
            os.fchmod(fd, stat.S_IMODE(path.stat().st_mode))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return models.TransferResult(coffer, key, info.size, info.etag, info.sha256, parts=parts)


def _fetch(client: Client, coffer: str, key: str, fd: int, progress: _Progress, *,
           byte_range: tuple[int, int] | None = None,
           part_number: int | None = None) -> tuple[bytes, str | None]:
    """Write one range or part at its offset in `fd`; its SHA-256 and the part's SHA-256 as
    the server reports it. Retried from the start on a broken connection."""
    for attempt in range(PART_ATTEMPTS):
        written = 0
        sha = hashlib.sha256()
        try:
            with client.get_object(coffer, key, byte_range=byte_range,
                                   part_number=part_number) as reader:
                offset = reader.span[0]
                for chunk in reader.iter_bytes(CHUNK):  # 1 MiB writes: 64 KiB ones cost 3x the CPU
                    os.pwrite(fd, chunk, offset + written)
                    sha.update(chunk)
                    written += len(chunk)
                    progress(len(chunk))
                if written != reader.length:
                    raise errors.TransportError("the download ended early")
                return sha.digest(), reader.info.part_sha256
        except errors.TransportError:
            progress(-written)
            if attempt + 1 == PART_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _download_parts(client: Client, coffer: str, key: str, fd: int, info: models.ObjectInfo,
                    count: int, config: TransferConfig, progress: _Progress) -> None:
    digests: dict[int, bytes] = {}

    def one(number: int) -> None:
        digest, expected = _fetch(client, coffer, key, fd, progress, part_number=number)
        _check(f"SHA-256 of part {number} of {key}", expected or "", digest.hex())
        digests[number] = digest

    _run_all([lambda n=n: one(n) for n in range(1, count + 1)], config.concurrency, progress)
    actual = multipart_sha256([digests[n] for n in range(1, count + 1)])
    _check(f"SHA-256 of {key}", info.sha256, actual)


def _download_ranges(client: Client, coffer: str, key: str, fd: int, info: models.ObjectInfo,
                     spans: list[tuple[int, int, int]], config: TransferConfig,
                     progress: _Progress) -> None:
    landed = [threading.Event() for _ in spans]

    def one(index: int, offset: int, length: int) -> None:
        try:
            _fetch(client, coffer, key, fd, progress, byte_range=(offset, offset + length - 1))
        except BaseException:
            progress.stop.set()
            raise
        landed[index].set()

    def hash_in_order() -> None:
        # the object's SHA-256 is sequential: hash each range once it and all before it landed
        sha = hashlib.sha256()
        for index, (_, offset, length) in enumerate(spans):
            while not landed[index].wait(0.1):
                if progress.stop.is_set():
                    return
            for pos in range(offset, offset + length, CHUNK):
                sha.update(os.pread(fd, min(CHUNK, offset + length - pos), pos))
        _check(f"SHA-256 of {key}", info.sha256, sha.hexdigest())

    if len(spans) == 1:  # one GET: hashed as it arrives
        digest, _ = _fetch(client, coffer, key, fd, progress)
        _check(f"SHA-256 of {key}", info.sha256, digest.hex())
        return
    tasks = [lambda i=i, s=s: one(i, s[1], s[2]) for i, s in enumerate(spans)]
    _run_all([hash_in_order, *tasks], config.concurrency + 1, progress)


# -- comparing -------------------------------------------------------------------------------

def same_content(client: Client, coffer: str, key: str, path: Path) -> bool:
    """Whether the stored object holds exactly the bytes of the local file, by its ETag: the
    file is hashed in the object's own part size (HeadObject with partNumber=1 tells it)."""
    info = client.head_object(coffer, key, part_number=1)
    if not path.is_file() or path.stat().st_size != info.size:
        return False
    if not info.multipart:
        local = _Hashed(path, 0, info.size, _ignore)
        local.digest_all()
        return local.md5.hexdigest() == info.etag
    md5s = []
    for _, offset, length in _spans(info.size, info.part_size or info.size):
        local = _Hashed(path, offset, length, _ignore)
        local.digest_all()
        md5s.append(local.md5.digest())
    # a multipart object may end with an empty part, which no span of the file stands for
    md5s += [hashlib.md5(b"").digest()] * max(0, (info.parts_count or 0) - len(md5s))
    return multipart_etag(md5s) == info.etag
