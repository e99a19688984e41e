"""Response documents (XML and JSON) and headers, turned into the models."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote
from xml.etree.ElementTree import Element

from defusedxml.ElementTree import fromstring

from datacoffer.client import models


def xml(body: bytes) -> Element:
    return fromstring(body)


def _text(el: Element | None, tag: str, default: str = "") -> str:
    found = el.find(tag) if el is not None else None
    return found.text or default if found is not None and found.text is not None else default


def iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def http_date(value: str) -> datetime:
    return parsedate_to_datetime(value)


def unquote_etag(value: str) -> str:
    return value.strip().strip('"')


def _owner(el: Element | None) -> models.Owner | None:
    if el is None:
        return None
    return models.Owner(_text(el, "ID"), _text(el, "DisplayName"))


def _json_owner(doc: Mapping[str, Any] | None) -> models.Owner | None:
    if not doc:
        return None
    return models.Owner(str(doc.get("ID", "")), str(doc.get("DisplayName", "")))


def _locations(el: Element) -> list[str]:
    return [loc.text or "" for loc in el.iterfind("Locations/Location")]


def service(body: bytes) -> models.ServiceListing:
    root = xml(body)
    owner = _owner(root.find("Owner")) or models.Owner("", "")
    coffers = [models.CofferSummary(_text(c, "Name"), _locations(c), iso(_text(c, "CreationDate")))
               for c in root.iterfind("Coffers/Coffer")]
    return models.ServiceListing(owner, coffers)


def coffer(body: bytes) -> models.CofferListing:
    root = xml(body)
    encoded = _text(root, "EncodingType") == "url"

    def name(value: str) -> str:
        return unquote(value) if encoded else value

    objects = [
        models.ObjectSummary(
            key=name(_text(c, "Key")), size=int(_text(c, "Size", "0")),
            etag=unquote_etag(_text(c, "ETag")), last_modified=iso(_text(c, "LastModified")),
            owner=_owner(c.find("Owner")) or models.Owner("", ""))
        for c in root.iterfind("Contents")
    ]
    return models.CofferListing(
        name=_text(root, "Name"), encrypt_type=int(_text(root, "EncryptType", "0")),
        key_id=_text(root, "KeyId"), key_region=_text(root, "KeyRegion"),
        locations=_locations(root), prefix=name(_text(root, "Prefix")),
        marker=name(_text(root, "Marker")), max_keys=int(_text(root, "MaxKeys", "1000")),
        is_truncated=_text(root, "IsTruncated") == "true",
        next_marker=name(_text(root, "NextMarker")), objects=objects,
        common_prefixes=[name(_text(p, "Prefix")) for p in root.iterfind("CommonPrefixes")],
    )


def content_range(headers: Mapping[str, str]) -> tuple[int, int, int] | None:
    """(first, last, size) of a `Content-Range: bytes first-last/size` header."""
    value = headers.get("content-range")
    if not value or not value.startswith("bytes ") or "*" in value:
        return None
    span, _, size = value[6:].partition("/")
    first, _, last = span.partition("-")
    return int(first), int(last), int(size)


def object_info(headers: Mapping[str, str]) -> models.ObjectInfo:
    expiration = headers.get("x-cdcs-expiration")
    parts = headers.get("x-cdcs-mp-parts-count")
    span = content_range(headers)
    return models.ObjectInfo(
        size=span[2] if span else int(headers.get("content-length", "0")),
        etag=unquote_etag(headers.get("etag", "")),
        content_type=headers.get("content-type", ""),
        last_modified=http_date(headers["last-modified"]),
        encrypt_type=int(headers.get("x-cdcs-encrypt-type", "0")),
        sha256=headers.get("x-cdcs-checksum-sha256", ""),
        expiration=http_date(expiration) if expiration else None,
        parts_count=int(parts) if parts else None,
        part_sha256=headers.get("x-cdcs-part-checksum-sha256"),
        part_size=span[1] - span[0] + 1 if span and parts else None,
    )


def initiated(body: bytes) -> models.Upload:
    doc = json.loads(body)
    return models.Upload(doc["Coffer"], doc["Key"], doc["UploadId"])


def parts(body: bytes) -> models.PartListing:
    root = xml(body)
    found = [models.Part(int(_text(p, "PartNumber")), unquote_etag(_text(p, "ETag")),
                         int(_text(p, "Size", "0")), iso(_text(p, "LastModified")))
             for p in root.iterfind("Part")]
    return models.PartListing(
        coffer=_text(root, "Coffer"), key=_text(root, "Key"), upload_id=_text(root, "UploadId"),
        parts=found, is_truncated=_text(root, "IsTruncated") == "true",
        next_marker=int(_text(root, "NextMarker", "0")),
        initiator=_owner(root.find("Initiator")), owner=_owner(root.find("Owner")))


def uploads(body: bytes) -> models.UploadListing:
    doc = json.loads(body)
    encoded = doc.get("EncodingType") == "url"
    found = [models.Upload(doc.get("Coffer", ""),
                           unquote(u["Key"]) if encoded else u["Key"], u["UploadId"],
                           iso(u["Initiated"]) if u.get("Initiated") else None,
                           _json_owner(u.get("Initiator")), _json_owner(u.get("Owner")))
             for u in doc.get("Upload") or []]
    return models.UploadListing(
        coffer=doc.get("Coffer", ""), uploads=found,
        is_truncated=str(doc.get("IsTruncated", "false")).lower() == "true",
        next_key_marker=unquote(doc.get("NextKeyMarker", "")) if encoded
        else doc.get("NextKeyMarker", ""),
        next_upload_id_marker=doc.get("NextUploadIdMarker", ""))


def completed(body: bytes) -> models.CompleteResult:
    root = xml(body)
    return models.CompleteResult(_text(root, "Coffer"), _text(root, "Key"),
                                 unquote_etag(_text(root, "ETag")), _locations(root))


def error(body: bytes, headers: Mapping[str, str]) -> tuple[str, str, str, str]:
    """(code, message, trace id, resource) of an error answer, XML or JSON (or a HEAD's
    headers only)."""
    code = headers.get("x-cdcs-error-code", "")
    message, trace, resource = "", headers.get("x-cdcs-trace-id", ""), ""
    text = body.strip()
    try:
        if text.startswith(b"{"):
            doc = json.loads(text)
            doc = doc.get("Error", doc)
            code = doc.get("Code", code)
            message, resource = doc.get("Message", ""), doc.get("Resource", "")
            trace = doc.get("TraceId", trace)
        elif text.startswith(b"<"):
            root = xml(text)
            code = _text(root, "Code", code)
            message, resource = _text(root, "Message"), _text(root, "Resource")
            trace = _text(root, "TraceId", trace)
    except ValueError:
        pass
    return code, message, trace, resource
