"""What the large-object cases need to run through the project's SDK (`datacoffer.client`).

- `write_source`: the file an upload case sends, random bytes written once (outside the timed
  part), fsynced, with the SHA-256 the server must end up reporting computed as it is written,
  so the bench checks the SDK's `TransferResult` against something the SDK did not compute.
- `MeteredClient`: the SDK's `Client`, timing every request it makes (UploadPart latencies and
  the CompleteMultipartUpload call of a multipart upload are not visible from outside) and
  noting the EncryptType its HEADs and GETs were answered with.
- `Meter`: the SDK's progress callback: advances the progress bar, notes when the first and the
  last byte of a transfer moved, and ends a transfer from inside (raising `Stop`) at the case's
  time limit or on Ctrl-C.
- `sdk_work` and `ceiling`: the SDK's own per-byte work for one transfer (reading the file at
  its chunk size and hashing, with the same passes and threads as `transfer.py`), timed alone:
  the client-side ceiling to compare the achieved MiB/s with.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bench.client import BenchError
from datacoffer.client import Client, RetryPolicy, TransferConfig
from datacoffer.client.transfer import CHUNK

MIB = 1024 * 1024
#: Source files are generated and written in blocks of this size.
WRITE_BLOCK = 8 * MIB

#: (offset, length) of a part or of the whole file
Span = tuple[int, int]


class Stop(Exception):
    """Raised by `Meter` from inside an SDK transfer to end it: the case's time limit was
    reached, or the run is being interrupted. Not a failure of the server."""


def spans(size: int, part_size: int) -> list[Span]:
    """(offset, length) of each part of `part_size` bytes, the last one cut to fit."""
    return [(off, min(part_size, size - off)) for off in range(0, size, part_size)]


# -- the source file -------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    path: Path
    size: int
    #: what x-cdcs-checksum-sha256 must be: hex SHA-256, or for a multipart upload the
    #: composite (SHA-256 of the parts' binary SHA-256 digests, "-N"; docs/decisions.md)
    sha256: str


def write_source(path: Path, size: int, part_size: int | None) -> Source:
    """Write `size` random bytes to `path` and fsync them, so that the file's write-back does
    not compete with the server's disk writes during the timed upload. The bytes are an
    AES-CTR keystream under a random key: incompressible, and made at ~3 GiB/s where
    os.urandom manages ~250 MiB/s. Their SHA-256 is computed as they are written, per part
    when `part_size` is given (a multipart upload in parts of that size)."""
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    zeros = memoryview(bytes(WRITE_BLOCK))
    digests: list[bytes] = []
    with open(path, "wb") as fh:
        for _, length in spans(size, part_size or size):
            sha = hashlib.sha256()
            left = length
            while left > 0:
                data = encryptor.update(zeros[:min(WRITE_BLOCK, left)])
                fh.write(data)
                sha.update(data)
                left -= len(data)
            digests.append(sha.digest())
        fh.flush()
        os.fsync(fh.fileno())
    if part_size is None:
        return Source(path, size, digests[0].hex())
    composite = hashlib.sha256(b"".join(digests)).hexdigest()
    return Source(path, size, f"{composite}-{len(digests)}")


# -- the client and its progress callback ----------------------------------------------------

@dataclass(frozen=True)
class Timed:
    """One request the SDK made: from sending it to its answer (for a streamed GET: to the
    answer's headers, the body is read afterwards)."""

    method: str
    params: dict[str, str]
    seconds: float
    #: the request body's Content-Length, 0 when none
    length: int
    #: the answer's x-cdcs-encrypt-type (HeadObject, GetObject), None when it has none
    encrypt_type: str | None = None


class MeteredClient(Client):
    """The SDK's client, unchanged, except that it records every request that got an answer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timed: list[Timed] = []  # list.append is atomic: the SDK's threads share it

    def request(self, method: str, coffer: str = "", key: str = "",
                **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        response = super().request(method, coffer, key, **kwargs)
        headers = kwargs.get("headers") or {}
        self.timed.append(Timed(method, dict(kwargs.get("params") or {}),
                                time.perf_counter() - started,
                                int(headers.get("Content-Length", 0)),
                                response.headers.get("x-cdcs-encrypt-type")))
        return response

    def encrypt_types(self) -> set[str]:
        """The x-cdcs-encrypt-type values of all the answers so far that carried one."""
        return {t.encrypt_type for t in self.timed if t.encrypt_type is not None}

    def parts_uploaded(self) -> list[Timed]:
        """The UploadPart requests answered so far."""
        return [t for t in self.timed if t.method == "PUT" and "partNumber" in t.params]

    def complete_ms(self) -> float | None:
        """The last CompleteMultipartUpload call's own latency, in ms."""
        calls = [t for t in self.timed
                 if t.method == "POST" and "uploadId" in t.params]
        return calls[-1].seconds * 1000 if calls else None


class Meter:
    """The SDK's progress callback for one case's transfers (called from its worker threads).

    Per transfer (between `begin` and `end`) it notes the seconds from the call to the first
    byte reported and from the last byte reported to the call's return; for an upload a byte is
    reported when the SDK hands it to httpx (after reading and hashing it), for a download when
    it has been written to the file."""

    def __init__(self, advance: Callable[[int], None], stop: threading.Event) -> None:
        self._advance = advance
        self._stop = stop
        self._lock = threading.Lock()
        self.deadline = math.inf
        #: net bytes of the current transfer (a retried part or range counts again from 0)
        self.moved = 0
        #: parts or ranges that the SDK started again (it reports their bytes as negative)
        self.retries = 0
        self._started = self._first = self._last = 0.0
        #: (seconds before the first byte, seconds after the last byte) of each transfer
        self.edges: list[tuple[float, float]] = []

    def begin(self, deadline: float) -> None:
        with self._lock:
            self.deadline = deadline
            self.moved = 0
            self._started = time.perf_counter()
            self._first = self._last = 0.0

    def end(self) -> None:
        ended = time.perf_counter()
        with self._lock:
            first = self._first or ended
            self.edges.append((first - self._started, ended - (self._last or ended)))

    def __call__(self, n: int) -> None:
        now = time.perf_counter()
        with self._lock:
            self.moved += n
            if n < 0:
                self.retries += 1
            if not self._first:
                self._first = now
            self._last = now
        self._advance(n)
        if self._stop.is_set():
            raise Stop("interrupted")
        if time.monotonic() >= self.deadline:
            raise Stop("time limit reached")

    def averages(self) -> tuple[float | None, float | None]:
        """Mean seconds before the first byte and after the last byte, per transfer."""
        if not self.edges:
            return None, None
        return (sum(e[0] for e in self.edges) / len(self.edges),
                sum(e[1] for e in self.edges) / len(self.edges))


def new_client(base_url: str, host_header: str, secret_id: str, secret_key: str,
               timeout: float) -> MeteredClient:
    """The SDK client for one case: no retries (a benchmark must see every failure, not pay for
    it silently in time), the bench's own timeouts."""
    client = MeteredClient(base_url, secret_id, secret_key, timeout=timeout,
                           retry=RetryPolicy(attempts=1))
    if client.host != host_header:
        client.close()
        raise BenchError(f"the SDK would send Host: {client.host}, not {host_header}: unset "
                         "DATACOFFER_REGION (or the region of your datacoffer profile)")
    return client


# -- the client-side ceiling -----------------------------------------------------------------

@dataclass(frozen=True)
class Pass:
    """Reading spans of a file at the SDK's chunk size and hashing them, `threads` at a
    time."""

    algorithms: tuple[str, ...]
    spans: list[Span]
    threads: int

    def describe(self) -> str:
        what = "+".join(a.upper().replace("SHA256", "SHA-256") for a in self.algorithms)
        where = "whole file" if len(self.spans) == 1 else f"{len(self.spans)} parts"
        threads = "1 thread" if self.threads == 1 else f"{self.threads} threads"
        return f"{what} ({where}, {threads})"


def sdk_work(op: str, size: int, config: TransferConfig) -> list[Pass]:
    """The per-byte hashing `datacoffer.client.transfer` does to move `size` bytes with
    `config`, for a download of an object uploaded with the same `config` (keep in step with
    transfer.py):

    - upload, one PutObject (`_put`): MD5 of the whole file for the Content-MD5, then SHA-256
      while sending it: two passes, one thread;
    - multipart upload (`_multipart`): MD5+SHA-256 of each part while sending it, `concurrency`
      parts at once;
    - download of a multipart object (`_download_parts`): SHA-256 of each part as it lands,
      `concurrency` at once;
    - download of a simple object in one GET (`_download_ranges` with one range): SHA-256 while
      it lands.
    """
    if size <= config.threshold:
        if op == "put":
            return [Pass(("md5",), [(0, size)], 1), Pass(("sha256",), [(0, size)], 1)]
        return [Pass(("sha256",), [(0, size)], 1)]
    parts = spans(size, config.part_size_for(size))
    if op == "put":
        return [Pass(("md5", "sha256"), parts, config.concurrency)]
    return [Pass(("sha256",), parts, config.concurrency)]


def _hash_span(path: Path, algorithms: tuple[str, ...], offset: int, length: int) -> None:
    hashers = [hashlib.new(a) for a in algorithms]
    with open(path, "rb") as fh:
        fh.seek(offset)
        left = length
        while left > 0:
            chunk = fh.read(min(CHUNK, left))
            if not chunk:
                raise BenchError(f"{path} is shorter than {offset + length} bytes")
            for h in hashers:
                h.update(chunk)
            left -= len(chunk)
    for h in hashers:
        h.digest()


def ceiling(path: Path, size: int, work: list[Pass]) -> tuple[float, float]:
    """Time the SDK's per-byte work for one transfer of `path` alone (no network, no server;
    the file is in the page cache, as during the transfer): (MiB/s, seconds)."""
    seconds = 0.0
    for p in work:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=p.threads) as pool:
            for future in [pool.submit(_hash_span, path, p.algorithms, off, length)
                           for off, length in p.spans]:
                future.result()
        seconds += time.perf_counter() - started
    return size / MIB / seconds, seconds
