"""Time as the metadata store keeps it: integer milliseconds since the epoch, UTC."""

from __future__ import annotations

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
