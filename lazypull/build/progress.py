"""Build progress as BuildKit's plain output: ``#N [stage k/n] INSTRUCTION``, output lines, DONE/CACHED."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Numbered vertices as BuildKit prints them; ``quiet`` prints nothing."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.number = 0
        self.started = 0.0

    def _write(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text + "\n")
            self.stream.flush()

    def start(self, title: str) -> int:
        """A new vertex; returns its number."""
        self.number += 1
        self.started = time.monotonic()
        self._write(f"#{self.number} {title}")
        return self.number

    def output(self, line: str) -> None:
        """One line the step printed, with the seconds since it started."""
        self._write(f"#{self.number} {time.monotonic() - self.started:.3f} {line}")

    def done(self) -> None:
        self._write(f"#{self.number} DONE {time.monotonic() - self.started:.1f}s")

    def cached(self) -> None:
        self._write(f"#{self.number} CACHED")

    def error(self, message: str) -> None:
        self._write(f"#{self.number} ERROR: {message}")
