"""Reading small request bodies (JSON and XML documents) with a size limit."""

from __future__ import annotations

import anyio

from datacoffer.errors import CdcsError
from datacoffer.http.call import Call


async def read_limited(call: Call, limit: int, *, too_long: CdcsError | None = None) -> bytes:
    """The whole body, or `too_long` (by default InvalidArgument) when it is longer than
    `limit` bytes; InvalidArgument when it has not all arrived within the body timeout (a
    document is small: a client sending a byte a minute must not hold a lock for days)."""
    resource = call.endpoint.resource
    timeout = call.inst.settings.body_timeout
    try:
        with anyio.fail_after(timeout):
            return await _read(call, limit, resource, too_long)
    except TimeoutError:
        raise CdcsError("InvalidArgument", f"The request body did not arrive within {timeout} "
                        "seconds.", resource=resource) from None


async def _read(call: Call, limit: int, resource: str, too_long: CdcsError | None) -> bytes:
    too_long = too_long or CdcsError("InvalidArgument",
                                     f"The request body is over {limit} bytes.",
                                     resource=resource)
    declared = call.request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_long
    data = bytearray()
    async for chunk in call.request.stream():
        data += chunk
        if len(data) > limit:
            raise too_long
    return bytes(data)
