"""The background workers of a serving process: lifecycle sweeper, replication and scrub.

Each runs a pass, then waits its interval (counted from the pass's end) and runs the next; a
failed pass is logged and the next one tries again. A pass runs in a thread of its own (a
scrub pass can take hours). When the server stops, a pass ends within a chunk of what it is
reading (core/throttle.Stopped): it leaves at most a temporary file that the next start
removes, and the copies it did not make stay owed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import anyio

from datacoffer.core.clock import now_ms
from datacoffer.core.throttle import Stopped
from datacoffer.installation import Installation

log = logging.getLogger("datacoffer.workers")

#: seconds a stopping server waits for running passes to notice
STOP_GRACE = 5.0


class Workers:
    def __init__(self, inst: Installation) -> None:
        self.inst = inst
        self.stopping = inst.stopping
        self._woken = asyncio.Event()  # ends the waits between passes
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        settings = self.inst.settings
        for name, one_pass, interval in (
                ("lifecycle", self._sweep, settings.lifecycle_interval),
                ("replication", self._replicate, settings.replication_interval),
                ("scrub", self._scrub, settings.scrub_interval)):
            self._tasks.append(asyncio.create_task(self._forever(name, one_pass, interval)))

    async def stop(self) -> None:
        self.stopping.set()
        self._woken.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_GRACE)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _forever(self, name: str, one_pass: Callable[[], None], interval: int) -> None:
        limiter = anyio.CapacityLimiter(1)  # (a long pass holds none of the requests' threads)
        while not self.stopping.is_set():
            try:
                await anyio.to_thread.run_sync(one_pass, limiter=limiter,
                                               abandon_on_cancel=True)
            except Stopped:
                return
            except Exception:
                log.exception("%s pass failed; the next one retries", name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), interval)

    def _sweep(self) -> None:
        expired = self.inst.expiry.sweep(now_ms())
        if expired:
            log.info("lifecycle pass: %d objects expired", len(expired))

    def _replicate(self) -> None:
        done = self.inst.replication.run()
        if done.copied or done.failed:
            log.info("replication pass: %d copies made, %d failed", len(done.copied),
                     len(done.failed))

    def _scrub(self) -> None:
        done = self.inst.scrubber.run(exclusive=True)
        if not done.ran:
            log.info("scrub pass left to another process of this installation")
            return
        log.info("scrub pass: %d objects, %d copies, %d bytes checked, %d damaged copies "
                 "found (%d repaired)", done.objects, done.copies, done.bytes,
                 len(done.findings), sum(f.repaired for f in done.findings))
