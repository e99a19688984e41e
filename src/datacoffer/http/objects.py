"""PutObject, GetObject and HeadObject."""

from __future__ import annotations

import base64
import binascii

import anyio
from starlette.responses import Response, StreamingResponse

from datacoffer.core.clock import now_ms, rfc1123
from datacoffer.core.coffers import Coffer
from datacoffer.core.lifecycle import expires_ms
from datacoffer.core.objects import StoredObject
from datacoffer.core.uploads import MAX_PART_NUMBER
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


async def _stored(call: Call) -> tuple[Coffer, StoredObject]:
    check_key(call.endpoint.coffer, call.endpoint.key)
    coffer = await call.coffer()
    assert call.region is not None
    obj = await anyio.to_thread.run_sync(call.inst.objects.head, coffer, call.endpoint.key,
                                         call.region)
    expires = expires_ms(obj.created_ms, coffer.lifecycle_days)
    if expires is not None and expires <= now_ms():  # due: gone, whether swept yet or not
        raise call.fail("ObjectNotExists")
    return coffer, obj


def _full_headers(coffer: Coffer, obj: StoredObject) -> dict[str, str]:
    """GetObject's headers. Content-Type is set as stored: passing it as Starlette's
    media_type would append a charset to text types."""
    headers = {**object_headers(obj), "Content-Type": obj.content_type,
               "Content-Length": str(obj.size),
               "x-cdcs-encrypt-type": str(obj.encrypt_type),
               "x-cdcs-checksum-sha256": obj.sha256}
    expires = expires_ms(obj.created_ms, coffer.lifecycle_days)
    if expires is not None:
        headers["x-cdcs-expiration"] = rfc1123(expires)
    return headers


def _part_number(call: Call) -> int | None:
    """The part named by `?partNumber=N`, or None; checked before the object is looked up
    (errors.md: request syntax comes before existence)."""
    if "partnumber" not in call.endpoint.params:
        return None
    number = call.int_param(("partnumber",), 0, 1, MAX_PART_NUMBER,
                            message=f"partNumber must be 1 to {MAX_PART_NUMBER}.")
    if "range" in call.request.headers:
        raise call.fail("InvalidArgument", "partNumber and Range cannot be used together.")
    return number


def _part_span(call: Call, obj: StoredObject, number: int) -> tuple[int, int, dict[str, str]]:
    """(first, last, extra headers) of part `number` of the object.

    An extension of S3's kind (docs/decisions.md): clients download a multipart object part by
    part and check each part's SHA-256, which a whole-object checksum of a multipart object
    (composite) needs.
    """
    segments = call.inst.objects.segments(obj)
    if number > len(segments):
        raise CdcsError("InvalidRange", f"The object has {len(segments)} parts.",
                        resource=call.endpoint.resource,
                        headers={"x-cdcs-mp-parts-count": str(len(segments))})
    offset, size, sha256 = segments[number - 1]
    return offset, offset + size - 1, {"x-cdcs-mp-parts-count": str(len(segments)),
                                       "x-cdcs-part-checksum-sha256": sha256}


async def _answer(call: Call, *, body: bool) -> Response:
    number = _part_number(call)
    coffer, obj = await _stored(call)
    headers = _full_headers(coffer, obj)
    span: tuple[int, int] | None = None
    if number is not None:
        first, last, extra = await anyio.to_thread.run_sync(_part_span, call, obj, number)
        headers.update(extra)
        span = first, last
    elif body:
        try:
            span = parse_range(call.request.headers.get("range"), obj.size)
        except Unsatisfiable:
            raise CdcsError("InvalidRange", f"The object is {obj.size} bytes long.",
                            resource=call.endpoint.resource,
                            headers={"Content-Range": f"bytes */{obj.size}"}) from None
    status, start, length = 200, 0, obj.size
    if span is not None and span[1] < span[0]:
        # an empty last part: no byte range can name it, so 200 with no bytes
        status, start, length = 200, span[0], 0
        headers["Content-Length"] = "0"
    elif span is not None:
        first, last = span
        status, start, length = 206, first, last - first + 1
        headers["Content-Range"] = f"bytes {first}-{last}/{obj.size}"
        headers["Content-Length"] = str(length)
    if not body:
        return Response(b"", status, headers)
    assert call.region is not None
    # the coffer's key is checked before the answer starts: a refusal is an error answer
    open_key = (None if coffer.encrypt_type == 0  # no thread hop for what needs no key
                else await anyio.to_thread.run_sync(call.inst.keyring.opener, coffer))
    chunks = call.inst.objects.read(obj, call.region, start, length, open_key)
    if length <= SMALL_READ:
        # One worker-thread trip reads (and, whole, verifies) the bytes before any is sent:
        # a damaged small object is an error answer rather than a cut-off connection.
        body_bytes = await anyio.to_thread.run_sync(b"".join, chunks)
        return Response(body_bytes, status, headers)
    if open_key is not None:
        # a key the KMS refuses must be a KMSFailed answer, not a cut-off download
        await anyio.to_thread.run_sync(call.inst.objects.preflight, obj, call.region, open_key)
    return StreamingResponse(chunks, status, headers)


async def head_object(call: Call) -> Response:
    return await _answer(call, body=False)


async def get_object(call: Call) -> Response:
    return await _answer(call, body=True)
