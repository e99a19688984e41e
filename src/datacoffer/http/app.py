"""The ASGI application: route, authenticate, dispatch, and answer every failure properly.

Every response carries `x-cdcs-request-id` and `Server`; every error a fresh TraceId that is
logged with the full detail, while the client sees only the code and a helpful sentence.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from datacoffer import SERVER_NAME
from datacoffer.core.audit import AuditEntry, AuditWriter, storable
from datacoffer.core.clock import now_ms
from datacoffer.core.identities import Identity
from datacoffer.errors import CdcsError
from datacoffer.http import coffers, lifecycle, multipart, objects, peer, policy, service
from datacoffer.http.auth import authenticate
from datacoffer.http.call import Call
from datacoffer.http.errors import error_response, printable
from datacoffer.http.metrics import Metrics
from datacoffer.http.router import Endpoint, decode_path, parse_query, route
from datacoffer.installation import Installation
from datacoffer.workers import Workers

log = logging.getLogger("datacoffer.http")
access_log = logging.getLogger("datacoffer.access")

Handler = Callable[[Call], Awaitable[Response]]

HANDLERS: dict[str, Handler] = {
    "GetService": service.get_service,
    "PutCoffer": coffers.put_coffer,
    "GetCoffer": coffers.get_coffer,
    "DeleteCoffer": coffers.delete_coffer,
    "PutCofferPolicy": policy.put_policy,
    "GetCofferPolicy": policy.get_policy,
    "DeleteCofferPolicy": policy.delete_policy,
    "PutCofferLifecycle": lifecycle.put_lifecycle,
    "GetCofferLifecycle": lifecycle.get_lifecycle,
    "PutObject": objects.put_object,
    "GetObject": objects.get_object,
    "HeadObject": objects.head_object,
    "InitiateMultipartUpload": multipart.initiate,
    "UploadPart": multipart.upload_part,
    "ListParts": multipart.list_parts,
    "CompleteMultipartUpload": multipart.complete,
    "AbortMultipartUpload": multipart.abort,
    "ListMultipartUploads": multipart.list_uploads,
}


def new_id() -> str:
    return secrets.token_hex(16)


@dataclass
class _Done:
    """How far a request got: its endpoint, identity and handler call, once known."""

    endpoint: Endpoint | None = None
    identity: Identity | None = None
    call: Call | None = None
    #: the method and the coffer (and key) of a request that the router refused
    unrouted: tuple[str, str] | None = None

    @property
    def operation(self) -> str:
        return self.endpoint.operation if self.endpoint else "Unrouted"

    @property
    def audited(self) -> tuple[str, str] | None:
        """(operation, resource) of a request that reached a coffer: it is audited. A request
        the router refused (a DELETE of an object, say) is recorded under its method."""
        if self.endpoint is not None:
            return ((self.endpoint.operation, self.endpoint.resource)
                    if self.endpoint.coffer else None)
        return self.unrouted

    @property
    def region(self) -> str | None:
        return self.call.region if self.call else None


class _Counted:
    """The ASGI receive and send of one request, counting the body bytes each way."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        self.received = self.sent = 0

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            self.sent += len(message.get("body", b""))
        await self._send(message)


class DataCofferApp:
    def __init__(self, inst: Installation, *, background: bool = False) -> None:
        """`background`: run the background workers (lifecycle, replication, scrub)."""
        self.inst = inst
        self.background = background
        self.workers = Workers(inst)
        self.audit = AuditWriter(inst.db)
        self.metrics = Metrics(inst)
        self._audit_task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                found = await anyio.to_thread.run_sync(
                    self.inst.objects.recover, self.inst.uploads.reclaim_lapsed_parts)
                found["expiries_finished"] = await anyio.to_thread.run_sync(
                    self.inst.expiry.finish)
                log.info("recovery at start: %s", found)
                self._audit_task = asyncio.create_task(self.audit.run())
                if self.background:
                    self.workers.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.workers.stop()
                if self._audit_task is not None:  # (it writes what is waiting first)
                    self._audit_task.cancel()
                    await asyncio.gather(self._audit_task, return_exceptions=True)
                await anyio.to_thread.run_sync(self.inst.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        counted = _Counted(receive, send)
        request = Request(scope, counted.receive)
        request_id = new_id()
        method = scope["method"]
        path = decode_path(scope.get("raw_path") or scope["path"].encode())
        done = _Done()
        try:
            response = await self._answer(request, path, done)
        except ClientDisconnect:
            access_log.info("%s %s %s: the client went away before sending its whole body",
                            request_id, method, done.operation)
            if done.audited:
                await self._audit(request, request_id, done, 499, "ClientDisconnected")
            self.metrics.observe(done.operation, "ClientDisconnected",
                                 time.perf_counter() - started, counted.received, 0)
            return
        except CdcsError as err:
            if done.endpoint is None and err.resource:
                done.unrouted = (method, err.resource)
            response = self._error(err, request, request_id)
        except Exception:
            err = CdcsError("InternalError", resource=done.endpoint.resource
                            if done.endpoint else "",
                            detail=f"unexpected failure in {method} {done.operation}")
            response = self._error(err, request, request_id, unexpected=True)
        if done.audited:
            try:
                await self._audit(request, request_id, done, response.status_code,
                                  response.headers.get("x-cdcs-error-code", "OK"))
            except Exception:  # an answer that the audit log would miss is not given
                err = CdcsError("InternalError", resource=done.audited[1],
                                detail="the audit entry could not be written")
                response = self._error(err, request, request_id, unexpected=True)
        response.headers["x-cdcs-request-id"] = request_id
        response.headers["Server"] = SERVER_NAME
        if done.region:
            response.headers["x-cdcs-coffer-region"] = done.region
        status = response.status_code
        code = response.headers.get("x-cdcs-error-code", "OK")
        try:
            await response(scope, counted.receive, counted.send)
        except Exception:
            trace_id = new_id()
            log.exception("trace %s: response to %s failed after it started", trace_id,
                          request_id)
            status, code = 500, "ResponseFailed"
        elapsed = time.perf_counter() - started
        self.metrics.observe(done.operation, code, elapsed, counted.received, counted.sent)
        access_log.info("%s %s %s %s %d %.1fms", request_id, method, done.operation,
                        printable(path), status, elapsed * 1000)

    async def _answer(self, request: Request, path: str, done: _Done) -> Response:
        """Route, authenticate and run the handler; `done` keeps what is known so far."""
        query = parse_query(request.scope.get("query_string", b""))
        done.endpoint = endpoint = route(request.method, path, query,
                                         request.headers.get("host", ""))
        if endpoint.operation == "GetMetrics":
            return await self.metrics.answer(request, endpoint, path, query)
        handler = HANDLERS[endpoint.operation]  # (the router makes only these)
        done.identity = await authenticate(self.inst.identities, self.inst.tokens, request,
                                           endpoint, path, query, self.inst.settings.sign_skew)
        done.call = Call(request, endpoint, done.identity, self.inst)
        return await handler(done.call)

    async def _audit(self, request: Request, request_id: str, done: _Done, status: int,
                     code: str) -> None:
        """Record a request that reached a coffer; returns once the entry is committed."""
        assert done.audited is not None
        operation, resource = done.audited
        try:
            source = str(peer.address(request, self.inst.settings.trusted_proxies, resource))
        except CdcsError:  # a proxy's malformed X-Forwarded-For: the proxy's own address
            source = request.client.host if request.client else "-"
        await self.audit.record(AuditEntry(
            now_ms(), request_id, done.identity.principal if done.identity else "-", source,
            operation, storable(resource), status, code))

    def _error(self, err: CdcsError, request: Request, request_id: str, *,
               unexpected: bool = False) -> Response:
        """The error answer; its TraceId is logged with the full detail (and, for an
        unexpected failure, the traceback of the exception being handled)."""
        trace_id = new_id()
        detail = f" ({err.detail})" if err.detail else ""
        log.log(logging.ERROR if unexpected else logging.INFO, "trace %s: %s %s: %s", trace_id,
                err.code.name, printable(err.resource or "-"), printable(err.message + detail),
                exc_info=unexpected)
        return error_response(err, request_id=request_id, trace_id=trace_id,
                              accept=request.headers.get("accept", ""),
                              head=request.method == "HEAD")
