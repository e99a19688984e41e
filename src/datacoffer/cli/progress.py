"""Progress bars on standard error: one per file being moved, and the total."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class Bars:
    """Bars shown when `enabled` (by default, when standard error is a terminal). Files that
    finish leave their bar, so that only the ones in flight and the total stay on screen."""

    def __init__(self, enabled: bool | None, total: int, files: int) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress = Progress(
            TextColumn("{task.description}", justify="left"), BarColumn(),
            DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True, force_terminal=self.enabled or None),
            disable=not self.enabled, transient=False)
        self._total = self._progress.add_task(
            f"total ({files} file{'s' if files != 1 else ''})", total=total)

    def __enter__(self) -> Bars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def file(self, name: str, size: int) -> tuple[Callable[[int], None], Callable[[], None]]:
        """(advance, done) for one file; `advance` is safe to call from worker threads."""
        task: TaskID = self._progress.add_task(_short(name), total=size)

        def advance(count: int) -> None:
            self._progress.advance(task, count)
            self._progress.advance(self._total, count)

        def done() -> None:
            self._progress.remove_task(task)

        return advance, done

    def note(self, text: str) -> None:
        """A line above the bars (or on standard error when they are off)."""
        self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]
