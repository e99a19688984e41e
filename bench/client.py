"""Signed, streaming PutObject/GetObject clients (sync and async) that keep no object in memory.

Uploads are a generator over one reused 1 MiB random buffer with an explicit Content-Length, so
a 1 GiB PUT costs the client 1 MiB of memory; downloads are counted (and, when asked, hashed)
chunk by chunk and thrown away. Each client keeps its connection open between requests.

Multipart uploads (SyncClient only) stream each part the same way: BUFFER repeated, except the
part's last MiB, which comes from the uploader's own reused 1 MiB buffer with the part number
written into its last 8 bytes, so that no two parts are alike (a server that mixed up parts
would return the wrong composite checksum) and yet the client knows every part's digests from
a single pass over BUFFER (`expected_parts`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from xml.etree.ElementTree import ParseError, fromstring

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
    """What the server must report for an object of a given size built by `chunks`."""

    size: int
    md5: str
    sha256: str


def expected(size: int) -> Expected:
    """Hash the body once, outside any timed loop (about 1-3 s for 1 GiB)."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    for piece in chunks(size):
        md5.update(piece)
        sha.update(piece)
    return Expected(size, md5.hexdigest(), sha.hexdigest())


#: Where a part's number is written: the last bytes of its last MiB.
STAMP_BYTES = 8


def new_part_buffer() -> bytearray:
    """An uploader's own copy of BUFFER, reused for the stamped last MiB of each of its parts."""
    return bytearray(BUFFER)


def stamp(buffer: bytearray, number: int) -> bytearray:
    buffer[-STAMP_BYTES:] = number.to_bytes(STAMP_BYTES, "big")
    return buffer


def part_chunks(size: int, number: int, buffer: bytearray) -> Iterator[bytes | bytearray]:
    """Part `number` of `size` bytes (a whole number of MiB): BUFFER repeated, then `buffer`
    stamped with the part number. `buffer` is rewritten only when the next part starts, after
    this one has been sent (the sync client writes each piece before asking for the next)."""
    if size <= 0 or size % CHUNK:
        raise BenchError(f"a part must be a whole number of MiB, not {size} bytes")
    yield from chunks(size - CHUNK)
    yield stamp(buffer, number)


@dataclass(frozen=True)
class ExpectedParts:
    """What the server must report for a multipart object built by `part_chunks`."""

    part_size: int
    count: int
    #: MD5 of each part, hex: what UploadPart answers as its ETag (unquoted).
    part_md5s: list[str]
    #: the object: ETag (MD5 of the binary part MD5s, "-N") and composite SHA-256 ("-N").
    etag: str
    sha256: str

    @property
    def size(self) -> int:
        return self.part_size * self.count


def expected_parts(part_size: int, count: int) -> ExpectedParts:
    """Every part's MD5 and SHA-256, outside any timed loop: the parts differ only in their
    last MiB, so the hash state after the common part_size - 1 MiB is computed once and copied
    (about 0.3 s for 64 parts of 64 MiB instead of hashing 4 GiB)."""
    if part_size <= 0 or part_size % CHUNK:
        raise BenchError(f"a part must be a whole number of MiB, not {part_size} bytes")
    md5, sha = hashlib.md5(), hashlib.sha256()
    for piece in chunks(part_size - CHUNK):
        md5.update(piece)
        sha.update(piece)
    scratch = new_part_buffer()
    md5s: list[bytes] = []
    shas: list[bytes] = []
    for number in range(1, count + 1):
        last = stamp(scratch, number)
        m, h = md5.copy(), sha.copy()
        m.update(last)
        h.update(last)
        md5s.append(m.digest())
        shas.append(h.digest())
    return ExpectedParts(
        part_size, count, [m.hex() for m in md5s],
        f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{count}",
        f"{hashlib.sha256(b''.join(shas)).hexdigest()}-{count}")


class TimeLimitReached(Exception):
    """A download was cut off by its case's time limit (not a failure of the server)."""

    def __init__(self, received: int) -> None:
        super().__init__(f"time limit reached after {received} bytes")
        self.received = received


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

    # -- multipart upload --------------------------------------------------------------------

    def initiate(self, path: str) -> str:
        """InitiateMultipartUpload; returns the UploadId."""
        params = {"uploads": ""}
        r = self.http.post(_url(path), params=params,
                           headers=self.signer.headers("POST", path, params))
        if r.status_code != 200:
            raise BenchError(f"InitiateMultipartUpload {path}: HTTP {r.status_code}: "
                             f"{r.text[:300]}")
        try:
            upload_id = r.json()["UploadId"]
        except (ValueError, KeyError, TypeError):
            raise BenchError(f"InitiateMultipartUpload {path}: no UploadId in "
                             f"{r.text[:300]!r}") from None
        if not isinstance(upload_id, str) or not upload_id:
            raise BenchError(f"InitiateMultipartUpload {path}: bad UploadId {upload_id!r}")
        return upload_id

    def upload_part(self, path: str, upload_id: str, number: int, exp: ExpectedParts,
                    buffer: bytearray, on_bytes: OnBytes | None = None) -> str:
        """UploadPart, streamed from BUFFER and the uploader's `buffer`; checks the ETag
        against the part's MD5 and returns it as the server sent it (quoted)."""
        rep = _Reporter(on_bytes)

        def body() -> Iterator[bytes | bytearray]:
            for piece in part_chunks(exp.part_size, number, buffer):
                yield piece
                rep.add(len(piece))

        params = {"partNumber": str(number), "uploadId": upload_id}
        headers = {**self.signer.headers("PUT", path, params),
                   "Content-Length": str(exp.part_size),
                   "Content-Type": "application/octet-stream"}
        response = self.http.put(_url(path), params=params, content=body(), headers=headers)
        rep.flush()
        what = f"UploadPart {number} of {path}"
        if response.status_code != 200:
            raise BenchError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
        etag = response.headers.get("etag", "")
        if etag.strip('"') != exp.part_md5s[number - 1]:
            raise BenchError(f"{what}: ETag {etag!r}, expected MD5 {exp.part_md5s[number - 1]}")
        return etag

    def complete(self, path: str, upload_id: str, etags: list[str],
                 exp: ExpectedParts) -> None:
        """CompleteMultipartUpload of parts 1..N (etags[i] is part i+1's); checks the ETag."""
        body = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
                       for n, etag in enumerate(etags, 1))
        content = f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode()
        params = {"uploadId": upload_id}
        headers = {**self.signer.headers("POST", path, params),
                   "Content-Type": "application/xml"}
        r = self.http.post(_url(path), params=params, content=content, headers=headers)
        if r.status_code != 200:
            raise BenchError(f"CompleteMultipartUpload {path}: HTTP {r.status_code}: "
                             f"{r.text[:300]}")
        try:
            etag = fromstring(r.content).findtext("ETag")
        except ParseError:
            raise BenchError(f"CompleteMultipartUpload {path}: answer is not XML: "
                             f"{r.text[:300]!r}") from None
        if etag is None or etag.strip('"') != exp.etag:
            raise BenchError(f"CompleteMultipartUpload {path}: ETag {etag!r}, expected "
                             f"{exp.etag}")

    def abort(self, path: str, upload_id: str) -> None:
        """AbortMultipartUpload, best effort (after a failure or a time limit)."""
        params = {"uploadId": upload_id}
        self.http.delete(_url(path), params=params,
                         headers=self.signer.headers("DELETE", path, params))

    def get_multipart(self, path: str, exp: ExpectedParts, *, deadline: float,
                      on_bytes: OnBytes | None = None) -> int:
        """GET the whole object, counting (not hashing) it; checks status, ETag, composite
        x-cdcs-checksum-sha256 and size. Raises TimeLimitReached when time.monotonic() passes
        `deadline` mid-body; returns the bytes received."""
        rep = _Reporter(on_bytes)
        received = 0
        with self.http.stream("GET", _url(path), headers=self.signer.headers("GET", path)) as r:
            if r.status_code != 200:
                r.read()
                raise BenchError(f"GET {path}: HTTP {r.status_code}: {r.text[:300]}")
            etag = r.headers.get("etag", "")
            if etag.strip('"') != exp.etag:
                raise BenchError(f"GET {path}: ETag {etag!r}, expected {exp.etag}")
            checksum = r.headers.get("x-cdcs-checksum-sha256")
            if checksum != exp.sha256:
                raise BenchError(f"GET {path}: x-cdcs-checksum-sha256 {checksum!r}, expected "
                                 f"the composite {exp.sha256}")
            for piece in r.iter_raw():
                received += len(piece)
                rep.add(len(piece))
                if time.monotonic() >= deadline and received < exp.size:
                    rep.flush()
                    raise TimeLimitReached(received)
        rep.flush()
        if received != exp.size:
            raise BenchError(f"GET {path}: {received} bytes received, expected {exp.size}")
        return received

    def put_json(self, path: str, body: bytes) -> httpx.Response:
        headers = {**self.signer.headers("PUT", path), "Content-Type": "application/json"}
        return self.http.put(_url(path), content=body, headers=headers)

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
