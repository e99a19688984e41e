"""A lifecycle rule (api.md 8-9): a coffer's objects expire `Days` after their upload.

Parsing and showing the rule need nothing of the server, so the command-line client checks
`--days` with the same bounds.
"""

from __future__ import annotations

import json
from typing import Any

MIN_DAYS, MAX_DAYS = 1, 3650
DAY_MS = 86_400_000


def expires_ms(created_ms: int, days: int | None) -> int | None:
    """When an object uploaded at `created_ms` expires under a rule of `days` (None: never).
    From that moment it is not served or listed; the sweeper then removes it."""
    return None if days is None else created_ms + days * DAY_MS


def document(days: int) -> str:
    """The rule as GetCofferLifecycle shows it (api.md's shape, byte for byte)."""
    return json.dumps({"Rule": [{"Expiration": {"Days": days}}]})


def _only(value: Any, name: str, where: str) -> Any:
    """The one element `name` of a JSON object, or why not."""
    if not isinstance(value, dict) or name not in value:
        raise ValueError(f"{where} must be an object with {name}")
    others = sorted(set(value) - {name})
    if others:
        raise ValueError(f"{where} has an unknown element {others[0]!r}")
    return value[name]


def parse_days(raw: bytes) -> int:
    """The Days of a PutCofferLifecycle body; ValueError says what is wrong."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ValueError("the body is not a JSON document") from None
    rules = _only(doc, "Rule", "the document")
    if not isinstance(rules, list) or len(rules) != 1:
        raise ValueError("Rule must be a list of exactly one rule")
    days = _only(_only(rules[0], "Expiration", "the rule"), "Days", "Expiration")
    if not isinstance(days, int) or isinstance(days, bool) or not MIN_DAYS <= days <= MAX_DAYS:
        raise ValueError(f"Days must be a whole number from {MIN_DAYS} to {MAX_DAYS}")
    return days
