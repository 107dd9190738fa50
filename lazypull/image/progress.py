"""How long operations report progress: a tiny protocol; the CLI renders it with rich on a TTY."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Per-item byte progress (an item is a layer, a config, a manifest), thread-safe."""

    def start(self, key: str, label: str, total: int | None) -> None:
        """An item begins; ``total`` bytes if known."""
        ...

    def advance(self, key: str, nbytes: int) -> None:
        """``nbytes`` more of the item are done."""
        ...

    def finish(self, key: str, status: str = "done") -> None:
        """The item is complete (status: done, exists, skipped, failed)."""
        ...

    def message(self, text: str) -> None:
        """A line worth showing (e.g. the platform picked)."""
        ...


class NullProgress:
    """Reports nothing (libraries are quiet by default)."""

    def start(self, key: str, label: str, total: int | None) -> None:
        pass

    def advance(self, key: str, nbytes: int) -> None:
        pass

    def finish(self, key: str, status: str = "done") -> None:
        pass

    def message(self, text: str) -> None:
        pass


NULL_PROGRESS = NullProgress()
