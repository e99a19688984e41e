"""The error document, in XML by default and in JSON when the client prefers it."""

from __future__ import annotations

import json
import re

from starlette.responses import Response

from datacoffer.errors import CdcsError
from datacoffer.http import xml


def _quality(accept: str) -> dict[str, float]:
    prefs: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media:
            prefs[media.lower()] = max(q, prefs.get(media.lower(), 0.0))
    return prefs


def prefers_json(accept: str) -> bool:
    """JSON only when `application/json` is named and ranked at least as high as XML."""
    prefs = _quality(accept)
    json_q = prefs.get("application/json", 0.0)
    xml_q = max(prefs.get("application/xml", 0.0), prefs.get("text/xml", 0.0))
    return json_q > 0 and json_q >= xml_q


#: What neither XML 1.0 nor UTF-8 can carry: control characters, U+FFFE/U+FFFF, and the lone
#: surrogates that stand for the undecodable bytes of a request path.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def _escape(match: re.Match[str]) -> str:
    try:
        raw = match.group().encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = match.group().encode("utf-8", "surrogatepass")
    return "".join(f"%{byte:02X}" for byte in raw)


def printable(text: str) -> str:
    """`text` fit for an error document: a refused key may hold bytes that a well-formed XML
    or UTF-8 body cannot, so those are shown percent-encoded (`bad%01key`, `x%FFy`)."""
    return _UNPRINTABLE.sub(_escape, text)


def error_response(err: CdcsError, *, request_id: str, trace_id: str, accept: str,
                   head: bool) -> Response:
    fields = {"Code": err.code.name, "Message": printable(err.message),
              "Resource": printable(err.resource or ""),
              "RequestId": request_id, "TraceId": trace_id}
    headers = {**err.headers, "x-cdcs-trace-id": trace_id, "x-cdcs-error-code": err.code.name}
    if head:
        return Response(b"", err.status, headers)
    if prefers_json(accept):
        body = json.dumps(fields, ensure_ascii=False).encode()
        return Response(body, err.status, headers, media_type="application/json")
    root = xml.new("Error")
    for name, value in fields.items():
        xml.sub(root, name, value)
    return Response(xml.render(root), err.status, headers, media_type="application/xml")
