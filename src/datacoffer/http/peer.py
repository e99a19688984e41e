"""The client's address, as policy conditions see it (security.md, `ip_equal`).

It is the TCP peer's address, or the first `X-Forwarded-For` hop when the peer is one of the
operator's trusted proxies (none unless configured): anybody else could write that header.
"""

from __future__ import annotations

import functools
import ipaddress

from starlette.requests import Request

from datacoffer.core.conditions import Address, Network, client_address, parse_network
from datacoffer.errors import CdcsError

#: a peer the server cannot name (not a TCP connection); no address condition names it
UNKNOWN = ipaddress.IPv6Address("::")


@functools.lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(parse_network(p) for p in proxies)


def _hop(text: str) -> str:
    """An X-Forwarded-For hop without a port: `203.0.113.9:4711`, `[2001:db8::1]:80`."""
    if text.startswith("[") and "]" in text:
        return text[1:text.index("]")]
    host, sep, port = text.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else text


def address(request: Request, proxies: tuple[str, ...], resource: str) -> Address:
    client = request.scope.get("client")
    try:
        peer = client_address(client[0]) if client else UNKNOWN
    except ValueError:
        peer = UNKNOWN
    forwarded = request.headers.get("x-forwarded-for")
    if not forwarded or not within(peer, proxies):
        return peer
    first = forwarded.split(",")[0].strip()
    try:
        return client_address(_hop(first))
    except ValueError:
        raise CdcsError("InvalidArgument", "The X-Forwarded-For header added by the proxy does "
                        "not start with a client address.", resource=resource,
                        detail=f"X-Forwarded-For first hop {first[:80]!r}") from None


def within(addr: Address, networks: tuple[str, ...]) -> bool:
    """Whether the address is in one of the networks (addresses or CIDR blocks)."""
    return any(addr.version == n.version and addr in n for n in _networks(networks))
