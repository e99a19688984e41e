"""The condition operators of the policy language: client address and server time.

Each operator is parsed once, when a policy is stored, into a predicate over the request's
`Context`; evaluating it then costs a few comparisons.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from datacoffer.core.clock import parse_utc_ms

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConditionError(ValueError):
    """A condition that cannot be parsed; the text names the fault."""


@dataclass(frozen=True)
class Context:
    """What a condition can look at."""

    ip: Address
    #: the server's clock, in whole seconds since the epoch
    now: int


def client_address(text: str) -> Address:
    """An address as conditions compare it: an IPv4-mapped IPv6 address is its IPv4 one."""
    addr = ipaddress.ip_address(text.strip())
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_network(text: str) -> Network:
    """An address or CIDR block; host bits of a block are ignored (`10.0.0.7/24`). An
    IPv4-mapped IPv6 block is its IPv4 block, as client addresses are (`client_address`)."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConditionError(f"{text!r} is not an IPv4 or IPv6 address or CIDR block") from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def parse_time(text: str) -> int:
    """An ISO 8601 UTC time (`2026-01-31T12:00:00Z`), in whole seconds since the epoch."""
    try:
        return parse_utc_ms(text) // 1000
    except ValueError as exc:
        raise ConditionError(str(exc)) from None


Predicate = Callable[[Context], bool]

_TIME_TESTS: dict[str, Callable[[int, int], bool]] = {
    "date_equal": lambda now, t: now == t,
    "date_greater_than": lambda now, t: now > t,
    "date_greater_than_equal": lambda now, t: now >= t,
    "date_less_than": lambda now, t: now < t,
    "date_less_than_equal": lambda now, t: now <= t,
}

#: operator -> the one condition key it takes
OPERATORS: dict[str, str] = {
    "ip_equal": "qcs:ip", "ip_not_equal": "qcs:ip",
    **{op: "qcs:current_time" for op in (*_TIME_TESTS, "date_not_equal")},
}


def _ip_predicate(values: Sequence[str], negated: bool) -> Predicate:
    networks = tuple(parse_network(v) for v in values)

    def inside(ctx: Context) -> bool:
        return any(ctx.ip.version == n.version and ctx.ip in n for n in networks)

    return (lambda ctx: not inside(ctx)) if negated else inside


def _time_predicate(operator: str, values: Sequence[str]) -> Predicate:
    times = tuple(parse_time(v) for v in values)
    if operator == "date_not_equal":
        return lambda ctx: ctx.now not in times
    test = _TIME_TESTS[operator]
    return lambda ctx: any(test(ctx.now, t) for t in times)


def predicate(operator: str, values: Sequence[str]) -> Predicate:
    """The test of one operator over its values: any value matches (OR), except that the
    negated operators hold when the request matches none of them."""
    if operator.startswith("ip_"):
        return _ip_predicate(values, negated=operator == "ip_not_equal")
    return _time_predicate(operator, values)
