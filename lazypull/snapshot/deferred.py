"""``DeferredSource``: a layer's registry blob whose registry client is made at its first read.

A layer whose footer and TOC are recorded on disk (``fs.layer.toc``) and whose registry is a known
origin mounts without a request; building the registry client for it anyway (httpx, TLS set-up:
~50 ms of CPU) was a third of a fresh server's time to its first mount (issue 14). What the mount asks
of a source before any read (its size, its registry and repository for the origin check and the
image group, a description for the log) needs no client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lazypull.registry import Reference, RegistryBlobSource


class DeferredSource:
    """A ``RangeSource`` (and ``WarmableSource``) over ``make()``'s source, made on the first read.

    ``warm`` before that makes nothing: it is remembered and done right after the source is made,
    beside the read that needed it (a layer whose chunks are all cached never connects)."""

    def __init__(self, make: Callable[[], RegistryBlobSource], ref: Reference, digest: str,
                 size: int) -> None:
        self.ref, self.digest, self._size = ref, digest, size
        self._make = make
        self._source: RegistryBlobSource | None = None
        self._warm: tuple[int, float, float | None] | None = None
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    @property
    def made(self) -> bool:
        """Whether the registry client's source was made (a read needed it)."""
        return self._source is not None

    def describe(self) -> str:
        return f"{self.ref}@{self.digest}"

    def read_ranges(self, ranges: Sequence[tuple[int, int]], deadline: float | None = None) -> list[bytes]:
        return self._made().read_ranges(ranges, deadline)

    def warm(self, connections: int, *, interval: float, if_idle: float | None = None) -> bool:
        with self._lock:
            source = self._source
            if source is None:
                self._warm = (connections, interval, if_idle)
                return False
        return source.warm(connections, interval=interval, if_idle=if_idle)

    def _made(self) -> RegistryBlobSource:
        with self._lock:
            if self._source is None:
                self._source = self._make()
                warm, self._warm = self._warm, None
            else:
                warm = None
            source = self._source
        if warm is not None:
            connections, interval, if_idle = warm
            source.warm(connections, interval=interval, if_idle=if_idle)
        return source

    def __repr__(self) -> str:
        return f"DeferredSource({self.describe()}, size={self._size}, made={self.made})"


__all__ = ["DeferredSource"]
