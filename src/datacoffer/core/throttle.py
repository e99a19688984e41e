"""Pacing of background reads, so that replication and scrub leave the disks to requests."""

from __future__ import annotations

import threading
import time


class Stopped(Exception):
    """The server is stopping: a background pass gives up where it is."""


class Throttle:
    """At most `rate` bytes a second on average across all threads that share it (0: no
    limit). Each `take` reserves its bytes' share of time and sleeps until that slot. Once
    `stop` is set, every `take` (also a sleeping one) raises Stopped, so that a pass in the
    middle of a large object ends within a chunk."""

    def __init__(self, rate: int, stop: threading.Event | None = None) -> None:
        self.rate = rate
        self.stop = stop or threading.Event()
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, count: int) -> None:
        if self.stop.is_set():
            raise Stopped
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now)
            self._next = start + count / self.rate
        if start > now and self.stop.wait(start - now):
            raise Stopped
