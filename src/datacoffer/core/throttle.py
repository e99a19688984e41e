"""Pacing of background reads, so that replication and scrub leave the disks to requests."""

from __future__ import annotations

import threading
import time


class Throttle:
    """At most `rate` bytes a second on average across all threads that share it (0: no
    limit). Each `take` reserves its bytes' share of time and sleeps until that slot."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, count: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now)
            self._next = start + count / self.rate
        if start > now:
            time.sleep(start - now)
