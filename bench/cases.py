"""The benchmark cases and the loops that run them.

Every loop is bounded twice: by a count of operations and by a time limit (checked before each
new operation; an operation in flight is bounded by the client's timeouts, and an SDK transfer
also by the time limit itself, checked at every MiB). Latencies are taken per operation; the
wall time of a case runs from the moment all its clients are ready to the end of its last
operation.

Two clients move the bytes:

- the raw client (bench/client.py) for the 4 KiB, 1 MiB and 64 MiB cases: one signed request per
  operation from a reused in-memory buffer, so that those cases measure the server's
  per-request path;
- the project's SDK (`datacoffer.client`, bench/sdk.py) for the large objects: `upload_file`
  from a real file of random bytes and `download_file` into a real file, verified by the SDK
  and checked again by the bench. The 1 GiB case sends each object in one PutObject and reads it
  in one GET; the multipart case uploads one object in parts, several at once, and reads it back
  part by part.

Every case runs once per EncryptType asked for (0: none, 1: the service master key, 2: a KMS
customer key; docs/encryption.md), each in its own coffer of that type: `put-1mib@e1` is the
`put-1mib` case in the EncryptType 1 coffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from rich.progress import Progress, TaskID

from bench.client import (
    TIMEOUT,
    AsyncClient,
    BenchError,
    Expected,
    Signer,
    SyncClient,
    expected,
)
from bench.sdk import (
    Meter,
    MeteredClient,
    Source,
    Stop,
    ceiling,
    new_client,
    sdk_work,
    write_source,
)
from bench.server import REGION, BenchServer, CustomerKey
from datacoffer.client import TransferConfig
from datacoffer.client.errors import DataCofferError
from datacoffer.client.models import TransferResult

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
#: Objects up to this size are measured in operations per second, larger ones in MiB/s.
SMALL = 64 * KIB
#: Objects of this size and larger are "large": the cases the encryption target is about (the
#: throughput at EncryptType 1 and 2 within 15 % of EncryptType 0's).
LARGE = 64 * MIB
#: Downloads up to this size are hashed by the raw client too (SHA-256), larger ones only
#: counted (and checked against the server's x-cdcs-checksum-sha256, which the server itself
#: verifies while reading): hashing on the client would sit on the single-client critical path.
HASH_LIMIT = SMALL
READY_TIMEOUT = 60.0

Mode = Literal["threads", "async"]

#: Every EncryptType, the default of --encrypt-types; 0 is the baseline of the comparison.
ENCRYPT_TYPES = (0, 1, 2)
#: The EncryptType whose coffer needs a KMS customer key (and the account's role grant).
KMS_ENCRYPT_TYPE = 2

#: The large objects sent whole through the SDK, one PutObject / one GET each: (object size,
#: objects, time limit of each of the PUT and GET cases in seconds).
SDK_SINGLE_FULL = (GIB, 2, 600.0)
SDK_SINGLE_QUICK = (128 * MIB, 2, 30.0)
#: The multipart case, through the SDK: (object size, part size, parts in flight, time limit of
#: each of its two cases, upload and download, in seconds).
MULTIPART_FULL = (4 * GIB, 64 * MIB, 4, 600.0)
MULTIPART_QUICK = (256 * MIB, 64 * MIB, 4, 30.0)


@dataclass(frozen=True)
class Case:
    #: the case without its EncryptType, e.g. "put-1mib" (what --cases patterns without "@"
    #: match)
    base: str
    op: Literal["put", "get"]
    size: int
    #: operations to run (SDK cases: files to upload or download)
    count: int
    #: threads (or tasks) running the case's loop; an SDK case has one, the SDK's own threads
    #: are `sdk.concurrency`
    clients: int
    time_limit: float
    #: the objects a PUT case writes and its GET case reads
    store: str
    #: None: the raw client; else the bytes move through the SDK with this configuration
    sdk: TransferConfig | None = None
    #: the EncryptType of the coffer the case runs in
    encrypt_type: int = 0

    @property
    def name(self) -> str:
        """The case's full name, with its EncryptType: "put-1mib@e1"."""
        return f"{self.base}{type_suffix(self.encrypt_type)}"

    @property
    def objects(self) -> str:
        """The objects a PUT case writes and its GET case reads: its store, in the case's
        coffer."""
        return f"{self.store}{type_suffix(self.encrypt_type)}"

    @property
    def small(self) -> bool:
        return self.size <= SMALL

    @property
    def hash_body(self) -> bool:
        return self.sdk is None and self.op == "get" and self.size <= HASH_LIMIT

    @property
    def multipart(self) -> bool:
        return self.sdk is not None and self.size > self.sdk.threshold

    @property
    def part_size(self) -> int:
        """The part size of a multipart case (0 otherwise)."""
        return self.sdk.part_size_for(self.size) if self.sdk and self.multipart else 0

    @property
    def parts(self) -> int:
        """Parts per object: what the SDK's TransferResult.parts must say."""
        return math.ceil(self.size / self.part_size) if self.multipart else 1

    @property
    def streams(self) -> int:
        """Requests in flight at once."""
        return self.sdk.concurrency if self.sdk is not None else self.clients

    @property
    def title(self) -> str:
        """The label with the EncryptType: "PUT 1 MiB x1 @e1"."""
        return f"{self.label} {type_suffix(self.encrypt_type)}"

    @property
    def kind(self) -> str:
        return "multipart" if self.multipart and self.op == "put" else self.op

    @property
    def label(self) -> str:
        size = size_label(self.size)
        if self.sdk is None:
            return f"{self.op.upper()} {size} x{self.clients}"
        if not self.multipart:
            return f"{self.op.upper()} {size} x{self.streams} (SDK)"
        if self.op == "put":
            return f"MULTIPART {size} x{self.streams} (SDK)"
        return f"GET {size} x{self.streams} (SDK, by part)"


def type_suffix(encrypt_type: int) -> str:
    """What a case's name and label end with: "@e1" for EncryptType 1."""
    return f"@e{encrypt_type}"


def size_label(size: int) -> str:
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} B"


def _slug(size: int) -> str:
    return size_label(size).replace(" ", "").lower()


def _put_get(tail: str, size: int, count: int, clients: int, limit: float, store: str,
             sdk: TransferConfig | None = None) -> list[list[Case]]:
    """A PUT case and the GET case that reads what it wrote."""
    return [[Case(f"{op}-{tail}", op, size, count, clients, limit, store, sdk)
             for op in ("put", "get")]]


def plan(*, quick: bool, encrypt_types: Sequence[int] = ENCRYPT_TYPES) -> list[Case]:
    """The cases in run order: each PUT case and the GET case that reads what it has just
    written, once per EncryptType (put-1mib@e0, get-1mib@e0, put-1mib@e1, get-1mib@e1, ...), so
    that the types of one case run side by side, under the same conditions (nearly the same
    data already on the disk, the same moment of the machine's background load)."""
    return [replace(case, encrypt_type=t)
            for pair in _pairs(quick=quick) for t in encrypt_types for case in pair]


def _pairs(*, quick: bool) -> list[list[Case]]:
    """The cases without their EncryptType: [PUT case, GET case] pairs in run order."""
    if quick:
        raw = [(MIB, 16, 20.0), (64 * MIB, 2, 30.0)]
        small = [(1, 200, 10.0), (16, 400, 10.0)]
        single, multipart = SDK_SINGLE_QUICK, MULTIPART_QUICK
    else:
        raw = [(MIB, 64, 120.0), (64 * MIB, 8, 300.0)]
        small = [(1, 2000, 60.0), (16, 2000, 60.0)]
        single, multipart = SDK_SINGLE_FULL, MULTIPART_FULL
    pairs: list[list[Case]] = []
    for size, count, limit in raw:
        pairs += _put_get(_slug(size), size, count, 1, limit, _slug(size))
    size, count, limit = single
    pairs += _put_get(_slug(size), size, count, 1, limit, f"sdk-{_slug(size)}",
                      TransferConfig(threshold=size, concurrency=1))
    for clients, count, limit in small:
        pairs += _put_get(f"4kib-c{clients}", 4 * KIB, count, clients, limit, "4kib")
    # Last: the cases before it run as they always have, not after 4 GiB more was written.
    size, part_size, concurrency, limit = multipart
    name = f"multipart-{_slug(size)}"
    config = TransferConfig(threshold=part_size, part_size=part_size, concurrency=concurrency)
    pairs.append([Case(name, "put", size, 1, 1, limit, name, config),
                  Case(f"{name}-get", "get", size, 1, 1, limit, name, config)])
    return pairs


def disk_peak(cases: Iterable[Case]) -> int:
    """The most bytes the run keeps in its temporary directory at once: the objects stored so
    far (the bench deletes none) plus the files of the SDK case then running (an upload's
    source file; a download's files, one per object read), which are removed at its end."""
    stored = peak = 0
    for case in cases:
        if case.op == "put":
            stored += case.count * case.size
        files = 0 if case.sdk is None else case.size * (1 if case.op == "put" else case.count)
        peak = max(peak, stored + files)
    return peak


@dataclass
class Result:
    #: the case's full name, "put-1mib@e1"
    name: str
    #: the case without its EncryptType, "put-1mib"
    case: str
    #: the EncryptType of the coffer the case ran in
    encrypt_type: int
    label: str
    op: str
    size: int
    clients: int
    planned: int
    mode: str
    #: "raw" (bench/client.py) or "sdk" (datacoffer.client)
    client: str = "raw"
    ops: int = 0
    bytes: int = 0
    seconds: float = 0.0
    mib_s: float = 0.0
    ops_s: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    #: CPU cores busy on average during the case (1.0 = one core fully used).
    server_cpu: float | None = None
    client_cpu: float | None = None
    #: CPU seconds (user+system) used during the case, and per GiB of object data moved
    server_cpu_s: float | None = None
    client_cpu_s: float | None = None
    server_cpu_s_gib: float | None = None
    client_cpu_s_gib: float | None = None
    verified: str = ""
    stopped_by: str = ""
    error: str | None = None
    #: multipart rows only: the part size, and the CompleteMultipartUpload call's own latency
    part_size: int | None = None
    complete_ms: float | None = None
    #: SDK rows only: the client-side ceiling (the SDK's per-byte work for one transfer of this
    #: case timed alone: MiB/s, seconds, what was timed), the mean seconds per transfer before
    #: the first byte moved and after the last, and parts or ranges the SDK started again
    ceiling_mib_s: float | None = None
    ceiling_s: float | None = None
    ceiling_work: str = ""
    before_first_byte_s: float | None = None
    after_last_byte_s: float | None = None
    retries: int = 0
    #: shown in the Note column after any failure or stop
    note: str = ""
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def title(self) -> str:
        """The label with the EncryptType, for lines outside the tables: "PUT 1 MiB x1 @e1"."""
        return f"{self.label} {type_suffix(self.encrypt_type)}"

    @property
    def small(self) -> bool:
        """Measured in ops/s (4 KiB), not MiB/s."""
        return self.size <= SMALL

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        del data["latencies_ms"]
        return data


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


class _Claims:
    """Hands out operation numbers 0..count-1 to the workers, once each."""

    def __init__(self, count: int) -> None:
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.count = count

    def take(self) -> int | None:
        with self._lock:
            i = next(self._next)
        return i if i < self.count else None


class _Tally:
    """Per-case counters shared by the workers (list.append is atomic under the GIL)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ends: list[float] = []
        self.errors: list[BaseException] = []
        self.failed = threading.Event()
        #: time.monotonic() after which no new operation starts (set when the clients start)
        self.deadline = math.inf

    def fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.failed.set()

    def record(self, started: float) -> None:
        """One request done: its latency from `started`, and when it ended."""
        ended = time.perf_counter()
        self.latencies.append(ended - started)
        self.ends.append(ended)


@dataclass(frozen=True)
class _Cpu:
    """CPU seconds (user+system) used so far by the server process and by this process."""

    server: float | None
    client: float


def _mismatches(what: str, checks: list[tuple[str, object, object]]) -> None:
    """Raise BenchError naming every (name, got, expected) that differs."""
    wrong = [f"{name} {got!r}, expected {want!r}" for name, got, want in checks if got != want]
    if wrong:
        raise BenchError(f"{what}: " + "; ".join(wrong))


def _start_threads(target: Callable[[], None], name: str, count: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, name=f"{name}-{n}", daemon=True)
               for n in range(count)]
    for t in threads:
        t.start()
    return threads


#: An operation (given its number) and what to call when the worker that ran it ends.
Op = Callable[[int], None]
NewOp = Callable[[], tuple[Op, Callable[[], None]]]


class Runner:
    """Runs cases against one server, each in the coffer of its EncryptType (made by `setup`);
    remembers the keys written so GET cases can read them."""

    def __init__(self, server: BenchServer, progress: Progress, *, mode: Mode) -> None:
        assert server.account is not None and server.root is not None
        self.server = server
        self.progress = progress
        self.mode: Mode = mode
        self.signer = Signer(server.host_header, server.account)
        self.tag = secrets.token_hex(3)
        #: the coffer of each EncryptType, and the KMS key of the EncryptType 2 one (`setup`)
        self.coffers: dict[int, str] = {}
        self.customer_key: CustomerKey | None = None
        #: the keys each store's PUT case wrote (Case.objects), and the stores whose PUT case ran
        self.stored: dict[str, list[str]] = {}
        self.ran: set[str] = set()
        #: what the SDK's upload_file returned for each key it stored
        self.uploads: dict[str, TransferResult] = {}
        #: the SDK cases' files: sources and downloads, removed at the end of each case
        self.files = server.root / "files"
        self._expected: dict[int, Expected] = {}
        self.stop = threading.Event()

    def setup(self, encrypt_types: Iterable[int]) -> None:
        """One coffer per EncryptType, made with the SDK (PutCoffer) and checked (GetCoffer).
        EncryptType 2 first needs the account's role grant and a KMS key (docs/encryption.md):
        the bench makes both with the admin commands against its own server's data
        directory."""
        client = self._sdk_client()
        try:
            for encrypt_type in encrypt_types:
                self.coffers[encrypt_type] = self._make_coffer(client, encrypt_type)
        finally:
            client.close()

    def _make_coffer(self, client: MeteredClient, encrypt_type: int) -> str:
        assert self.server.account is not None
        name = f"bench{self.tag}e{encrypt_type}-{self.server.account.app_id}"
        key = None
        if encrypt_type == KMS_ENCRYPT_TYPE:
            self.customer_key = key = self.server.customer_key(REGION)
        try:
            client.create_coffer(name, [REGION], encrypt_type=encrypt_type,
                                 key_id=key.key_id if key else None,
                                 key_region=key.region if key else None)
            made = client.get_coffer(name, max_keys=1)
        except DataCofferError as exc:
            raise BenchError(f"PutCoffer {name} (EncryptType {encrypt_type}): {exc}") from exc
        _mismatches(f"GetCoffer {name}", [
            ("EncryptType", made.encrypt_type, encrypt_type),
            ("KeyId", made.key_id, key.key_id if key else ""),
            ("KeyRegion", made.key_region, key.region if key else "")])
        return name

    def _sdk_client(self) -> MeteredClient:
        assert self.server.account is not None
        return new_client(self.server.base_url, self.server.host_header,
                          self.server.account.secret_id, self.server.account.secret_key,
                          TIMEOUT.read or 300.0)

    def say(self, text: str) -> None:
        self.progress.console.print(f"[dim]{text}")

    def expected(self, size: int) -> Expected:
        """What the server must report for a raw-client object of `size` bytes, hashed once
        per size (with EncryptType 0: the caller sets its coffer's)."""
        if size not in self._expected:
            if size >= 64 * MIB:
                self.say(f"hashing the {size_label(size)} body once, to verify what the "
                         "server returns")
            self._expected[size] = expected(size)
        return self._expected[size]

    def _cpu(self) -> _Cpu:
        return _Cpu(self.server.cpu_seconds(), time.process_time())

    def _task(self, case: Case) -> TaskID:
        return self.progress.add_task(case.title, total=case.count * case.size, ops="0",
                                      planned=str(case.count))

    # -- one case ------------------------------------------------------------------------------

    def run(self, case: Case) -> Result:
        # Each case starts with nothing left for the kernel to write back, or the gigabytes
        # the previous case wrote are flushed during this one (measured: GET 1 GiB at e0/e1/e2
        # 381/268/282 MiB/s without, 294/303/293 with). Large PUTs still slow down with each
        # GiB written in a row on this VM's disk, whatever the EncryptType: docs/performance.md.
        os.sync()
        result = Result(case.name, case.base, case.encrypt_type, case.label, case.kind,
                        case.size, case.streams, case.count,
                        self.mode if case.sdk is None else "threads",
                        "raw" if case.sdk is None else "sdk")
        keys = self.stored.setdefault(case.objects, [])
        if case.op == "put":
            self.ran.add(case.objects)
        elif not keys:
            result.stopped_by = "skipped"
            if case.objects in self.ran:  # the PUT row says why
                result.note = "skipped: its PUT case stored no object"
            else:
                result.error = "no objects of this kind were stored (run its PUT case too)"
            return result
        if case.sdk is None:
            self._run_raw(case, result, keys)
        else:
            self._run_sdk(case, case.sdk, result, keys)
        return result

    def _run_raw(self, case: Case, result: Result, keys: list[str]) -> None:
        result.verified = ("ETag = MD5 of the body" if case.op == "put" else
                           "size, x-cdcs-checksum-sha256, x-cdcs-encrypt-type"
                           + (", SHA-256 of the body" if case.hash_body else ""))
        exp = replace(self.expected(case.size), encrypt_type=case.encrypt_type)
        task = self._task(case)
        done = itertools.count(1)

        def after_op() -> None:
            n = next(done)
            self.progress.update(task, advance=case.size if case.small else 0, ops=str(n))

        on_bytes = None if case.small else (lambda n: self.progress.advance(task, n))
        tag = secrets.token_hex(2)
        coffer = self.coffers[case.encrypt_type]

        def path(i: int) -> str:
            if case.op == "put":
                return f"/{coffer}/{case.name}/{tag}/{i:07d}"
            return f"/{coffer}/{keys[i % len(keys)]}"

        def on_put_done(i: int) -> None:
            keys.append(f"{case.name}/{tag}/{i:07d}")

        def new_op() -> tuple[Op, Callable[[], None]]:
            client = SyncClient(self.server.base_url, self.signer)

            def op(i: int) -> None:
                if case.op == "put":
                    client.put(path(i), exp, on_bytes)
                    on_put_done(i)
                else:
                    client.get(path(i), exp, hash_body=case.hash_body, on_bytes=on_bytes)
            return op, client.close

        tally = _Tally()
        before = self._cpu()
        try:
            if self.mode == "threads":
                start = self._run_threads(case, new_op, after_op, tally)
            else:
                start = _run_coroutine(self._run_async(case, exp, path, on_bytes, on_put_done,
                                                       after_op, tally))
        finally:
            self.progress.update(task, description=f"[dim]{case.title}")
        after = self._cpu()
        self._finish(result, case, start, tally)
        _set_rates(result, before, after)

    def _finish(self, result: Result, case: Case, start: float, tally: _Tally) -> None:
        """Operations, bytes, time, latencies and how the case ended (not the rates)."""
        result.ops = len(tally.latencies)
        result.bytes = result.ops * case.size
        result.seconds = (max(tally.ends) - start) if tally.ends else 0.0
        _set_latencies(result, tally.latencies)
        if tally.errors:
            result.error = f"{type(tally.errors[0]).__name__}: {tally.errors[0]}"
            result.stopped_by = "error"
        elif self.stop.is_set():
            result.stopped_by = "interrupted"
        elif result.ops >= case.count:
            result.stopped_by = "count"
        else:
            result.stopped_by = "time limit"

    # -- the SDK: upload_file / download_file of real files ------------------------------------

    def _run_sdk(self, case: Case, config: TransferConfig, result: Result,
                 keys: list[str]) -> None:
        """Upload one source file `case.count` times, or download the PUT case's objects into
        files, with the SDK; then time the SDK's own hashing of such a transfer alone (the
        client-side ceiling). The case's files are removed at the end."""
        result.part_size = case.part_size or None
        if case.op == "put":
            result.verified = ("SDK: ETag = MD5 of each part/the file, HEAD SHA-256 = the "
                               "file's; bench: size, parts, SHA-256 = the one computed when the "
                               "file was written, x-cdcs-encrypt-type of the HEAD")
        else:
            result.verified = ("SDK: SHA-256 of each part and of the whole; bench: size on "
                               "disk, parts, SHA-256 and ETag = the upload's, "
                               "x-cdcs-encrypt-type of the HEAD and GETs")
        self.files.mkdir(exist_ok=True)
        made: list[Path] = []  # removed at the end, whatever happens
        try:
            source = None
            if case.op == "put":
                self.say(f"writing the {size_label(case.size)} source file of {case.title} "
                         "(random bytes, fsynced) and hashing it, outside the timed part")
                made.append(self.files / f"{case.name}.bin")
                source = write_source(made[-1], case.size, case.part_size or None)
            client = self._sdk_client()
            try:
                meter = self._sdk_loop(case, config, result, keys, client, source, made)
            finally:
                client.close()
            first, last = meter.averages()
            result.before_first_byte_s, result.after_last_byte_s = first, last
            result.retries = meter.retries
            if case.multipart and case.op == "get":
                result.note = f"{case.parts} parts by partNumber, {case.streams} in flight"
            if meter.retries:
                result.note = "; ".join(x for x in (result.note, f"{meter.retries} parts or "
                                                    "ranges sent again") if x)
            existing = [p for p in made if p.exists()]
            if existing and result.error is None and not self.stop.is_set():
                work = sdk_work(case.op, case.size, config)
                result.ceiling_work = "; ".join(p.describe() for p in work)
                self.say(f"timing the SDK's own hashing for {case.title} alone: "
                         f"{result.ceiling_work}")
                result.ceiling_mib_s, result.ceiling_s = ceiling(existing[-1], case.size, work)
        finally:
            for p in made:
                p.unlink(missing_ok=True)

    def _sdk_loop(self, case: Case, config: TransferConfig, result: Result, keys: list[str],
                  client: MeteredClient, source: Source | None, made: list[Path]) -> Meter:
        """The timed part of an SDK case: fills `result` but for the SDK-only fields."""
        task = self._task(case)
        meter = Meter(lambda n: self.progress.advance(task, n), self.stop)
        tally = _Tally()
        done = itertools.count(1)
        tag = secrets.token_hex(2)
        cut_short = [0]  # bytes of a download that the time limit ended
        coffer = self.coffers[case.encrypt_type]
        #: what every HEAD and GET of the case must be answered with: the coffer's EncryptType
        encrypt_types = {str(case.encrypt_type)}

        def upload(i: int) -> None:
            assert source is not None
            key = f"{case.name}/{tag}/{i:07d}"
            try:
                got = client.upload_file(coffer, key, source.path, config=config,
                                         progress=meter)
            except Exception:
                if case.multipart and not self.stop.is_set():
                    _abort_uploads(client, coffer, key)
                raise
            meter.end()
            _mismatches(f"upload_file {key}", [
                ("size", got.size, case.size), ("parts", got.parts, case.parts),
                ("resumed parts", got.resumed_parts, 0),
                ("SHA-256", got.sha256, source.sha256),
                ("x-cdcs-encrypt-type", client.encrypt_types(), encrypt_types)])
            self.uploads[key] = got
            keys.append(key)

        def download(i: int) -> None:
            key = keys[i % len(keys)]
            made.append(self.files / f"{case.name}-{i:07d}.bin")
            try:
                got = client.download_file(coffer, key, made[-1], config=config,
                                           progress=meter)
            except Stop:
                cut_short[0] += meter.moved
                raise
            meter.end()
            up = self.uploads[key]
            _mismatches(f"download_file {key}", [
                ("size", got.size, up.size), ("size on disk", made[-1].stat().st_size, up.size),
                ("parts", got.parts, case.parts), ("SHA-256", got.sha256, up.sha256),
                ("ETag", got.etag, up.etag),
                ("x-cdcs-encrypt-type", client.encrypt_types(), encrypt_types)])

        def op(i: int) -> None:
            meter.begin(tally.deadline)
            try:
                (upload if case.op == "put" else download)(i)
            except Stop:
                tally.ends.append(time.perf_counter())  # the case's time runs to the stop
                raise

        def after_op() -> None:
            self.progress.update(task, ops=str(next(done)))

        before = self._cpu()
        try:
            start = self._run_threads(case, lambda: (op, _nothing), after_op, tally)
        finally:
            self.progress.update(task, description=f"[dim]{case.title}")
        after = self._cpu()
        self._finish(result, case, start, tally)
        result.bytes += cut_short[0]
        if case.multipart and case.op == "put":
            _count_parts(case, result, client)
        _set_rates(result, before, after)
        return meter

    # -- threads: one httpx.Client per thread --------------------------------------------------

    def _run_threads(self, case: Case, new_op: NewOp, after_op: Callable[[], None],
                     tally: _Tally) -> float:
        """Run the case on `case.clients` threads, each running the operations it claims with
        its own `new_op()`; return the perf_counter() at which they were let go."""
        claims = _Claims(case.count)
        ready = threading.Barrier(case.clients + 1)

        def worker() -> None:
            op, close = new_op()
            try:
                ready.wait(READY_TIMEOUT)
                while not (self.stop.is_set() or tally.failed.is_set()):
                    if time.monotonic() >= tally.deadline:
                        return
                    i = claims.take()
                    if i is None:
                        return
                    t0 = time.perf_counter()
                    op(i)
                    tally.record(t0)
                    after_op()
            except (threading.BrokenBarrierError, Stop):
                pass
            except Exception as exc:
                tally.fail(exc)
            finally:
                close()

        threads = _start_threads(worker, "bench", case.clients)
        tally.deadline = time.monotonic() + case.time_limit
        start = time.perf_counter()
        try:
            ready.wait(READY_TIMEOUT)
            for t in threads:
                t.join()
        except BaseException:
            # Ctrl-C: let the workers see `stop`; what is in flight ends with the server (an SDK
            # transfer at its next MiB, from its progress callback).
            self.stop.set()
            ready.abort()
            for t in threads:
                t.join(2.0)
            raise
        return start

    # -- asyncio: one httpx.AsyncClient per task -----------------------------------------------

    async def _run_async(self, case: Case, exp: Expected, path: Callable[[int], str],
                         on_bytes: Callable[[int], None] | None,
                         on_put_done: Callable[[int], None], after_op: Callable[[], None],
                         tally: _Tally) -> float:
        claims = _Claims(case.count)
        clients = [AsyncClient(self.server.base_url, self.signer) for _ in range(case.clients)]
        tally.deadline = time.monotonic() + case.time_limit

        async def worker(client: AsyncClient) -> None:
            try:
                while not (self.stop.is_set() or tally.failed.is_set()):
                    if time.monotonic() >= tally.deadline:
                        return
                    i = claims.take()
                    if i is None:
                        return
                    t0 = time.perf_counter()
                    op: Awaitable[None]
                    if case.op == "put":
                        op = client.put(path(i), exp, on_bytes)
                    else:
                        op = client.get(path(i), exp, hash_body=case.hash_body,
                                        on_bytes=on_bytes)
                    await op
                    if case.op == "put":
                        on_put_done(i)
                    tally.record(t0)
                    after_op()
            except Exception as exc:
                tally.fail(exc)

        start = time.perf_counter()
        try:
            await asyncio.gather(*(worker(c) for c in clients))
        finally:
            for c in clients:
                with contextlib.suppress(Exception):
                    await c.aclose()
        return start


def _nothing() -> None:
    pass


def _count_parts(case: Case, result: Result, client: MeteredClient) -> None:
    """The multipart upload's row counts parts: Done, bytes, ops/s and p50/p99 are per
    UploadPart answered (as the SDK's client timed them); the Note has the
    CompleteMultipartUpload call's own latency."""
    parts = client.parts_uploaded()
    result.planned = case.parts
    result.ops = len(parts)
    result.bytes = sum(t.length for t in parts)
    _set_latencies(result, [t.seconds for t in parts])
    result.complete_ms = client.complete_ms()
    result.note = f"{case.parts} x {size_label(case.part_size)} parts, {case.streams} in flight"
    if result.complete_ms is not None:
        result.note += f", complete {result.complete_ms:,.1f} ms"


def _abort_uploads(client: MeteredClient, coffer: str, key: str) -> None:
    """Abort what an unfinished multipart upload of `key` left (the SDK keeps it for resuming);
    best effort, to free the space of its parts."""
    with contextlib.suppress(Exception):
        for upload in list(client.iter_uploads(coffer, prefix=key)):
            if upload.key == key:
                client.abort_multipart_upload(coffer, key, upload.upload_id)


def _set_rates(result: Result, before: _Cpu, after: _Cpu) -> None:
    """MiB/s, ops/s and the CPU columns, from bytes, ops and seconds already set."""
    result.client_cpu_s = after.client - before.client
    if before.server is not None and after.server is not None:
        result.server_cpu_s = after.server - before.server
    if result.seconds > 0:
        result.mib_s = result.bytes / MIB / result.seconds
        result.ops_s = result.ops / result.seconds
        result.client_cpu = result.client_cpu_s / result.seconds
        if result.server_cpu_s is not None:
            result.server_cpu = result.server_cpu_s / result.seconds
    if result.bytes > 0:
        gib = result.bytes / GIB
        result.client_cpu_s_gib = result.client_cpu_s / gib
        if result.server_cpu_s is not None:
            result.server_cpu_s_gib = result.server_cpu_s / gib


def _set_latencies(result: Result, seconds: list[float]) -> None:
    if seconds:
        lat = sorted(x * 1000 for x in seconds)
        result.p50_ms = percentile(lat, 0.50)
        result.p90_ms = percentile(lat, 0.90)
        result.p99_ms = percentile(lat, 0.99)
        result.max_ms = lat[-1]
        result.latencies_ms = lat


def _run_coroutine(coro: Coroutine[Any, Any, float]) -> float:
    """asyncio.run on uvloop when it is installed (it is: the server depends on it)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
