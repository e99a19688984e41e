"""InitiateMultipartUpload, UploadPart, ListParts, AbortMultipartUpload, ListMultipartUploads."""

from __future__ import annotations

import json
from typing import Any

import anyio
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError
from defusedxml.ElementTree import fromstring as defused_fromstring
from starlette.responses import Response

from datacoffer.core.clock import iso8601
from datacoffer.core.uploads import COMPLETED, MAX_PART_NUMBER, Upload, check_part_list
from datacoffer.http import xml
from datacoffer.http.body import read_limited
from datacoffer.http.call import Call
from datacoffer.http.coffers import url_encoder
from datacoffer.http.objects import content_length, content_md5, content_type_of
from datacoffer.http.service import locations_element, owner_element
from datacoffer.names import check_key, check_marker, check_prefix


def _json(doc: dict[str, Any]) -> Response:
    return Response(json.dumps(doc, ensure_ascii=False).encode(), media_type="application/json")


def _principal(account_uin: str, uin: str) -> dict[str, str]:
    return {"ID": f"qcs::cam::uin/{account_uin}:uin/{uin}", "DisplayName": uin}


def _upload_id(call: Call) -> str:
    upload_id = call.param("uploadid")
    if not upload_id:
        raise call.fail("InvalidArgument", "uploadId is required.")
    return upload_id


async def _upload(call: Call) -> Upload:
    """The addressed upload (after the coffer and authorization checks)."""
    coffer = await call.coffer()
    return await anyio.to_thread.run_sync(call.inst.uploads.find, coffer, call.endpoint.key,
                                          _upload_id(call))


async def initiate(call: Call) -> Response:
    check_key(call.endpoint.coffer, call.endpoint.key)
    content_type = content_type_of(call)
    coffer = await call.coffer()
    upload = await anyio.to_thread.run_sync(call.inst.uploads.initiate, coffer,
                                            call.endpoint.key, call.identity, content_type)
    return _json({"Coffer": coffer.name, "Key": upload.key, "UploadId": upload.upload_id})


async def upload_part(call: Call) -> Response:
    check_key(call.endpoint.coffer, call.endpoint.key)
    number = call.int_param(("partnumber",), 0, 1, MAX_PART_NUMBER)
    if number == 0:
        raise call.fail("InvalidArgument", "partNumber is required (1 to 10000).")
    _upload_id(call)
    length = content_length(call, call.inst.uploads.max_part_size)
    md5 = content_md5(call)
    upload = await _upload(call)
    part = await call.inst.uploads.upload_part(upload, number, call.request.stream(), length,
                                               md5)
    return Response(b"", headers={"ETag": f'"{part.etag}"'})


#: 10,000 parts of about 80 bytes each fit with room to spare.
MAX_COMPLETE_BODY = 4 * 1024 * 1024


def _part_list(call: Call, body: bytes) -> list[tuple[int, str]]:
    """The (PartNumber, ETag) pairs of a CompleteMultipartUpload body, or InvalidArgument."""
    def bad(why: str) -> Exception:
        return call.fail("InvalidArgument", f"The CompleteMultipartUpload body {why}.")

    try:
        root = defused_fromstring(body, forbid_dtd=True)
    except (ParseError, DefusedXmlException):
        raise bad("is not well-formed XML without a DOCTYPE") from None
    if root.tag != "CompleteMultipartUpload":
        raise bad("must be a <CompleteMultipartUpload> document")
    listed = []
    for part in root.findall("Part"):
        number, etag = part.findtext("PartNumber"), part.findtext("ETag")
        if number is None or etag is None:
            raise bad("has a <Part> without its <PartNumber> and <ETag>")
        number = number.strip()
        # (a 0 or a number past the last part is the list's numbering fault, InvalidPart)
        if not (number.isascii() and number.isdigit() and len(number) <= 5):
            raise bad(f"has a PartNumber that is not a whole number of at most five digits: "
                      f"{number[:20]!r}")
        listed.append((int(number), etag))
    if not listed:
        raise bad("lists no part")
    return listed


async def complete(call: Call) -> Response:
    check_key(call.endpoint.coffer, call.endpoint.key)
    _upload_id(call)
    body = await read_limited(call, MAX_COMPLETE_BODY)
    listed = _part_list(call, body)
    check_part_list(listed, call.endpoint.resource)
    upload = await _upload(call)
    obj = await anyio.to_thread.run_sync(call.inst.uploads.complete, upload, listed)
    root = xml.new("CompleteMultipartUploadResult")
    locations_element(root, upload.coffer.locations)
    xml.sub(root, "Coffer", upload.coffer.name)
    xml.sub(root, "Key", upload.key)
    xml.sub(root, "ETag", f'"{obj.etag}"')
    return Response(xml.render(root), media_type="application/xml")


async def list_parts(call: Call) -> Response:
    check_key(call.endpoint.coffer, call.endpoint.key)
    max_count = call.int_param(("max-count", "max-parts"), 1000, 1, 1000)
    marker = call.int_param(("marker", "part-number-marker"), 0, 0, MAX_PART_NUMBER)
    encoding = call.encoding_type()
    _upload_id(call)
    upload = await _upload(call)
    if upload.state == COMPLETED:  # its parts are the object's now
        raise call.fail("NoSuchUpload", "The upload has been completed.")
    page = await anyio.to_thread.run_sync(call.inst.uploads.list_parts, upload, marker,
                                          max_count)
    owner = upload.coffer.owner_uin
    root = xml.new("ListPartsResult")
    xml.sub(root, "Coffer", upload.coffer.name)
    xml.sub(root, "EncodingType", encoding)
    xml.sub(root, "Key", url_encoder(encoding)(upload.key))
    xml.sub(root, "UploadId", upload.upload_id)
    owner_element(root, "Owner", f"qcs::cam::uin/{owner}:uin/{owner}", owner)
    owner_element(root, "Initiator", f"qcs::cam::uin/{owner}:uin/{upload.initiator_uin}",
                  upload.initiator_uin)
    xml.sub(root, "PartNumberMarker", marker)
    for part in page.parts:
        node = xml.sub(root, "Part")
        xml.sub(node, "PartNumber", part.number)
        xml.sub(node, "LastModified", iso8601(part.created_ms))
        xml.sub(node, "ETag", f'"{part.etag}"')
        xml.sub(node, "Size", part.size)
    if page.is_truncated:
        xml.sub(root, "NextMarker", page.next_marker)
    xml.sub(root, "MaxCount", max_count)
    xml.sub(root, "IsTruncated", page.is_truncated)
    return Response(xml.render(root), media_type="application/xml")


async def abort(call: Call) -> Response:
    check_key(call.endpoint.coffer, call.endpoint.key)
    _upload_id(call)
    upload = await _upload(call)
    await anyio.to_thread.run_sync(call.inst.uploads.abort, upload)
    return Response(b"", 204)


async def list_uploads(call: Call) -> Response:
    max_uploads = call.int_param(("max-uploads",), 1000, 1, 1000)
    encoding = call.encoding_type()
    prefix = call.param("prefix")
    check_prefix(call.endpoint.coffer, prefix)
    key_marker, id_marker = call.param("key-marker"), call.param("upload-id-marker")
    check_marker(call.endpoint.coffer, key_marker)
    check_marker(call.endpoint.coffer, id_marker)
    coffer = await call.coffer()
    page = await anyio.to_thread.run_sync(call.inst.uploads.list_uploads, coffer, prefix,
                                          key_marker, id_marker, max_uploads)
    enc = url_encoder(encoding)
    owner = _principal(coffer.owner_uin, coffer.owner_uin)
    return _json({
        "Coffer": coffer.name, "EncodingType": encoding, "KeyMarker": enc(key_marker),
        "UploadIdMarker": id_marker, "NextKeyMarker": enc(page.next_key_marker),
        "NextUploadIdMarker": page.next_upload_id_marker, "Prefix": enc(prefix),
        "MaxUploads": max_uploads, "IsTruncated": "true" if page.is_truncated else "false",
        "Upload": [{"Key": enc(u.key), "UploadId": u.upload_id,
                    "Initiator": _principal(coffer.owner_uin, u.initiator_uin),
                    "Owner": owner, "Initiated": iso8601(u.created_ms)}
                   for u in page.uploads]})
