"""Reading small request bodies (JSON and XML documents) with a size limit."""

from __future__ import annotations

from datacoffer.core.ingest import paced
from datacoffer.errors import CdcsError
from datacoffer.http.call import Call


async def read_limited(call: Call, limit: int, *, too_long: CdcsError | None = None) -> bytes:
    """The whole body, or `too_long` (by default InvalidArgument) when it is longer than
    `limit` bytes; InvalidArgument when the client stalls for the body timeout."""
    resource = call.endpoint.resource
    too_long = too_long or CdcsError("InvalidArgument",
                                     f"The request body is over {limit} bytes.",
                                     resource=resource)
    declared = call.request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_long
    data = bytearray()
    async for chunk in paced(call.request.stream(), call.inst.settings.body_timeout, resource):
        data += chunk
        if len(data) > limit:
            raise too_long
    return bytes(data)
