"""The benchmark cases and the loops that run them.

Every loop is bounded twice: by a count of operations and by a time limit (checked before each
new operation; an operation in flight is bounded by the client's timeouts). Latencies are taken
per operation; the wall time of a case runs from the moment all its clients are ready to the
end of its last operation.

The multipart case is run differently (`Runner._run_multipart`): one object, initiated,
uploaded in parts by several uploader threads, completed, then read back by one client; it
gives two result rows, the upload (initiate to complete) and the download.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rich.progress import Progress

from bench.client import (
    AsyncClient,
    BenchError,
    Expected,
    ExpectedParts,
    Signer,
    SyncClient,
    TimeLimitReached,
    expected,
    expected_parts,
    new_part_buffer,
)
from bench.server import BenchServer

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
#: Objects up to this size are measured in operations per second, larger ones in MiB/s.
SMALL = 64 * KIB
#: Downloads up to this size are hashed by the client too (SHA-256), larger ones only counted
#: (and checked against the server's x-cdcs-checksum-sha256, which the server itself verifies
#: while reading): hashing 1 MiB on the client would sit on the single-client critical path.
HASH_LIMIT = SMALL
READY_TIMEOUT = 60.0

Mode = Literal["threads", "async"]

#: The multipart case: (object size, part size, uploader threads, time limit of each of its
#: two phases, upload and download, in seconds).
MULTIPART_FULL = (4 * GIB, 64 * MIB, 4, 600.0)
MULTIPART_QUICK = (256 * MIB, 64 * MIB, 4, 30.0)


@dataclass(frozen=True)
class Case:
    name: str
    op: Literal["put", "get", "multipart"]
    #: the object size (for multipart: the whole object, `count` parts of `part_size`)
    size: int
    #: operations to run (for multipart: parts to upload)
    count: int
    clients: int
    time_limit: float
    part_size: int = 0

    @property
    def small(self) -> bool:
        return self.size <= SMALL

    @property
    def hash_body(self) -> bool:
        return self.op == "get" and self.size <= HASH_LIMIT

    @property
    def label(self) -> str:
        return f"{self.op.upper()} {size_label(self.size)} x{self.clients}"

    @property
    def get_label(self) -> str:
        """The multipart case's second row: reading the object back with one client."""
        return f"GET {size_label(self.size)} x1 (multipart)"


def size_label(size: int) -> str:
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} B"


def _slug(size: int) -> str:
    return size_label(size).replace(" ", "").lower()


def plan(*, quick: bool) -> list[Case]:
    """The cases in run order: each GET case reads the objects its PUT case just wrote."""
    if quick:
        big = [(MIB, 16, 20.0), (64 * MIB, 2, 30.0)]
        small = [(1, 200, 10.0), (16, 400, 10.0)]
    else:
        big = [(MIB, 64, 120.0), (64 * MIB, 8, 300.0), (GIB, 2, 600.0)]
        small = [(1, 2000, 60.0), (16, 2000, 60.0)]
    cases: list[Case] = []
    for size, count, limit in big:
        for op in ("put", "get"):
            cases.append(Case(f"{op}-{_slug(size)}", op, size, count, 1, limit))
    for clients, count, limit in small:
        for op in ("put", "get"):
            cases.append(Case(f"{op}-4kib-c{clients}", op, 4 * KIB, count, clients, limit))
    # Last: the cases before it run as they always have, not after 4 GiB more was written.
    size, part_size, uploaders, limit = MULTIPART_QUICK if quick else MULTIPART_FULL
    cases.append(Case(f"multipart-{_slug(size)}", "multipart", size, size // part_size,
                      uploaders, limit, part_size))
    return cases


@dataclass
class Result:
    name: str
    label: str
    op: str
    size: int
    clients: int
    planned: int
    mode: str
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
    verified: str = ""
    stopped_by: str = ""
    error: str | None = None
    #: multipart rows only: the part size, and the CompleteMultipartUpload call's own latency
    part_size: int | None = None
    complete_ms: float | None = None
    #: shown in the Note column after any failure or stop
    note: str = ""
    latencies_ms: list[float] = field(default_factory=list, repr=False)

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

    def fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.failed.set()

    def record(self, started: float) -> None:
        """One request done: its latency from `started`, and when it ended."""
        ended = time.perf_counter()
        self.latencies.append(ended - started)
        self.ends.append(ended)


def _start_threads(target: Callable[[], None], name: str, count: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, name=f"{name}-{n}", daemon=True)
               for n in range(count)]
    for t in threads:
        t.start()
    return threads


class Runner:
    """Runs cases against one server; remembers the keys written so GET cases can read them."""

    def __init__(self, server: BenchServer, progress: Progress, *, mode: Mode) -> None:
        assert server.account is not None
        self.server = server
        self.progress = progress
        self.mode: Mode = mode
        self.signer = Signer(server.host_header, server.account)
        self.coffer = f"bench{secrets.token_hex(3)}-{server.account.app_id}"
        self.stored: dict[int, list[str]] = {}
        self._expected: dict[int, Expected] = {}
        self.stop = threading.Event()

    def setup(self) -> None:
        client = SyncClient(self.server.base_url, self.signer)
        try:
            body = json.dumps({"Locations": {"Location": ["ap-tianjin"]}}).encode()
            r = client.put_json(f"/{self.coffer}", body)
            if r.status_code != 200:
                raise BenchError(f"PutCoffer: HTTP {r.status_code}: {r.text[:300]}")
        finally:
            client.close()

    def expected(self, size: int) -> Expected:
        if size not in self._expected:
            self._expected[size] = expected(size)
        return self._expected[size]

    # -- one case ------------------------------------------------------------------------------

    def run(self, case: Case) -> list[Result]:
        """Run one case: one result row, two for the multipart case (upload, download)."""
        if case.op == "multipart":
            return self._run_multipart(case)
        return [self._run_simple(case)]

    def _run_simple(self, case: Case) -> Result:
        result = Result(case.name, case.label, case.op, case.size, case.clients, case.count,
                        self.mode)
        result.verified = ("ETag = MD5 of the body" if case.op == "put" else
                           "size, x-cdcs-checksum-sha256" + (", SHA-256 of the body"
                                                             if case.hash_body else ""))
        keys = self.stored.setdefault(case.size, [])
        if case.op == "get" and not keys:
            result.error = "no objects of this size were stored (its PUT case failed)"
            result.stopped_by = "skipped"
            return result
        exp = self.expected(case.size)
        task = self.progress.add_task(case.label, total=case.count * case.size, ops="0",
                                      planned=str(case.count))
        done = itertools.count(1)

        def after_op() -> None:
            n = next(done)
            self.progress.update(task, advance=case.size if case.small else 0, ops=str(n))

        on_bytes = None if case.small else (lambda n: self.progress.advance(task, n))
        tag = secrets.token_hex(2)

        def path(i: int) -> str:
            if case.op == "put":
                return f"/{self.coffer}/{case.name}/{tag}/{i:07d}"
            return f"/{self.coffer}/{keys[i % len(keys)]}"

        def on_put_done(i: int) -> None:
            keys.append(f"{case.name}/{tag}/{i:07d}")

        tally = _Tally()
        cpu0 = self.server.cpu_seconds()
        proc0 = time.process_time()
        try:
            if self.mode == "threads":
                start = self._run_threads(case, exp, path, on_bytes, on_put_done, after_op,
                                          tally)
            else:
                start = _run_coroutine(self._run_async(case, exp, path, on_bytes, on_put_done,
                                                       after_op, tally))
        finally:
            self.progress.update(task, description=f"[dim]{case.label}")
        cpu1 = self.server.cpu_seconds()
        proc1 = time.process_time()
        self._finish(result, case, start, tally)
        if result.seconds > 0:
            if cpu0 is not None and cpu1 is not None:
                result.server_cpu = (cpu1 - cpu0) / result.seconds
            result.client_cpu = (proc1 - proc0) / result.seconds
        return result

    def _finish(self, result: Result, case: Case, start: float, tally: _Tally) -> None:
        result.ops = len(tally.latencies)
        result.bytes = result.ops * case.size
        result.seconds = (max(tally.ends) - start) if tally.ends else 0.0
        if result.seconds > 0:
            result.mib_s = result.bytes / MIB / result.seconds
            result.ops_s = result.ops / result.seconds
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

    # -- multipart: initiate, parts from N uploader threads, complete, GET ---------------------

    def _run_multipart(self, case: Case) -> list[Result]:
        """Upload one object in `case.count` parts with `case.clients` uploader threads (one
        httpx.Client each, whatever --mode says), complete it, then read it back with one
        client. Each phase is bounded by `case.time_limit`."""
        up = Result(case.name, case.label, case.op, case.size, case.clients, case.count,
                    "threads", part_size=case.part_size)
        up.verified = ("ETag of each part = its MD5; object ETag = MD5 of the parts' MD5s "
                       "+ '-N'")
        down = Result(f"{case.name}-get", case.get_label, "get", case.size, 1, 1, "threads",
                      part_size=case.part_size)
        down.verified = ("size, ETag, composite x-cdcs-checksum-sha256 (from the SHA-256 of "
                         "each part sent)")
        exp = expected_parts(case.part_size, case.count)
        path = f"/{self.coffer}/{case.name}/{secrets.token_hex(2)}/object"
        if self._upload_multipart(case, exp, path, up):
            self._download_multipart(case, exp, path, down)
        else:
            down.stopped_by = "skipped"
            down.note = ("skipped: the upload failed" if up.error else
                         f"skipped: the upload was not completed ({up.stopped_by})")
        return [up, down]

    def _upload_multipart(self, case: Case, exp: ExpectedParts, path: str,
                          result: Result) -> bool:
        """Fill `result` with the upload's numbers; True when the object was completed."""
        task = self.progress.add_task(case.label, total=case.size, ops="0",
                                      planned=str(case.count))
        claims = _Claims(case.count)
        ready = threading.Barrier(case.clients + 1)
        tally = _Tally()
        etags: list[str] = [""] * case.count
        upload_id = [""]
        deadline = [0.0]
        done = itertools.count(1)

        def on_bytes(n: int) -> None:
            self.progress.advance(task, n)

        def uploader() -> None:
            client = SyncClient(self.server.base_url, self.signer)
            buffer = new_part_buffer()  # this uploader's one reused buffer
            try:
                ready.wait(READY_TIMEOUT)
                while not (self.stop.is_set() or tally.failed.is_set()):
                    if time.monotonic() >= deadline[0]:
                        return
                    i = claims.take()
                    if i is None:
                        return
                    t0 = time.perf_counter()
                    etags[i] = client.upload_part(path, upload_id[0], i + 1, exp, buffer,
                                                  on_bytes)
                    tally.record(t0)
                    self.progress.update(task, ops=str(next(done)))
            except threading.BrokenBarrierError:
                pass
            except Exception as exc:
                tally.fail(exc)
            finally:
                client.close()

        threads = _start_threads(uploader, "bench-part", case.clients)
        main = SyncClient(self.server.base_url, self.signer)
        completed = False
        cpu0 = self.server.cpu_seconds()
        proc0 = time.process_time()
        try:
            deadline[0] = time.monotonic() + case.time_limit
            start = end = time.perf_counter()
            try:
                upload_id[0] = main.initiate(path)
                ready.wait(READY_TIMEOUT)
            except Exception as exc:  # no upload (or no uploaders): the threads are let go
                tally.fail(exc if not isinstance(exc, threading.BrokenBarrierError) else
                           BenchError(f"the uploaders were not ready in {READY_TIMEOUT:.0f} s"))
                ready.abort()
            for t in threads:
                t.join()
            if tally.errors or self.stop.is_set() or len(tally.latencies) < case.count:
                end = max(tally.ends, default=start)
            else:
                t0 = time.perf_counter()
                try:
                    main.complete(path, upload_id[0], etags, exp)
                    end = time.perf_counter()
                    result.complete_ms = (end - t0) * 1000
                    completed = True
                except Exception as exc:
                    end = time.perf_counter()
                    tally.fail(exc)
            if not completed and upload_id[0]:
                with contextlib.suppress(Exception):  # free the parts' space; best effort
                    main.abort(path, upload_id[0])
        except BaseException:
            # Ctrl-C: let the uploaders see `stop`; what is in flight ends with the server.
            self.stop.set()
            ready.abort()
            for t in threads:
                t.join(2.0)
            raise
        finally:
            main.close()
            self.progress.update(task, description=f"[dim]{case.label}")
        cpu1 = self.server.cpu_seconds()
        proc1 = time.process_time()

        result.ops = len(tally.latencies)
        result.bytes = result.ops * case.part_size
        result.seconds = end - start
        _set_latencies(result, tally.latencies)
        if tally.errors:
            result.error = f"{type(tally.errors[0]).__name__}: {tally.errors[0]}"
            result.stopped_by = "error"
        elif self.stop.is_set():
            result.stopped_by = "interrupted"
        elif completed:
            result.stopped_by = "count"
        else:
            result.stopped_by = "time limit"
        _set_rates(result, cpu0, cpu1, proc1 - proc0)
        result.note = f"{case.count} x {size_label(case.part_size)} parts"
        if result.complete_ms is not None:
            result.note += f", complete {result.complete_ms:,.1f} ms"
        return completed

    def _download_multipart(self, case: Case, exp: ExpectedParts, path: str,
                            result: Result) -> None:
        task = self.progress.add_task(result.label, total=case.size, ops="0", planned="1")
        client = SyncClient(self.server.base_url, self.signer)
        cpu0 = self.server.cpu_seconds()
        proc0 = time.process_time()
        deadline = time.monotonic() + case.time_limit
        start = time.perf_counter()
        try:
            result.bytes = client.get_multipart(
                path, exp, deadline=deadline, on_bytes=lambda n: self.progress.advance(task, n))
            end = time.perf_counter()
            result.ops = 1
            result.stopped_by = "count"
            self.progress.update(task, ops="1")
            _set_latencies(result, [end - start])
        except TimeLimitReached as stop:
            end = time.perf_counter()
            result.bytes = stop.received
            result.stopped_by = "time limit"
        except Exception as exc:
            end = time.perf_counter()
            result.error = f"{type(exc).__name__}: {exc}"
            result.stopped_by = "error"
        finally:
            client.close()
            self.progress.update(task, description=f"[dim]{result.label}")
        cpu1 = self.server.cpu_seconds()
        proc1 = time.process_time()
        result.seconds = end - start
        _set_rates(result, cpu0, cpu1, proc1 - proc0)

    # -- threads: one httpx.Client per thread --------------------------------------------------

    def _run_threads(self, case: Case, exp: Expected, path: Callable[[int], str],
                     on_bytes: Callable[[int], None] | None,
                     on_put_done: Callable[[int], None], after_op: Callable[[], None],
                     tally: _Tally) -> float:
        """Run the case; return the perf_counter() at which the clients were let go."""
        claims = _Claims(case.count)
        ready = threading.Barrier(case.clients + 1)
        deadline = [0.0]

        def worker() -> None:
            client = SyncClient(self.server.base_url, self.signer)
            try:
                ready.wait(READY_TIMEOUT)
                while not (self.stop.is_set() or tally.failed.is_set()):
                    if time.monotonic() >= deadline[0]:
                        return
                    i = claims.take()
                    if i is None:
                        return
                    t0 = time.perf_counter()
                    if case.op == "put":
                        client.put(path(i), exp, on_bytes)
                        on_put_done(i)
                    else:
                        client.get(path(i), exp, hash_body=case.hash_body, on_bytes=on_bytes)
                    tally.record(t0)
                    after_op()
            except threading.BrokenBarrierError:
                pass
            except Exception as exc:
                tally.fail(exc)
            finally:
                client.close()

        threads = _start_threads(worker, "bench", case.clients)
        deadline[0] = time.monotonic() + case.time_limit
        start = time.perf_counter()
        try:
            ready.wait(READY_TIMEOUT)
            for t in threads:
                t.join()
        except BaseException:
            # Ctrl-C: let the workers see `stop`; what is in flight ends with the server.
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
        deadline = time.monotonic() + case.time_limit

        async def worker(client: AsyncClient) -> None:
            try:
                while not (self.stop.is_set() or tally.failed.is_set()):
                    if time.monotonic() >= deadline:
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


def _set_rates(result: Result, cpu0: float | None, cpu1: float | None,
               client_cpu: float) -> None:
    """MiB/s, ops/s and the CPU columns, from bytes, ops and seconds already set."""
    if result.seconds > 0:
        result.mib_s = result.bytes / MIB / result.seconds
        result.ops_s = result.ops / result.seconds
        if cpu0 is not None and cpu1 is not None:
            result.server_cpu = (cpu1 - cpu0) / result.seconds
        result.client_cpu = client_cpu / result.seconds


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
