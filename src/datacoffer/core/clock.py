"""Time as the metadata store keeps it: integer milliseconds since the epoch, UTC."""

from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime
from email.utils import format_datetime


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso8601(ms: int) -> str:
    """`2019-05-27T11:26:14.000Z`, as the response bodies show times."""
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def rfc1123(ms: int) -> str:
    """`Mon, 27 May 2019 11:26:14 GMT`, as the headers show times."""
    return format_datetime(datetime.fromtimestamp(ms // 1000, UTC), usegmt=True)


def parse_utc_ms(text: str) -> int:
    """An ISO 8601 UTC time (`2026-01-31T12:00:00.250Z`) in milliseconds since the epoch;
    ValueError names what is wrong: no time, no zone, or a zone other than UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        moment = None
    offset = moment.utcoffset() if moment is not None else None
    if moment is None or "T" not in text.upper() or offset is None:
        raise ValueError(f"{text!r} is not an ISO 8601 UTC time such as 2026-01-31T12:00:00Z")
    if offset.total_seconds() != 0:
        raise ValueError(f"{text!r} is not in UTC: end it with Z")
    whole = calendar.timegm(moment.utctimetuple())  # (exact: no float rounding)
    return whole * 1000 + moment.microsecond // 1000
