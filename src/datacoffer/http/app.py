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

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from datacoffer import SERVER_NAME
from datacoffer.core.clock import now_ms
from datacoffer.errors import CdcsError
from datacoffer.http import coffers, lifecycle, multipart, objects, policy, service
from datacoffer.http.auth import authenticate
from datacoffer.http.call import Call
from datacoffer.http.errors import error_response, printable
from datacoffer.http.router import Endpoint, decode_path, parse_query, route
from datacoffer.installation import Installation

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


class DataCofferApp:
    def __init__(self, inst: Installation, *, background: bool = False) -> None:
        """`background`: run the background workers (the lifecycle sweeper) while serving."""
        self.inst = inst
        self.background = background
        self._workers: list[asyncio.Task[None]] = []

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
                if self.background:
                    self._workers.append(asyncio.create_task(self._sweep_forever()))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for worker in self._workers:
                    worker.cancel()
                await asyncio.gather(*self._workers, return_exceptions=True)
                await anyio.to_thread.run_sync(self.inst.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _sweep_forever(self) -> None:
        """The lifecycle sweeper: a pass now, then one every `lifecycle_interval` seconds.
        A failed pass is logged and the next one tries again."""
        while True:
            try:
                expired = await anyio.to_thread.run_sync(self.inst.expiry.sweep, now_ms())
                if expired:
                    log.info("lifecycle pass: %d objects expired", len(expired))
            except Exception:
                log.exception("lifecycle pass failed; the next one retries")
            await asyncio.sleep(self.inst.settings.lifecycle_interval)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = Request(scope, receive)
        request_id = new_id()
        method = scope["method"]
        endpoint: Endpoint | None = None
        call: Call | None = None
        path = decode_path(scope.get("raw_path") or scope["path"].encode())
        try:
            query = parse_query(scope.get("query_string", b""))
            endpoint = route(method, path, query, request.headers.get("host", ""))
            handler = HANDLERS[endpoint.operation]  # (the router makes only these)
            identity = await authenticate(self.inst.identities, self.inst.tokens, request,
                                          endpoint, path, query, self.inst.settings.sign_skew)
            call = Call(request, endpoint, identity, self.inst)
            response = await handler(call)
        except CdcsError as err:
            response = self._error(err, request, request_id)
        except ClientDisconnect:
            access_log.info("%s %s %s: the client went away before sending its whole body",
                            request_id, method, endpoint.operation if endpoint else "-")
            return
        except Exception:
            err = CdcsError("InternalError", resource=endpoint.resource if endpoint else "",
                            detail=f"unexpected failure in {method} "
                                   f"{endpoint.operation if endpoint else '(unrouted)'}")
            response = self._error(err, request, request_id, unexpected=True)
        response.headers["x-cdcs-request-id"] = request_id
        response.headers["Server"] = SERVER_NAME
        if call is not None and call.region:
            response.headers["x-cdcs-coffer-region"] = call.region
        status = response.status_code
        try:
            await response(scope, receive, send)
        except Exception:
            trace_id = new_id()
            log.exception("trace %s: response to %s failed after it started", trace_id,
                          request_id)
            status = 500
        access_log.info(
            "%s %s %s %s %d %.1fms", request_id, method,
            endpoint.operation if endpoint else "-", printable(path), status,
            (time.perf_counter() - started) * 1000)

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
