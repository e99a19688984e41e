"""PutObject, GetObject and HeadObject."""

from __future__ import annotations

import base64
import binascii

import anyio
from starlette.responses import Response, StreamingResponse

from datacoffer.core.clock import rfc1123
from datacoffer.core.objects import StoredObject
from datacoffer.errors import CdcsError
from datacoffer.http.call import Call
from datacoffer.http.ranges import Unsatisfiable, parse_range
from datacoffer.names import check_key

#: as long as the metadata column that stores it
MAX_CONTENT_TYPE = 256
#: GetObject answers up to this size are read whole before they are sent, larger ones stream.
SMALL_READ = 1024 * 1024


def object_headers(obj: StoredObject) -> dict[str, str]:
    return {
        "ETag": f'"{obj.etag}"',
        "Last-Modified": rfc1123(obj.created_ms),
    }


def content_type_of(call: Call) -> str:
    """The Content-Type to store with an object, checked to fit its column."""
    content_type = call.request.headers.get("content-type", "")
    if len(content_type) > MAX_CONTENT_TYPE:
        raise call.fail("InvalidArgument",
                        f"Content-Type is limited to {MAX_CONTENT_TYPE} characters.")
    return content_type


def content_md5(call: Call) -> bytes | None:
    value = call.request.headers.get("content-md5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise call.fail("InvalidArgument", "Content-MD5 must be the base64 of a 16-byte MD5.")
    return digest


def content_length(call: Call, limit: int) -> int:
    """The declared body length: required, and at most `limit`."""
    value = call.request.headers.get("content-length")
    if value is None or not value.strip().isdigit():
        raise call.fail("InvalidArgument", "Content-Length is required.")
    length = int(value)
    if length > limit:
        raise call.fail("InvalidArgument",
                        f"The body is over the {limit}-byte limit; use a multipart upload.")
    return length


async def put_object(call: Call) -> Response:
    endpoint = call.endpoint
    check_key(endpoint.coffer, endpoint.key)
    length = content_length(call, call.inst.settings.max_object_size)
    if length == 0:
        raise call.fail("ObjectEmpty")
    md5 = content_md5(call)
    content_type = content_type_of(call)
    coffer = await call.coffer()
    obj = await call.inst.objects.put(
        coffer, endpoint.key, call.identity, call.request.stream(), length,
        content_type, md5)
    return Response(b"", headers=object_headers(obj))


async def _stored(call: Call) -> StoredObject:
    check_key(call.endpoint.coffer, call.endpoint.key)
    coffer = await call.coffer()
    assert call.region is not None
    return await anyio.to_thread.run_sync(call.inst.objects.head, coffer, call.endpoint.key,
                                          call.region)


def _full_headers(obj: StoredObject) -> dict[str, str]:
    """GetObject's headers. Content-Type is set as stored: passing it as Starlette's
    media_type would append a charset to text types."""
    return {**object_headers(obj), "Content-Type": obj.content_type,
            "Content-Length": str(obj.size),
            "x-cdcs-encrypt-type": str(obj.encrypt_type),
            "x-cdcs-checksum-sha256": obj.sha256}


async def head_object(call: Call) -> Response:
    obj = await _stored(call)
    return Response(b"", headers=_full_headers(obj))


async def get_object(call: Call) -> Response:
    obj = await _stored(call)
    headers = _full_headers(obj)
    try:
        wanted = parse_range(call.request.headers.get("range"), obj.size)
    except Unsatisfiable:
        raise CdcsError("InvalidRange", f"The object is {obj.size} bytes long.",
                        resource=call.endpoint.resource,
                        headers={"Content-Range": f"bytes */{obj.size}"}) from None
    status, start, length = 200, 0, obj.size
    if wanted is not None:
        first, last = wanted
        status, start, length = 206, first, last - first + 1
        headers["Content-Range"] = f"bytes {first}-{last}/{obj.size}"
        headers["Content-Length"] = str(length)
    assert call.region is not None
    chunks = call.inst.objects.read(obj, call.region, start, length)
    if length <= SMALL_READ:
        # One worker-thread trip reads (and, whole, verifies) the bytes before any is sent:
        # a damaged small object is an error answer rather than a cut-off connection.
        body = await anyio.to_thread.run_sync(b"".join, chunks)
        return Response(body, status, headers)
    return StreamingResponse(chunks, status, headers)
