"""PutCoffer, GetCoffer (describe and list) and DeleteCoffer."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from urllib.parse import quote

import anyio
from starlette.responses import Response

from datacoffer.core import access
from datacoffer.core.clock import iso8601
from datacoffer.core.coffers import CofferSpec
from datacoffer.http import xml
from datacoffer.http.body import read_limited
from datacoffer.http.call import Call
from datacoffer.http.service import locations_element
from datacoffer.names import check_marker, check_prefix, split_coffer_name

MAX_COFFER_BODY = 64 * 1024


def _parse_spec(call: Call, body: bytes) -> CofferSpec:
    def bad(message: str) -> Exception:
        return call.fail("InvalidArgument", message)

    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # (not UTF-8, not JSON, too deep, too long a number)
        raise bad("The PutCoffer body must be a JSON document.") from None
    if not isinstance(doc, dict):
        raise bad("The PutCoffer body must be a JSON object.")
    locations = doc.get("Locations")
    regions = locations.get("Location") if isinstance(locations, dict) else None
    if isinstance(regions, str):
        regions = [regions]
    if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
        raise bad('Locations is required: {"Locations": {"Location": ["<region>", ...]}}.')
    encrypt_type = doc.get("EncryptType", 0)
    if isinstance(encrypt_type, str) and encrypt_type.isdigit():
        encrypt_type = int(encrypt_type)
    if not isinstance(encrypt_type, int) or isinstance(encrypt_type, bool):
        raise bad("EncryptType must be 0, 1 or 2.")
    key_id, key_region = doc.get("KeyId") or "", doc.get("KeyRegion") or ""
    if not isinstance(key_id, str) or not isinstance(key_region, str):
        raise bad("KeyId and KeyRegion must be strings.")
    return CofferSpec(tuple(regions), encrypt_type, key_id, key_region)


async def put_coffer(call: Call) -> Response:
    name = call.endpoint.coffer
    split_coffer_name(name)
    spec = _parse_spec(call, await read_limited(call, MAX_COFFER_BODY))
    call.inst.coffers.check_spec(name, spec)
    access.require_create(call.identity, name, spec.locations[0], call.context())
    check_key = None if spec.encrypt_type != 2 else functools.partial(
        call.inst.keyring.check_customer_key, call.identity.app_id, spec.key_id,
        spec.key_region, name)
    coffer = await anyio.to_thread.run_sync(call.inst.coffers.create, call.identity, name, spec,
                                            check_key)
    call.region = coffer.primary
    return Response(b"")


def url_encoder(encoding: str) -> Callable[[str], str]:
    """How names are shown: percent-encoded with encoding-type=url, else as they are."""
    if encoding == "url":
        return lambda s: quote(s.encode("utf-8"), safe="-_.~/")
    return lambda s: s


async def get_coffer(call: Call) -> Response:
    max_keys = call.int_param(("max-keys", "max-count"), 1000, 1, 1000)
    encoding = call.encoding_type()
    prefix, delimiter, marker = call.param("prefix"), call.param("delimiter"), call.param("marker")
    check_prefix(call.endpoint.coffer, prefix)
    check_marker(call.endpoint.coffer, marker)
    coffer = await call.coffer()
    listing = await anyio.to_thread.run_sync(
        call.inst.coffers.list_objects, coffer, prefix, delimiter, marker, max_keys)
    enc = url_encoder(encoding)
    root = xml.new("ListCofferResult")
    xml.sub(root, "Name", coffer.name)
    xml.sub(root, "EncryptType", coffer.encrypt_type)
    if coffer.encrypt_type == 2:
        xml.sub(root, "KeyId", coffer.key_id)
        xml.sub(root, "KeyRegion", coffer.key_region)
    locations_element(root, coffer.locations)
    if encoding:
        xml.sub(root, "EncodingType", encoding)
    xml.sub(root, "Prefix", enc(prefix))
    xml.sub(root, "Marker", enc(marker))
    xml.sub(root, "MaxKeys", max_keys)
    xml.sub(root, "MaxCount", max_keys)
    xml.sub(root, "IsTruncated", listing.is_truncated)
    if listing.is_truncated:
        xml.sub(root, "NextMarker", enc(listing.next_marker))
    for obj in listing.contents:
        node = xml.sub(root, "Contents")
        xml.sub(node, "Key", enc(obj.key))
        xml.sub(node, "LastModified", iso8601(obj.created_ms))
        xml.sub(node, "ETag", f'"{obj.etag}"')
        xml.sub(node, "Size", obj.size)
        owner = xml.sub(node, "Owner")
        xml.sub(owner, "ID", coffer.app_id)
        xml.sub(owner, "DisplayName", coffer.app_id)
    for common in listing.common_prefixes:
        xml.sub(xml.sub(root, "CommonPrefixes"), "Prefix", enc(common))
    return Response(xml.render(root), media_type="application/xml")


async def delete_coffer(call: Call) -> Response:
    coffer = await call.coffer()
    # An upload whose writer died must not keep the coffer locked until the next restart.
    await anyio.to_thread.run_sync(call.inst.objects.reclaim_lapsed, coffer)
    await anyio.to_thread.run_sync(call.inst.coffers.delete, coffer)
    return Response(b"", 204)
