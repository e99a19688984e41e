"""The q-sign request signature (HMAC-SHA1), for signing and for verifying.

One implementation serves the server (verify) and the client (sign, presign), so both always
agree on the canonical string. The algorithm is fixed by security.md and must interoperate with
cos-python-sdk-v5's CosS3Auth.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

#: Query parameters that a signature never covers: those of a presigned URL and the token.
PRESIGN_PARAMS = (
    "q-sign-algorithm", "q-ak", "q-sign-time", "q-key-time", "q-header-list",
    "q-url-param-list", "q-signature",
)
UNSIGNED_PARAMS = frozenset((*PRESIGN_PARAMS, "x-cdcs-security-token"))


class SignatureError(ValueError):
    """The signature is absent, malformed or wrong; the text says which, for the server log."""


def urlencode(value: str) -> str:
    """UTF-8 percent-encoding that leaves only A-Z a-z 0-9 - _ . ~ as they are."""
    return quote(value.encode("utf-8", "surrogateescape"), safe="-_.~")


@dataclass(frozen=True)
class Signature:
    secret_id: str
    sign_time: str
    key_time: str
    header_list: tuple[str, ...]
    param_list: tuple[str, ...]
    signature: str

    def window(self) -> tuple[int, int]:
        start, end = _parse_window(self.sign_time)
        return start, end


def _parse_window(value: str) -> tuple[int, int]:
    parts = value.split(";")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise SignatureError(f"malformed time window {value!r}")
    return int(parts[0]), int(parts[1])


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(item.lower() for item in value.split(";") if item) if value else ()


def _from_fields(fields: Mapping[str, str]) -> Signature:
    for name in ("q-sign-algorithm", "q-ak", "q-sign-time", "q-key-time", "q-signature"):
        if not fields.get(name):
            raise SignatureError(f"missing {name}")
    if fields["q-sign-algorithm"].lower() != "sha1":
        raise SignatureError("unsupported q-sign-algorithm")
    _parse_window(fields["q-sign-time"])
    _parse_window(fields["q-key-time"])
    return Signature(
        secret_id=fields["q-ak"],
        sign_time=fields["q-sign-time"],
        key_time=fields["q-key-time"],
        header_list=_split_list(fields.get("q-header-list", "")),
        param_list=_split_list(fields.get("q-url-param-list", "")),
        signature=fields["q-signature"].lower(),
    )


def parse_authorization(value: str) -> Signature:
    """Parse an `Authorization: q-sign-algorithm=sha1&q-ak=…` header value."""
    fields: dict[str, str] = {}
    for item in value.strip().split("&"):
        name, sep, val = item.partition("=")
        if not sep:
            raise SignatureError("malformed Authorization header")
        fields[name.strip().lower()] = val.strip()
    return _from_fields(fields)


def parse_presigned(query: Iterable[tuple[str, str]]) -> Signature | None:
    """The signature carried in a presigned URL's query, or None when it carries none."""
    fields = {name.lower(): value for name, value in query if name.lower() in PRESIGN_PARAMS}
    if not fields:
        return None
    return _from_fields(fields)


def _canonical(names: Iterable[str], values: Mapping[str, str]) -> str:
    return "&".join(f"{urlencode(name).lower()}={urlencode(values[name])}" for name in names)


def string_to_sign(
    sign_time: str, method: str, path: str, params: str, headers: str,
) -> str:
    http_string = f"{method.lower()}\n{path}\n{params}\n{headers}\n"
    digest = hashlib.sha1(http_string.encode("utf-8", "surrogateescape")).hexdigest()
    return f"sha1\n{sign_time}\n{digest}\n"


def compute(secret_key: str, key_time: str, to_sign: str) -> str:
    sign_key = hmac.new(secret_key.encode(), key_time.encode(), hashlib.sha1).hexdigest()
    return hmac.new(sign_key.encode(), to_sign.encode(), hashlib.sha1).hexdigest()


def canonical_parts(
    sig: Signature, query: Iterable[tuple[str, str]], headers: Mapping[str, str],
) -> tuple[str, str]:
    """The HttpParameters and HttpHeaders strings of a request, as the signature lists them.

    `headers` maps lower-case names to values. Raises SignatureError when a listed parameter or
    header is missing, or when a query parameter is not covered by the signature.
    """
    params: dict[str, str] = {}
    for name, value in query:
        lname = name.lower()
        if lname in UNSIGNED_PARAMS and lname not in sig.param_list:
            continue  # (never needs signing, but a client may sign the token)
        if lname not in sig.param_list:
            raise SignatureError(f"query parameter {lname!r} is not signed")
        params.setdefault(lname, value)
    for name in sig.param_list:
        if name not in params:
            raise SignatureError(f"signed parameter {name!r} is missing")
    for name in sig.header_list:
        if name not in headers:
            raise SignatureError(f"signed header {name!r} is missing")
    return _canonical(sig.param_list, params), _canonical(sig.header_list, headers)


def verify(
    sig: Signature, secret_key: str, method: str, path: str,
    query: Iterable[tuple[str, str]], headers: Mapping[str, str],
    *, now: float, skew: int,
) -> None:
    """Raise SignatureError unless the signature is valid for this request at `now`.

    `path` is the percent-decoded request path. A signed `host` may carry the port or not:
    clients such as CosS3Auth sign the host name alone while sending `Host: name:port`.
    """
    start, end = sig.window()
    if not (start - skew <= now <= end + skew):
        raise SignatureError("signature outside its time window")
    query = list(query)
    params, header_string = canonical_parts(sig, query, headers)
    candidates = [header_string]
    host = headers.get("host", "")
    if "host" in sig.header_list and ":" in host and not host.endswith("]"):
        bare = dict(headers)
        bare["host"] = host.rsplit(":", 1)[0]
        candidates.append(_canonical(sig.header_list, bare))
    ok = False
    for candidate in candidates:
        expected = compute(secret_key, sig.key_time,
                           string_to_sign(sig.sign_time, method, path, params, candidate))
        ok |= hmac.compare_digest(expected, sig.signature)
    if not ok:
        raise SignatureError("signature mismatch")


def sign(
    secret_id: str, secret_key: str, method: str, path: str,
    params: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
    *, expires: int = 900, now: float | None = None,
) -> dict[str, str]:
    """The q-sign fields for a request: put them in `Authorization` or in the query.

    `path` is the decoded path; `params` are the query parameters to sign (all of them);
    `headers` the headers to sign (at least `host`).
    """
    start = int(time.time() if now is None else now)
    window = f"{start};{start + expires}"
    lparams = {k.lower(): v for k, v in (params or {}).items()}
    lheaders = {k.lower(): v for k, v in (headers or {}).items()}
    pnames, hnames = sorted(lparams), sorted(lheaders)
    to_sign = string_to_sign(window, method, path, _canonical(pnames, lparams),
                             _canonical(hnames, lheaders))
    return {
        "q-sign-algorithm": "sha1",
        "q-ak": secret_id,
        "q-sign-time": window,
        "q-key-time": window,
        "q-header-list": ";".join(urlencode(n).lower() for n in hnames),
        "q-url-param-list": ";".join(urlencode(n).lower() for n in pnames),
        "q-signature": compute(secret_key, window, to_sign),
    }


def authorization_header(fields: Mapping[str, str]) -> str:
    return "&".join(f"{name}={fields[name]}" for name in PRESIGN_PARAMS)
