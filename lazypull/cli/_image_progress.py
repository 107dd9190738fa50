"""Progress of pulls, pushes and conversions: rich bars per item on a terminal, nothing otherwise."""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from lazypull.image.progress import NullProgress

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

# rich (~40 ms to import) is loaded only when bars are shown, i.e. on a terminal: `create` and `pull`
# run from scripts and benchmarks print nothing and should not pay for it.


class RichProgress:
    """Implements ``lazypull.image.Progress`` with one bar per layer (bytes, rate) on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )
        from rich.table import Column

        console = console or Console(stderr=True)
        # the name gets what the other columns (up to 85 cells, 60 with a short bar) leave, cut with
        # an ellipsis, so status, bar and sizes stay whole and on one line on an 80-column terminal
        wide = console.width >= 130
        room = console.width - (85 if wide else 60)
        name = Column(no_wrap=True, overflow="ellipsis", max_width=max(16, room))
        self._progress = Progress(
            TextColumn("{task.description}", table_column=name),
            TextColumn("{task.fields[status]:<8}"),
            BarColumn(bar_width=30 if wide else 10),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def start(self, key: str, label: str, total: int | None) -> None:
        with self._lock:
            if key not in self._tasks:
                self._tasks[key] = self._progress.add_task(label, total=total, status="waiting")
            else:
                self._progress.update(self._tasks[key], total=total)
            self._progress.update(self._tasks[key], status="working")

    def advance(self, key: str, nbytes: int) -> None:
        with self._lock:
            task = self._tasks.get(key)
        if task is not None:
            self._progress.advance(task, nbytes)

    def finish(self, key: str, status: str = "done") -> None:
        with self._lock:
            task = self._tasks.get(key)
        if task is not None:
            total = next((t.total for t in self._progress.tasks if t.id == task), None)
            self._progress.update(task, status=status, completed=total or 0)

    def message(self, text: str) -> None:
        self._progress.console.print(text)


class QuietProgress(NullProgress):
    """No output (stderr is not a terminal: keep output parseable); a context manager like RichProgress."""

    def __enter__(self) -> QuietProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def make_progress(*, quiet: bool = False) -> RichProgress | QuietProgress:
    """Bars when stderr is a terminal, silence otherwise (or when ``quiet``: the commands' ``-q``)."""
    return RichProgress() if not quiet and sys.stderr.isatty() else QuietProgress()
