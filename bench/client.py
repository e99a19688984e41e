"""Signed, streaming PutObject/GetObject clients (sync and async) that keep no object in memory.

The raw client of the small and medium cases (4 KiB, 1 MiB, 64 MiB): the large objects go
through the project's SDK instead (bench/sdk.py). Uploads are a generator over one reused 1 MiB
random buffer with an explicit Content-Length, so a PUT costs the client 1 MiB of memory
whatever its size; downloads are counted (and, when asked, hashed) chunk by chunk and thrown
away. Each client keeps its connection open between requests.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import httpx

from bench.server import Account
from datacoffer import signing

CHUNK = 1024 * 1024
#: The one upload buffer: random, so that nothing on the way can compress or deduplicate it.
BUFFER = os.urandom(CHUNK)
#: Progress is reported in steps of at least this much, to keep the display off the hot path.
REPORT_STEP = 1024 * 1024
TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=300.0, pool=60.0)

OnBytes = Callable[[int], None]


class BenchError(RuntimeError):
    """A request failed or returned wrong data: the numbers of that case are not valid."""


def chunks(size: int) -> Iterator[bytes]:
    """The object body of `size` bytes: BUFFER repeated, the last piece cut to fit."""
    left = size
    while left > 0:
        n = min(left, CHUNK)
        yield BUFFER if n == CHUNK else BUFFER[:n]
        left -= n


@dataclass(frozen=True)
class Expected:
    """What the server must report for an object of a given size built by `chunks`, stored
    in a coffer of a given EncryptType."""

    size: int
    md5: str
    sha256: str
    #: what a GET's x-cdcs-encrypt-type must say: the coffer's EncryptType
    encrypt_type: int = 0


def expected(size: int, encrypt_type: int = 0) -> Expected:
    """Hash the body once, outside any timed loop (about 1-3 s for 1 GiB)."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    for piece in chunks(size):
        md5.update(piece)
        sha.update(piece)
    return Expected(size, md5.hexdigest(), sha.hexdigest(), encrypt_type)


class _Reporter:
    """Batches byte counts so that the progress callback runs about once per MiB."""

    def __init__(self, on_bytes: OnBytes | None) -> None:
        self.on_bytes = on_bytes
        self.pending = 0

    def add(self, n: int) -> None:
        self.pending += n
        if self.pending >= REPORT_STEP:
            self.flush()

    def flush(self) -> None:
        if self.pending and self.on_bytes is not None:
            self.on_bytes(self.pending)
        self.pending = 0


class Signer:
    """Builds the Authorization header with the project's own signer."""

    def __init__(self, host_header: str, account: Account) -> None:
        self.host_header = host_header
        self.account = account

    def headers(self, method: str, path: str,
                params: dict[str, str] | None = None) -> dict[str, str]:
        """`params` are the query parameters the request will carry: all of them are signed."""
        fields = signing.sign(self.account.secret_id, self.account.secret_key, method, path,
                              params, {"host": self.host_header})
        return {"Authorization": signing.authorization_header(fields)}


def _url(path: str) -> str:
    return signing.urlencode(path).replace("%2F", "/")


def _check_put(response: httpx.Response, exp: Expected, path: str) -> None:
    if response.status_code != 200:
        raise BenchError(f"PUT {path}: HTTP {response.status_code}: {response.text[:300]}")
    etag = response.headers.get("etag", "").strip('"')
    if etag != exp.md5:
        raise BenchError(f"PUT {path}: ETag {etag!r}, expected MD5 {exp.md5}")


def _check_get_head(response: httpx.Response, exp: Expected, path: str) -> None:
    if response.status_code != 200:
        raise BenchError(f"GET {path}: HTTP {response.status_code}")
    if response.headers.get("x-cdcs-checksum-sha256") != exp.sha256:
        raise BenchError(f"GET {path}: x-cdcs-checksum-sha256 does not match what was stored")
    got = response.headers.get("x-cdcs-encrypt-type")
    if got != str(exp.encrypt_type):
        raise BenchError(f"GET {path}: x-cdcs-encrypt-type {got!r}, expected "
                         f"{exp.encrypt_type} (the coffer's EncryptType)")


def _check_get_body(received: int, sha: hashlib._Hash | None, exp: Expected, path: str) -> None:
    if received != exp.size:
        raise BenchError(f"GET {path}: {received} bytes received, expected {exp.size}")
    if sha is not None and sha.hexdigest() != exp.sha256:
        raise BenchError(f"GET {path}: SHA-256 of the received bytes is wrong")


class SyncClient:
    """One httpx.Client (one kept-alive connection) for one worker thread."""

    def __init__(self, base_url: str, signer: Signer) -> None:
        self.signer = signer
        self.http = httpx.Client(base_url=base_url, timeout=TIMEOUT)

    def put(self, path: str, exp: Expected, on_bytes: OnBytes | None = None) -> None:
        rep = _Reporter(on_bytes)

        def body() -> Iterator[bytes]:
            for piece in chunks(exp.size):
                yield piece
                rep.add(len(piece))

        headers = {**self.signer.headers("PUT", path), "Content-Length": str(exp.size),
                   "Content-Type": "application/octet-stream"}
        response = self.http.put(_url(path), content=body(), headers=headers)
        rep.flush()
        _check_put(response, exp, path)

    def get(self, path: str, exp: Expected, *, hash_body: bool,
            on_bytes: OnBytes | None = None) -> None:
        rep = _Reporter(on_bytes)
        sha = hashlib.sha256() if hash_body else None
        received = 0
        with self.http.stream("GET", _url(path), headers=self.signer.headers("GET", path)) as r:
            if r.status_code != 200:
                r.read()
            _check_get_head(r, exp, path)
            for piece in r.iter_raw():
                received += len(piece)
                if sha is not None:
                    sha.update(piece)
                rep.add(len(piece))
        rep.flush()
        _check_get_body(received, sha, exp, path)

    def close(self) -> None:
        self.http.close()


class AsyncClient:
    """The asyncio twin of SyncClient: one httpx.AsyncClient per concurrent worker."""

    def __init__(self, base_url: str, signer: Signer) -> None:
        self.signer = signer
        self.http = httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT)

    async def put(self, path: str, exp: Expected, on_bytes: OnBytes | None = None) -> None:
        rep = _Reporter(on_bytes)

        async def body() -> AsyncIterator[bytes]:
            for piece in chunks(exp.size):
                yield piece
                rep.add(len(piece))

        headers = {**self.signer.headers("PUT", path), "Content-Length": str(exp.size),
                   "Content-Type": "application/octet-stream"}
        response = await self.http.put(_url(path), content=body(), headers=headers)
        rep.flush()
        _check_put(response, exp, path)

    async def get(self, path: str, exp: Expected, *, hash_body: bool,
                  on_bytes: OnBytes | None = None) -> None:
        rep = _Reporter(on_bytes)
        sha = hashlib.sha256() if hash_body else None
        received = 0
        async with self.http.stream("GET", _url(path),
                                    headers=self.signer.headers("GET", path)) as r:
            if r.status_code != 200:
                await r.aread()
            _check_get_head(r, exp, path)
            async for piece in r.aiter_raw():
                received += len(piece)
                if sha is not None:
                    sha.update(piece)
                rep.add(len(piece))
        rep.flush()
        _check_get_body(received, sha, exp, path)

    async def aclose(self) -> None:
        await self.http.aclose()
