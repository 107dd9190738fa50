"""When this server last did foreground work: a mount, a prefetch or an on-demand miss.

One :class:`Activity` per server (``fs.facade.LayerFs``), shared by every layer it serves, as in
stargz-snapshotter.

Background fetch waits until there has been none for ``background_quiet`` seconds (stargz-snapshotter
pauses its background fetcher while any Mount/Check runs and for 5 s after), so the bulk download of
every layer does not compete for the CPUs and the link with the mounts and the container's start.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator


class Activity:
    """Counts foreground work in progress and remembers when the last one ended. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._last = float("-inf")

    def begin(self) -> None:
        with self._lock:
            self._active += 1

    def end(self) -> None:
        with self._lock:
            self._active = max(0, self._active - 1)
            self._last = time.monotonic()

    def touch(self) -> None:
        """Something happened just now (no duration)."""
        with self._lock:
            self._last = time.monotonic()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        finally:
            self.end()

    def quiet_remaining(self, quiet: float) -> float:
        """Seconds until ``quiet`` s will have passed without foreground work (> 0 while some runs)."""
        with self._lock:
            if self._active:
                return max(quiet, 0.05)
            return max(0.0, self._last + quiet - time.monotonic())

    def wait_quiet(self, quiet: float, stop: threading.Event, poll: float = 0.25) -> bool:
        """Block until ``quiet`` s without foreground work; False when ``stop`` was set meanwhile."""
        while True:
            remaining = self.quiet_remaining(quiet)
            if remaining <= 0:
                return not stop.is_set()
            if stop.wait(min(remaining, poll)):
                return False
