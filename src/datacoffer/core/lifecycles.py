"""Coffer lifecycle rules in the metadata store (the rule itself: `core/lifecycle.py`).

One rule per coffer; putting one replaces the previous. The rule is read with its coffer
(`Coffers.get` joins it); writes take the coffer's "lifecycle" record lock.
"""

from __future__ import annotations

from datacoffer.core.clock import now_ms
from datacoffer.core.coffers import Coffer
from datacoffer.core.locks import RecordLocks
from datacoffer.meta.schema import coffer_lifecycles

RECORD = "lifecycle"


class Lifecycles:
    def __init__(self, locks: RecordLocks) -> None:
        self.locks = locks

    def put(self, coffer: Coffer, days: int) -> None:
        """Replace the coffer's rule; AlreadyLock while another lifecycle write runs."""
        held = self.locks.acquire(coffer, RECORD)
        try:
            with self.locks.writing(held) as conn:
                conn.execute(coffer_lifecycles.delete().where(
                    coffer_lifecycles.c.coffer_id == coffer.id))
                conn.execute(coffer_lifecycles.insert().values(
                    coffer_id=coffer.id, days=days, updated_ms=now_ms()))
        finally:
            self.locks.release(held)

