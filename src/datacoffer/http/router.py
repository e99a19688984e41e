"""Turn every request into one `Endpoint`: the operation, its coffer, key and region.

All routing happens here, in one place; handlers never look at the method or path again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote_to_bytes

from datacoffer.errors import CdcsError

#: Operations whose policy action name differs from the operation name.
_ACTIONS = {"HeadObject": "CheckObject"}
COFFER_LEVEL_SUBRESOURCES = ("policy", "lifecycle", "uploads")
_REGION_HOST = re.compile(r"^cdcs\.([a-z0-9-]+)\.", re.IGNORECASE)


@dataclass(frozen=True)
class Endpoint:
    operation: str
    coffer: str = ""
    key: str = ""
    #: the region named by a `Host: cdcs.<Region>.…` header, if any
    region: str | None = None
    #: query parameters with lower-case names (first value wins)
    params: dict[str, str] = field(default_factory=dict)

    @property
    def action(self) -> str:
        """The policy action name (`CheckObject` for HeadObject)."""
        return _ACTIONS.get(self.operation, self.operation)

    @property
    def resource(self) -> str:
        return f"{self.coffer}/{self.key}" if self.key else self.coffer

    @property
    def object_level(self) -> bool:
        return bool(self.key) or self.operation == "ListMultipartUploads"


def parse_query(query_string: bytes) -> list[tuple[str, str]]:
    return parse_qsl(query_string.decode("latin-1"), keep_blank_values=True,
                     encoding="utf-8", errors="surrogateescape")


def decode_path(raw_path: bytes) -> str:
    """The percent-decoded path; bytes that are not UTF-8 become lone surrogates, which the
    key rule refuses."""
    return unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape")


def addressed_region(host: str) -> str | None:
    m = _REGION_HOST.match(host)
    return m.group(1).lower() if m else None


def _coffer_operation(method: str, params: dict[str, str]) -> str | None:
    sub = next((s for s in COFFER_LEVEL_SUBRESOURCES if s in params), None)
    table = {
        ("GET", None): "GetCoffer", ("PUT", None): "PutCoffer", ("DELETE", None): "DeleteCoffer",
        ("GET", "policy"): "GetCofferPolicy", ("PUT", "policy"): "PutCofferPolicy",
        ("DELETE", "policy"): "DeleteCofferPolicy",
        ("GET", "lifecycle"): "GetCofferLifecycle", ("PUT", "lifecycle"): "PutCofferLifecycle",
        ("GET", "uploads"): "ListMultipartUploads",
    }
    return table.get((method, sub))


def _object_operation(method: str, params: dict[str, str]) -> str | None:
    upload = "uploadid" in params
    if method == "PUT":
        # a part sent without its uploadId is a bad UploadPart, never an immutable object
        return "UploadPart" if upload or "partnumber" in params else "PutObject"
    if method == "GET":
        return "ListParts" if upload else "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "POST":
        if upload:
            return "CompleteMultipartUpload"
        return "InitiateMultipartUpload" if "uploads" in params else None
    if method == "DELETE":
        return "AbortMultipartUpload" if upload else None
    return None


def route(method: str, path: str, query: list[tuple[str, str]], host: str) -> Endpoint:
    """The endpoint of a request, or MethodNotAllowed."""
    params: dict[str, str] = {}
    for name, value in query:
        params.setdefault(name.lower(), value)
    coffer, _, key = path.lstrip("/").partition("/")
    if path == "/metrics" and method == "GET":  # (no coffer is named "metrics": no AppID)
        return Endpoint("GetMetrics")
    region = addressed_region(host)
    if not coffer:
        operation = "GetService" if method == "GET" else None
    elif key:
        operation = _object_operation(method, params)
    else:
        operation = _coffer_operation(method, params)
    if operation is None:
        resource = f"{coffer}/{key}" if key else coffer
        raise CdcsError("MethodNotAllowed",
                        f"{method} is not defined for this resource"
                        + (": objects are never deleted by a request." if
                           method == "DELETE" and key else "."),
                        resource=resource)
    return Endpoint(operation, coffer, key, region, params)
