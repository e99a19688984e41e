"""Reading small request bodies (JSON and XML documents) with a size limit."""

from __future__ import annotations

from starlette.requests import Request

from datacoffer.errors import CdcsError


async def read_limited(request: Request, limit: int, resource: str) -> bytes:
    """The whole body, or InvalidArgument when it is longer than `limit` bytes."""
    too_long = CdcsError("InvalidArgument", f"The request body is over {limit} bytes.",
                         resource=resource)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_long
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise too_long
    return bytes(data)
