"""The naming rules of coffers, object keys and prefixes (api.md)."""

from __future__ import annotations

import re

from datacoffer.errors import CdcsError

_COFFER_RE = re.compile(r"^([a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?)-([0-9]+)$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
#: Noncharacters that XML 1.0 cannot carry, so a listing could not show such a key.
_NONCHAR_RE = re.compile("[\ufffe\uffff]")
MAX_KEY_BYTES = 850


def split_coffer_name(name: str) -> tuple[str, str]:
    """Return (name part, AppID) of a full coffer name, or raise InvalidCofferName."""
    m = _COFFER_RE.match(name)
    if not m or len(m.group(1)) < 2:
        raise CdcsError(
            "InvalidCofferName",
            "A coffer name is <name>-<AppID>: the name part is 2-50 characters of a-z, 0-9 "
            "and '-', starting and ending with a letter or digit.",
            resource=name,
        )
    return m.group(1), m.group(2)


def key_fault(key: str, *, prefix: bool = False) -> str | None:
    """Say what is wrong with an object key, or None when it follows the rule.

    A prefix may stop inside a segment, so its last segment may read "." or ".." (the start of
    ".hidden" or "..x").
    """
    if not key:
        return "An object key cannot be empty."
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"An object key is at most {MAX_KEY_BYTES} bytes of UTF-8."
    if _CONTROL_RE.search(key):
        return "An object key cannot contain control characters."
    if any(0xD800 <= ord(c) <= 0xDFFF for c in key):
        return "An object key must be valid UTF-8."
    if _NONCHAR_RE.search(key):
        return "An object key cannot contain the noncharacters U+FFFE or U+FFFF."
    if key.startswith("/"):
        return "An object key cannot start with '/'."
    segments = key.split("/")
    if prefix:
        segments = segments[:-1]
    if any(segment in (".", "..") for segment in segments):
        return "An object key cannot contain a '.' or '..' path segment."
    return None


def check_key(coffer: str, key: str) -> None:
    fault = key_fault(key)
    if fault:
        raise CdcsError("InvalidObjectKey", fault, resource=f"{coffer}/{key}")


def check_prefix(coffer: str, prefix: str) -> None:
    """A prefix follows the key rule, except that it may be empty or end inside a segment."""
    if not prefix:
        return
    fault = key_fault(prefix, prefix=True)
    if fault:
        raise CdcsError("InvalidObjectPrefix", fault.replace("An object key", "A prefix"),
                        resource=coffer)


def check_marker(coffer: str, marker: str) -> None:
    """A listing marker is echoed in the listing, so it must be text a key could hold."""
    if marker and (_CONTROL_RE.search(marker) or _NONCHAR_RE.search(marker)
                   or any(0xD800 <= ord(c) <= 0xDFFF for c in marker)):
        raise CdcsError("InvalidArgument",
                        "marker must be valid UTF-8 without control characters.",
                        resource=coffer)
