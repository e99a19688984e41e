"""The Prometheus `/metrics` endpoint: requests, bytes, replication lag, integrity findings.

Request counts and latencies are kept per operation and result code in this process; the
queue, findings and audit figures are read from the metadata store at each scrape (so every
server process on one installation reports the same). Unsigned scrapes are answered only from
the addresses in `metrics_allow` (loopback by default); from elsewhere a scrape must be signed
by an identity listed in `metrics_uins`.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from datacoffer.core import audit, copies
from datacoffer.core.clock import now_ms
from datacoffer.errors import CdcsError
from datacoffer.http import peer
from datacoffer.http.auth import authenticate
from datacoffer.http.router import Endpoint
from datacoffer.installation import Installation

# no `*_created` series: a scrape shows counts and sums, not when each label first appeared
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: request latency buckets, seconds: from a cached HEAD to a large transfer
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
            300)


class _StoreFigures(Collector):
    """Figures of the whole installation, read from the metadata store at each scrape."""

    def __init__(self, inst: Installation) -> None:
        self.inst = inst

    def collect(self) -> Iterator[Metric]:
        lag = self.inst.replication.lag()
        found, unrepaired, _ = copies.findings(self.inst.db, latest=0)
        entries, _ = audit.head(self.inst.db)
        for name, text, value in (
            ("datacoffer_replication_pending", "Copies still owed to regions.", lag.pending),
            ("datacoffer_replication_failing", "Owed copies whose last attempt failed.",
             lag.failing),
            ("datacoffer_replication_lag_seconds", "Age of the oldest owed copy.",
             lag.seconds(now_ms())),
            ("datacoffer_integrity_findings", "Damaged or missing copies found so far.", found),
            ("datacoffer_integrity_unrepaired", "Damaged or missing copies not yet repaired.",
             unrepaired),
            ("datacoffer_audit_entries", "Entries in the audit log's hash chain.", entries),
        ):
            yield GaugeMetricFamily(name, text, value=value)


class Metrics:
    def __init__(self, inst: Installation) -> None:
        self.inst = inst
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("datacoffer_requests", "Requests answered.",
                                ("operation", "code"), registry=self.registry)
        self.latency = Histogram("datacoffer_request_duration_seconds",
                                 "Time from a request's arrival to the end of its answer.",
                                 ("operation", "code"), buckets=_BUCKETS,
                                 registry=self.registry)
        self.received = Counter("datacoffer_received_bytes", "Request body bytes received.",
                                ("operation",), registry=self.registry)
        self.sent = Counter("datacoffer_sent_bytes", "Response body bytes sent.",
                            ("operation",), registry=self.registry)
        self.registry.register(_StoreFigures(inst))

    def observe(self, operation: str, code: str, seconds: float, received: int,
                sent: int) -> None:
        self.requests.labels(operation, code).inc()
        self.latency.labels(operation, code).observe(seconds)
        if received:
            self.received.labels(operation).inc(received)
        if sent:
            self.sent.labels(operation).inc(sent)

    async def answer(self, request: Request, endpoint: Endpoint, path: str,
                     query: list[tuple[str, str]]) -> Response:
        """The scrape's answer, or AuthFailed/PolicyCheckFailed for a caller not let in."""
        settings = self.inst.settings
        client = peer.address(request, settings.trusted_proxies, endpoint.resource)
        # a proxy on an allowed address (a TLS front on the loopback) that nobody listed in
        # trusted_proxies would let the whole world in: forwarded scrapes must be signed
        forwarded = ("x-forwarded-for" in request.headers or "forwarded" in request.headers) \
            and client == peer.address(request, (), endpoint.resource)
        if forwarded or not peer.within(client, settings.metrics_allow):
            identity = await authenticate(self.inst.identities, self.inst.tokens, request,
                                          endpoint, path, query, settings.sign_skew)
            if identity.uin not in settings.metrics_uins:
                raise CdcsError("PolicyCheckFailed", "This identity may not read the metrics "
                                "(the operator lists those that may in metrics_uins).")
        body = await anyio.to_thread.run_sync(generate_latest, self.registry)
        return Response(body, media_type=CONTENT_TYPE)
