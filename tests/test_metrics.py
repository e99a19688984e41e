"""The Prometheus `/metrics` endpoint and what `admin status` shows of regions, replication,
scrub findings and the audit chain (service.md "Regions and replication", "Audit log",
"Scrub": lag and findings "in the metrics and the status command"; http/metrics.py,
http/app.py, cli/admin.py `status`).

Covered, against this module's own server processes (an `admin run` pass works on every
coffer of its server, so never the shared one):

- a scrape from loopback, unsigned: 200, the exact content type, Prometheus text that
  prometheus_client parses, the ten families and no `*_created` series; the request counters
  by operation and code, the latency histogram and the body byte counters rising by exactly
  what a known set of requests did (compared between two scrapes: a scrape counts itself once
  its answer is sent), including `Unrouted` and `ClientDisconnected`;
- the store gauges: replication pending/failing/lag while copies are owed and after `admin
  run replication`; integrity findings after a damaged copy is scrubbed and repaired; the
  audit entries as `admin status` and `admin audit verify` count them;
- access: a server that allows only 10.0.0.0/8 unsigned, and signed scrapes only from the
  UINs in `metrics_uins` (given through DATACOFFER_METRICS_UINS): AuthFailed, PolicyCheckFailed,
  a trusted proxy's X-Forwarded-For first hop, an unsigned scrape forwarded by an untrusted
  proxy refused; other
  methods on /metrics are never a scrape;
- the `metrics_allow` / `metrics_uins` settings: defaults, TOML lists, comma-separated
  environment lists, and refusals (also by `datacoffer serve`);
- `admin status`: its keys and types, per-region Owed and Objects, Pending/LagSeconds/Oldest
  while copies are owed and after replication, and Audit.Entries rising by exactly one per
  request that reaches a coffer.

The main server runs `serve --no-background` (`quiet`), so the replication lag stays where a
test leaves it; every test that queues copies empties the queue again before it ends.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from datacoffer import signing
from datacoffer.config import ConfigError, load
from datacoffer.core.clock import iso8601
from tests.serverproc import BIN, ServerProcess, SignedClient, free_port
from tests.test_api_coffers import ISO_MS, assert_common, assert_error
from tests.test_lifecycle_sweep import query
from tests.test_replication import flip_byte, unwritable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TIANJIN, SHANGHAI, GUANGZHOU = "ap-tianjin", "ap-shanghai", "ap-guangzhou"
ALL = (TIANJIN, SHANGHAI, GUANGZHOU)
APP_ID, UIN = "1250000000", "100000000001"
#: the account whose signed scrapes the guarded server accepts, and one whose it refuses
SCRAPER_APP_ID, SCRAPER_UIN = "1250000011", "100000000011"
OTHER_APP_ID, OTHER_UIN = "1250000012", "100000000012"
#: the latency buckets of datacoffer_request_duration_seconds (http/metrics.py), as `le`
BUCKETS = ("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0",
           "2.5", "5.0", "10.0", "30.0", "60.0", "300.0", "+Inf")
FAMILIES = {
    "datacoffer_requests": "counter",
    "datacoffer_request_duration_seconds": "histogram",
    "datacoffer_received_bytes": "counter",
    "datacoffer_sent_bytes": "counter",
    "datacoffer_replication_pending": "gauge",
    "datacoffer_replication_failing": "gauge",
    "datacoffer_replication_lag_seconds": "gauge",
    "datacoffer_integrity_findings": "gauge",
    "datacoffer_integrity_unrepaired": "gauge",
    "datacoffer_audit_entries": "gauge",
}
REQUESTS = "datacoffer_requests_total"
RECEIVED = "datacoffer_received_bytes_total"
SENT = "datacoffer_sent_bytes_total"
DURATION = "datacoffer_request_duration_seconds"
STATUS_KEYS = ["Version", "DataDir", "Metadata", "SchemaVersion", "Regions", "Counts",
               "Replication", "Audit", "Integrity"]
HEX64 = re.compile(r"[0-9a-f]{64}")
_names = itertools.count(1)


def now_ms() -> int:
    return int(time.time() * 1000)


# -- scrapes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """One parsed `/metrics` answer."""

    response: httpx.Response
    #: family name -> type
    types: dict[str, str]
    #: sample name -> {label values in sorted label-name order: value}
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]]

    @classmethod
    def of(cls, r: httpx.Response) -> Scrape:
        assert r.status_code == 200, (r.status_code, r.headers, r.text)
        assert r.headers["content-type"] == CONTENT_TYPE
        assert_common(r)
        types: dict[str, str] = {}
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(r.text):
            types[family.name] = family.type
            for s in family.samples:
                key = tuple(sorted(s.labels.items()))
                series = samples.setdefault(s.name, {})
                assert key not in series, (s.name, key)
                series[key] = s.value
        return cls(r, types, samples)

    def series(self, sample: str, *labels: str) -> dict[tuple[str, ...], float]:
        """The sample's values by the values of `labels` (exactly the labels it has)."""
        out: dict[tuple[str, ...], float] = {}
        for key, value in self.samples.get(sample, {}).items():
            assert [n for n, _ in key] == sorted(labels), (sample, key)
            values = dict(key)
            out[tuple(values[n] for n in labels)] = value
        return out

    def gauge(self, name: str) -> float:
        return self.samples[name][()]


def scrape_response(base_url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(base_url + "/metrics", headers=headers, timeout=30)


def scrape(base_url: str) -> Scrape:
    """An unsigned scrape, answered 200."""
    return Scrape.of(scrape_response(base_url))


def delta(before: Scrape, after: Scrape, sample: str,
          *labels: str) -> dict[tuple[str, ...], float]:
    """How much each series of the sample rose between two scrapes (those that did)."""
    old, new = before.series(sample, *labels), after.series(sample, *labels)
    assert set(old) <= set(new), (sample, set(old) - set(new))
    return {k: v - old.get(k, 0.0) for k, v in new.items() if v != old.get(k, 0.0)}


def wait_until(check: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.05)


# -- servers -----------------------------------------------------------------------------------


def start(base: Path, settings: str, *, env: dict[str, str] | None = None) -> ServerProcess:
    """A `serve --no-background` server on `base`/data with a TOML configuration."""
    config = base / "datacoffer.toml"
    config.write_text(f"max_coffers = 1000\nscrub_rate = 0\n{settings}")
    srv = ServerProcess(base / "data", config=config, env=env, background=False)
    srv.start()
    return srv


def account(srv: ServerProcess, app_id: str, uin: str) -> SignedClient:
    return SignedClient(srv.base_url, *srv.create_account(app_id, uin))


@dataclass
class World:
    srv: ServerProcess
    raw: SignedClient

    @property
    def url(self) -> str:
        return self.srv.base_url

    @property
    def db(self) -> Path:
        return self.srv.data_dir / "metadata.db"

    def coffer(self, *regions: str) -> str:
        name = f"mx{next(_names)}-{APP_ID}"
        self.raw.make_coffer(name, *regions)
        return name

    def put(self, coffer: str, key: str, data: bytes) -> httpx.Response:
        r = self.raw.put(f"/{coffer}/{key}", content=data)
        assert (r.status_code, r.content) == (200, b""), r.text
        return r

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.srv.admin("status")
        assert list(doc) == STATUS_KEYS
        return doc

    def run(self, worker: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.srv.admin("run", worker)
        return doc

    def blob_ids(self, coffer: str, key: str) -> list[str]:
        rows = query(self.db, "SELECT o.blob_id FROM objects o JOIN coffers c "
                              "ON c.id = o.coffer_id WHERE c.name = ? AND o.key = ?", coffer, key)
        assert len(rows) == 1 and rows[0][0], rows
        return [rows[0][0]]

    def blob_file(self, region: str, blob_id: str) -> Path:
        return self.srv.data_dir / "regions" / region / "blobs" / blob_id[:2] / blob_id


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Default metrics access (loopback unsigned); no background worker of its own."""
    srv = start(tmp_path_factory.mktemp("metrics-quiet"), "")
    world = World(srv, account(srv, APP_ID, UIN))
    yield world
    world.raw.close()
    srv.stop()


@dataclass
class Guarded:
    """A server whose metrics only 10.0.0.0/8 (behind the trusted proxy 127.0.0.1) reads
    unsigned, and only SCRAPER_UIN signed."""

    srv: ServerProcess
    scraper: SignedClient
    other: SignedClient
    sub: SignedClient


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    srv = start(tmp_path_factory.mktemp("metrics-guarded"),
                'metrics_allow = ["10.0.0.0/8"]\ntrusted_proxies = ["127.0.0.1"]\n',
                env={"DATACOFFER_METRICS_UINS": f" 100000000099, ,{SCRAPER_UIN} "})
    scraper = account(srv, SCRAPER_APP_ID, SCRAPER_UIN)
    other = account(srv, OTHER_APP_ID, OTHER_UIN)
    sub_uin = str(900000000000 + secrets.randbelow(99999999999))
    doc = srv.admin("subaccount", "create", "--parent-uin", SCRAPER_UIN, "--uin", sub_uin)
    sub = SignedClient(srv.base_url, doc["SecretId"], doc["SecretKey"])
    yield Guarded(srv, scraper, other, sub)
    for c in (scraper, other, sub):
        c.close()
    srv.stop()


# -- 1. the scrape, counters, histogram, bytes -------------------------------------------------


def test_loopback_scrape_is_unsigned_prometheus_text(quiet: World) -> None:
    s = scrape(quiet.url)
    assert s.types == FAMILIES
    assert not [n for n in s.samples if n.endswith("_created")]
    assert s.response.text.endswith("\n")
    for name, kind in FAMILIES.items():
        assert f"# TYPE {name}{'_total' if kind == 'counter' else ''} {kind}\n" in s.response.text
    for gauge in [n for n, kind in FAMILIES.items() if kind == "gauge"]:
        assert s.gauge(gauge) >= 0
    # the server's start probe (an unsigned GET /) was counted before any test request
    assert s.series(REQUESTS, "operation", "code")[("GetService", "AuthFailed")] >= 1
    # a scrape forwarded by a proxy nobody listed in trusted_proxies (a TLS front on the
    # loopback, say) could come from anywhere: unsigned, it is refused, whatever the header
    for header in ("X-Forwarded-For", "Forwarded"):
        forwarded = scrape_response(quiet.url, {header: "127.0.0.1"})
        assert (forwarded.status_code, forwarded.headers["x-cdcs-error-code"]) == (
            401, "AuthFailed")


def assert_histogram_matches(s: Scrape) -> None:
    """For every (operation, code): cumulative buckets at the fixed bounds, +Inf = _count =
    the request counter; a sum that is non-negative."""
    counts = s.series(REQUESTS, "operation", "code")
    buckets = s.series(DURATION + "_bucket", "operation", "code", "le")
    assert s.series(DURATION + "_count", "operation", "code") == counts
    assert set(s.series(DURATION + "_sum", "operation", "code")) == set(counts)
    for labels, count in counts.items():
        row = [buckets[(*labels, le)] for le in BUCKETS]
        assert len([k for k in buckets if k[:2] == labels]) == len(BUCKETS), labels
        assert row == sorted(row), (labels, row)
        assert row[-1] == count, (labels, row)
        assert s.series(DURATION + "_sum", "operation", "code")[labels] >= 0


def test_counts_bytes_and_latencies_of_known_requests(quiet: World) -> None:
    coffer = quiet.coffer(TIANJIN)
    bodies = {"a.bin": b"\x00", "b.bin": secrets.token_bytes(1000),
              "c.bin": secrets.token_bytes(65537)}
    before = scrape(quiet.url)
    put_started = time.perf_counter()
    for key, data in bodies.items():
        quiet.put(coffer, key, data)
    put_seconds = time.perf_counter() - put_started
    gets = [quiet.raw.get(f"/{coffer}/b.bin"), quiet.raw.get(f"/{coffer}/c.bin"),
            quiet.raw.get(f"/{coffer}/c.bin", headers={"Range": "bytes=10-19"})]
    assert [(r.status_code, r.content) for r in gets] == [
        (200, bodies["b.bin"]), (200, bodies["c.bin"]), (206, bodies["c.bin"][10:20])]
    head = quiet.raw.head(f"/{coffer}/c.bin")  # (no body: nothing sent)
    assert (head.status_code, head.headers["content-length"], head.content) == (
        200, "65537", b"")
    missing = quiet.raw.get(f"/{coffer}/nothing.bin")
    assert_error(missing, 404, "ObjectNotExists", f"{coffer}/nothing.bin", region=TIANJIN)
    unsigned = httpx.get(f"{quiet.url}/{coffer}/a.bin")
    assert_error(unsigned, 401, "AuthFailed", f"{coffer}/a.bin")
    unrouted = httpx.delete(quiet.url + "/")
    assert_error(unrouted, 405, "MethodNotAllowed", "")
    after = scrape(quiet.url)

    assert delta(before, after, REQUESTS, "operation", "code") == {
        ("PutObject", "OK"): 3, ("GetObject", "OK"): 3, ("HeadObject", "OK"): 1,
        ("GetObject", "ObjectNotExists"): 1,
        ("GetObject", "AuthFailed"): 1, ("Unrouted", "MethodNotAllowed"): 1,
        ("GetMetrics", "OK"): 1}  # (the first scrape, counted after its answer was sent)
    assert delta(before, after, RECEIVED, "operation") == {
        ("PutObject",): sum(len(b) for b in bodies.values())}
    assert delta(before, after, SENT, "operation") == {
        ("GetObject",): 1000 + 65537 + 10 + len(missing.content) + len(unsigned.content),
        ("GetMetrics",): len(before.response.content),
        ("Unrouted",): len(unrouted.content)}
    assert delta(before, after, DURATION + "_count", "operation", "code") == delta(
        before, after, REQUESTS, "operation", "code")
    put_time = delta(before, after, DURATION + "_sum", "operation", "code")[("PutObject", "OK")]
    assert 0 < put_time <= put_seconds
    assert_histogram_matches(after)


def partial_put(world: World, path: str, declared: int, body: bytes) -> None:
    """A signed PutObject that announces `declared` bytes, sends `body` and hangs up once the
    server is reading the body (its temporary file exists)."""
    host = f"127.0.0.1:{world.srv.port}"
    fields = signing.sign(world.raw.secret_id, world.raw.secret_key, "PUT", path, None,
                          {"host": host})
    head = (f"PUT {signing.urlencode(path).replace('%2F', '/')} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: {signing.authorization_header(fields)}\r\n"
            f"Content-Length: {declared}\r\n\r\n")
    tmp_dir = world.srv.data_dir / "regions" / TIANJIN / "tmp"
    there = set(tmp_dir.iterdir())
    with socket.create_connection(("127.0.0.1", world.srv.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        wait_until(lambda: set(tmp_dir.iterdir()) - there, 10,
                   "the upload's temporary file")
        time.sleep(0.3)  # (the body already sent is read meanwhile)


def test_a_client_that_hangs_up_is_counted_as_client_disconnected(quiet: World) -> None:
    coffer = quiet.coffer(TIANJIN)
    before = scrape(quiet.url)
    partial_put(quiet, f"/{coffer}/half.bin", 100_000, b"h" * 1000)

    def counted() -> bool:
        now = scrape(quiet.url)
        return now.series(REQUESTS, "operation", "code").get(
            ("PutObject", "ClientDisconnected"), 0) == 1

    wait_until(counted, 10, "a ClientDisconnected PutObject")
    after = scrape(quiet.url)
    rose = delta(before, after, REQUESTS, "operation", "code")
    assert rose.pop(("GetMetrics", "OK")) >= 2
    assert rose == {("PutObject", "ClientDisconnected"): 1}
    assert delta(before, after, RECEIVED, "operation") == {("PutObject",): 1000}
    assert ("PutObject",) not in delta(before, after, SENT, "operation")
    assert_error(quiet.raw.head(f"/{coffer}/half.bin"), 404, "ObjectNotExists",
                 f"{coffer}/half.bin", region=TIANJIN)


# -- 2-3. gauges of the store ------------------------------------------------------------------


def assert_lag(s: Scrape, pending: int, failing: int, oldest: tuple[int, int] | None,
               taken: tuple[int, int]) -> None:
    """The replication gauges: `oldest` brackets the oldest owed copy's creation (ms),
    `taken` the scrape itself."""
    assert (s.gauge("datacoffer_replication_pending"),
            s.gauge("datacoffer_replication_failing")) == (pending, failing)
    lag = s.gauge("datacoffer_replication_lag_seconds")
    if oldest is None:
        assert lag == 0
    else:
        assert (taken[0] - oldest[1] - 1) / 1000 <= lag <= (taken[1] - oldest[0] + 1) / 1000


def timed_scrape(url: str) -> tuple[Scrape, tuple[int, int]]:
    started = now_ms()
    s = scrape(url)
    return s, (started, now_ms())


def test_replication_gauges_while_copies_are_owed(quiet: World) -> None:
    coffer = quiet.coffer(TIANJIN, SHANGHAI, GUANGZHOU)
    idle, taken = timed_scrape(quiet.url)
    assert_lag(idle, 0, 0, None, taken)
    put_window = (now_ms(), 0)
    quiet.put(coffer, "owed.txt", b"to be copied twice")
    put_window = (put_window[0], now_ms())
    time.sleep(0.3)
    owed, taken = timed_scrape(quiet.url)
    assert_lag(owed, 2, 0, put_window, taken)
    assert owed.gauge("datacoffer_replication_lag_seconds") >= 0.3
    doc = quiet.run("replication")
    assert (doc["Copied"], doc["Failed"], doc["Pending"]) == (2, 0, 0)
    done, taken = timed_scrape(quiet.url)
    assert_lag(done, 0, 0, None, taken)


def test_failing_gauge_counts_copies_whose_last_attempt_failed(quiet: World) -> None:
    coffer = quiet.coffer(TIANJIN, GUANGZHOU)
    with unwritable(quiet.srv.data_dir / "regions" / GUANGZHOU / "tmp"):
        put_window = (now_ms(), 0)
        quiet.put(coffer, "stuck.txt", b"waiting for a disk")
        put_window = (put_window[0], now_ms())
        doc = quiet.run("replication")
        assert (doc["Copied"], doc["Failed"], doc["Pending"]) == (0, 1, 1)
        failing, taken = timed_scrape(quiet.url)
        assert_lag(failing, 1, 1, put_window, taken)
        replication = quiet.status()["Replication"]
        assert (replication["Pending"], replication["Failing"]) == (1, 1)
    doc = quiet.run("replication")
    assert (doc["Copied"], doc["Failed"], doc["Pending"]) == (1, 0, 0)
    recovered, taken = timed_scrape(quiet.url)
    assert_lag(recovered, 0, 0, None, taken)


def test_integrity_gauges_after_a_scrub_repairs_a_damaged_copy(quiet: World) -> None:
    coffer = quiet.coffer(TIANJIN, SHANGHAI)
    data = secrets.token_bytes(4096)
    quiet.put(coffer, "rotting.bin", data)
    assert quiet.run("replication")["Copied"] == 1
    (blob_id,) = quiet.blob_ids(coffer, "rotting.bin")
    damaged = quiet.blob_file(SHANGHAI, blob_id)
    before = scrape(quiet.url)
    original = flip_byte(damaged, 100)
    doc = quiet.run("scrub")
    (finding,) = doc["Findings"]
    assert (finding["Coffer"], finding["Key"], finding["Region"], finding["Repaired"]) == (
        coffer, "rotting.bin", SHANGHAI, True)
    assert damaged.read_bytes() == original
    after = scrape(quiet.url)
    assert (after.gauge("datacoffer_integrity_findings")
            - before.gauge("datacoffer_integrity_findings")) == 1
    assert after.gauge("datacoffer_integrity_unrepaired") == 0
    status = quiet.status()
    integrity = status["Integrity"]
    assert (integrity["Findings"], integrity["Unrepaired"]) == (
        after.gauge("datacoffer_integrity_findings"), 0)
    latest = integrity["Latest"][0]
    assert {k: latest[k] for k in ("FoundBy", "Coffer", "Key", "Region")} == {
        "FoundBy": "scrub", "Coffer": coffer, "Key": "rotting.bin", "Region": SHANGHAI}
    assert ISO_MS.fullmatch(latest["Found"]) and ISO_MS.fullmatch(latest["Repaired"])
    assert latest["Problem"]
    assert after.gauge("datacoffer_audit_entries") == status["Audit"]["Entries"]


# -- 4. who may scrape -------------------------------------------------------------------------


def signed_scrape(client: SignedClient, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.get("/metrics", headers=headers)


def test_guarded_metrics_refuse_unsigned_and_unlisted_callers(guarded: Guarded) -> None:
    url = guarded.srv.base_url
    before = Scrape.of(signed_scrape(guarded.scraper))
    assert_error(scrape_response(url), 401, "AuthFailed", "")
    assert_error(signed_scrape(guarded.other), 401, "PolicyCheckFailed", "")
    # a sub-account of the listed account has its own UIN, which is not listed
    assert_error(signed_scrape(guarded.sub), 401, "PolicyCheckFailed", "")
    forged = SignedClient(url, guarded.scraper.secret_id, "0" * 32)  # a wrong key
    assert_error(signed_scrape(forged), 401, "AuthFailed", "")
    forged.close()
    after = Scrape.of(signed_scrape(guarded.scraper))
    assert delta(before, after, REQUESTS, "operation", "code") == {
        ("GetMetrics", "OK"): 1, ("GetMetrics", "AuthFailed"): 2,
        ("GetMetrics", "PolicyCheckFailed"): 2}
    assert after.types == FAMILIES


@pytest.mark.parametrize(("forwarded", "allowed"), [
    ("10.1.2.3", True),
    ("10.1.2.3:4711, 192.0.2.1", True),
    ("192.0.2.1", False),
    ("192.0.2.1, 10.1.2.3", False),
    ("127.0.0.1", False),  # loopback is not in this server's metrics_allow
])
def test_guarded_metrics_trust_the_proxys_first_hop(guarded: Guarded, forwarded: str,
                                                    allowed: bool) -> None:
    r = scrape_response(guarded.srv.base_url, {"X-Forwarded-For": forwarded})
    if allowed:
        assert Scrape.of(r).types == FAMILIES
    else:
        assert_error(r, 401, "AuthFailed", "")


def test_guarded_metrics_refuse_a_first_hop_that_is_no_address(guarded: Guarded) -> None:
    r = scrape_response(guarded.srv.base_url, {"X-Forwarded-For": "not-an-address"})
    assert_error(r, 400, "InvalidArgument", "")


@pytest.mark.parametrize(("method", "signed", "status", "code"), [
    ("POST", False, 405, "MethodNotAllowed"),
    ("HEAD", False, 405, "MethodNotAllowed"),
    ("PUT", False, 401, "AuthFailed"),  # PutCoffer of a coffer "metrics"
    ("PUT", True, 400, "InvalidCofferName"),
    ("DELETE", True, 404, "NoSuchCoffer"),
])
def test_other_methods_on_metrics_are_not_a_scrape(quiet: World, method: str, signed: bool,
                                                   status: int, code: str) -> None:
    before = scrape(quiet.url)
    if signed:
        r = quiet.raw.request(method, "/metrics")
    else:
        r = httpx.request(method, quiet.url + "/metrics")
    assert_error(r, status, code, "metrics")
    assert not r.headers.get("content-type", "").startswith("text/plain")
    after = scrape(quiet.url)
    rose = delta(before, after, REQUESTS, "operation", "code")
    assert rose.pop(("GetMetrics", "OK")) == 1
    (operation,) = [op for op, c in rose if c == code]
    assert operation != "GetMetrics" and rose == {(operation, code): 1}


# -- 5. settings -------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No DATACOFFER_* setting of the machine leaks into config.load."""
    for name in list(os.environ):
        if name.startswith("DATACOFFER_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_metrics_settings_defaults_toml_and_environment(clean_env: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    s = load()
    assert (s.metrics_allow, s.metrics_uins) == (("127.0.0.0/8", "::1"), ())
    config = tmp_path / "datacoffer.toml"
    config.write_text('metrics_allow = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]\n'
                      'metrics_uins = ["100000000011"]\n')
    s = load(config)
    assert s.metrics_allow == ("10.0.0.0/8", "192.0.2.7", "2001:db8::/32")
    assert s.metrics_uins == ("100000000011",)
    clean_env.setenv("DATACOFFER_METRICS_ALLOW", " 172.16.0.0/12 ,, ::1")
    clean_env.setenv("DATACOFFER_METRICS_UINS", "100000000011,100000000012")
    s = load(config)  # (the environment wins over the file)
    assert s.metrics_allow == ("172.16.0.0/12", "::1")
    assert s.metrics_uins == ("100000000011", "100000000012")
    clean_env.setenv("DATACOFFER_METRICS_ALLOW", "")
    assert load(config).metrics_allow == ()  # an empty list: no unsigned scrape at all


@pytest.mark.parametrize(("toml", "env", "message"), [
    ('metrics_allow = ["10.0.0.0/8", "x"]\n', None,
     "metrics_allow: 'x' is not an address or CIDR block"),
    ("", "10.0.0.0/8,localhost", "metrics_allow: 'localhost' is not an address or CIDR block"),
    ("", "10.0.0.0/33", "metrics_allow: '10.0.0.0/33' is not an address or CIDR block"),
    ("metrics_allow = 10\n", None,
     "metrics_allow: expected a list of addresses or CIDR blocks"),
    ("metrics_uins = [100000000011]\n", None, "metrics_uins: expected a list of UINs"),
])
def test_bad_metrics_settings_are_refused(clean_env: pytest.MonkeyPatch, tmp_path: Path,
                                          toml: str, env: str | None, message: str) -> None:
    config = tmp_path / "datacoffer.toml"
    config.write_text(toml)
    if env is not None:
        clean_env.setenv("DATACOFFER_METRICS_ALLOW", env)
    with pytest.raises(ConfigError) as refused:
        load(config)
    assert str(refused.value) == message


def test_serve_refuses_a_bad_metrics_allow(tmp_path: Path) -> None:
    done = subprocess.run(
        [*BIN, "serve", "--data-dir", str(tmp_path / "data"), "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
        env={**clean_process_env(), "DATACOFFER_METRICS_ALLOW": "127.0.0.1,nowhere"})
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", "error: metrics_allow: 'nowhere' is not an address or CIDR block\n")
    assert not (tmp_path / "data").exists()


def clean_process_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DATACOFFER_")}


# -- 6. admin status ---------------------------------------------------------------------------


def regions_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["Name"]: r for r in doc["Regions"]}


def test_status_shows_regions_and_the_lag_until_replicated(quiet: World) -> None:
    before = quiet.status()
    assert [r["Name"] for r in before["Regions"]] == list(ALL)
    for region in before["Regions"]:
        assert list(region) == ["Name", "Path", "Objects", "Owed", "FreeBytes"]
        assert region["Path"] == str((quiet.srv.data_dir / "regions" / region["Name"]).resolve())
        assert type(region["FreeBytes"]) is int and region["FreeBytes"] > 0
        assert region["Owed"] == 0
    assert before["Replication"] == {"Pending": 0, "Failing": 0, "LagSeconds": 0.0,
                                     "Oldest": None}
    assert list(before["Audit"]) == ["Entries", "HeadHash"]
    assert list(before["Integrity"]) == ["Findings", "Unrepaired", "Latest"]

    coffer = quiet.coffer(TIANJIN, SHANGHAI, GUANGZHOU)
    quiet.put(coffer, "one.txt", b"first")
    quiet.put(coffer, "two.txt", b"second")
    (oldest_ms,) = query(quiet.db, "SELECT min(created_ms) FROM replication_queue")[0]
    time.sleep(0.2)
    started = now_ms()
    owed = quiet.status()
    ended = now_ms()
    replication = owed["Replication"]
    assert (replication["Pending"], replication["Failing"]) == (4, 0)
    assert replication["Oldest"] == iso8601(oldest_ms)
    assert ISO_MS.fullmatch(replication["Oldest"])
    assert (started - oldest_ms) / 1000 - 0.001 <= replication["LagSeconds"] <= (
        ended - oldest_ms) / 1000 + 0.001
    assert replication["LagSeconds"] >= 0.2

    def objects_and_owed(doc: dict[str, Any]) -> dict[str, tuple[int, int]]:
        return {n: (r["Objects"], r["Owed"]) for n, r in regions_of(doc).items()}

    was = objects_and_owed(before)
    assert objects_and_owed(owed) == {TIANJIN: (was[TIANJIN][0] + 2, 0),
                                      SHANGHAI: (was[SHANGHAI][0], 2),
                                      GUANGZHOU: (was[GUANGZHOU][0], 2)}
    assert quiet.run("replication")["Copied"] == 4
    done = quiet.status()
    assert done["Replication"] == {"Pending": 0, "Failing": 0, "LagSeconds": 0.0,
                                   "Oldest": None}
    assert objects_and_owed(done) == {n: (was[n][0] + 2, 0) for n in ALL}


def test_status_audit_counts_one_entry_per_request_to_a_coffer(quiet: World) -> None:
    coffer = quiet.coffer(TIANJIN)
    before = quiet.status()["Audit"]
    assert HEX64.fullmatch(before["HeadHash"])
    quiet.put(coffer, "audited.txt", b"audited")                     # 1: PutObject OK
    assert quiet.raw.get(f"/{coffer}/audited.txt").status_code == 200  # 2: GetObject OK
    unsigned = httpx.head(f"{quiet.url}/{coffer}/audited.txt")       # 3: AuthFailed
    assert_error(unsigned, 401, "AuthFailed", f"{coffer}/audited.txt")
    absent = f"absent{next(_names)}-{APP_ID}"                        # 4: CofferNotFound
    assert_error(quiet.raw.get(f"/{absent}/x"), 404, "CofferNotFound", f"{absent}/x")
    # not audited: no coffer reached
    assert quiet.raw.get("/").status_code == 200                     # GetService
    scrape(quiet.url)                                                # GetMetrics
    assert httpx.post(quiet.url + "/").status_code == 405           # Unrouted
    after = quiet.status()["Audit"]
    assert after["Entries"] == before["Entries"] + 4
    assert HEX64.fullmatch(after["HeadHash"]) and after["HeadHash"] != before["HeadHash"]
    verdict = quiet.srv.admin("audit", "verify")
    assert (verdict["Valid"], verdict["Head"]) == (
        True, {"Seq": after["Entries"], "Hash": after["HeadHash"]})
    assert scrape(quiet.url).gauge("datacoffer_audit_entries") == after["Entries"]
