"""How long operations report progress: a tiny protocol; the CLI renders it with rich on a TTY."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, BinaryIO, Protocol, cast


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


class _CountingReader:
    """Passes reads through to a binary file and reports how many bytes each returned."""

    def __init__(self, inner: BinaryIO, advance: Callable[[int], None]) -> None:
        self._inner = inner
        self._advance = advance

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        if data:
            self._advance(len(data))
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()


def counting_reader(inner: BinaryIO, progress: Progress, key: str) -> BinaryIO:
    """``inner``, with every byte read reported as ``progress.advance(key, n)`` (closing closes ``inner``)."""
    return cast(BinaryIO, _CountingReader(inner, lambda n: progress.advance(key, n)))
