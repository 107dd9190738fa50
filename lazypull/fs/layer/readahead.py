"""Blob-order read-ahead: on a demand miss of a small file, the small files stored after it in the blob.

A layer's tar keeps a directory's files together, in the order its build wrote them, and a starting
program reads many of them one after the other (the headers one ``#include`` pulls in, a package's
modules, a server's catalog files), each a round trip of its own when nothing is known about the image
(no prioritized files, no learned record). So once a workload shows it is walking through a region of
the blob (a miss of a small file within ``WALK_GAP`` bytes of one of the last ``RECENT`` such misses),
the miss also asks for the small files that follow it within ``FsConfig.blob_readahead`` compressed bytes:
in a request of their own beside the miss, never waited for by the read that missed (the read's own
answer is not delayed by bytes it did not ask for); a later read of one of them finds it cached or
waits only for that request. A lone miss (a locale file, a time zone, a program's one data file) reads
nothing ahead: guessing there costs transfer and decoding (measured: python's start, seven misses in
seven places, was slower with a read-ahead at every miss) and finds nothing; neither do two files of one
package read one after the other far apart (python's ``encodings/__init__`` and ``utf_8``, 273 kB).

Bounded: the window is ``budget`` compressed bytes after the miss (only small files wholly inside it,
each at most ``small`` compressed bytes; a big file in the window is skipped, it is read on its own
terms), at most ``MAX_FILES`` files are looked at per miss, and the chunks taken hold at most
``1/CACHE_SHARE`` of the chunk cache's bound (uncompressed), so a read-ahead never evicts what a
workload just read. Only chunks of the layer's own verified TOC are named; nothing is trusted from
the image beyond that.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from lazypull.format import Chunk
from lazypull.fs.fuse.tree import FuseError

MAX_FILES = 256
"""Files looked at per miss: bounds the CPU one miss spends on a window of tiny files."""
CACHE_SHARE = 16
"""A read-ahead takes at most this fraction (1/16) of the chunk cache's bound."""
RECENT = 8
"""Small-file misses remembered, to tell a walk through a region from a lone miss."""
WALK_GAP = 64 << 10
"""Two small-file misses this close in the blob make a walk. gcc's first two header misses
(``stdc-predef.h``, ``stdio.h``) are 11 kB apart; a window ramped from this size on every walk miss
left 9 of its 12 serial header misses (the headers are read in ``#include`` order, back and forth
through 0.5 MB), the whole budget at once 6."""

#: ``(offsets, inodes)``: the layer's regular files sorted by the blob offset of their data
Table = tuple[list[int], list[int]]
#: an inode's chunks in file order and their compressed bytes (None: no content)
Files = Callable[[int], tuple[Sequence[Chunk], int] | None]


class BlobReadAhead:
    """The read-ahead policy of one layer: its settings and the last few misses; thread-safe."""

    def __init__(self, budget: int, *, small: int, cache_bound: int = 0) -> None:
        """``budget``: compressed bytes of blob after a miss (0: off); ``small``: the largest file (in
        compressed bytes) that is fetched ahead; ``cache_bound``: the chunk cache's bound (0: unknown)."""
        self.budget = max(0, budget)
        self.small = small
        self.max_plain = cache_bound // CACHE_SHARE if cache_bound > 0 else None
        self._recent: deque[int] = deque(maxlen=RECENT)     # blob offsets of recent small-file misses
        self._lock = threading.Lock()

    def _walking(self, offset: int) -> bool:
        """Note a small-file miss at ``offset``; whether one of the last misses was near it."""
        with self._lock:
            near = any(abs(offset - seen) < WALK_GAP for seen in self._recent)
            self._recent.append(offset)
        return near

    def following(self, missing: Sequence[Chunk], missing_file_size: int, table: Table | None,
                  files: Files, cached: Callable[[Chunk], bool]) -> list[Chunk]:
        """Uncached chunks of the small files stored after ``missing`` (chunks of one file of
        ``missing_file_size`` compressed bytes), in blob order; empty when the missed file is not small,
        the layer's files are not located yet (``table`` None), the policy is off, or no recent miss was
        near this one."""
        if not self.budget or not missing or table is None or missing_file_size > self.small:
            return []
        if not self._walking(min(c.offset for c in missing)):
            return []
        start = max(c.end for c in missing)
        missed = {c.digest for c in missing}
        out: list[Chunk] = []
        plain = 0
        for chunks in small_files(table, start, start + self.budget, self.small, files):
            todo = [c for c in chunks if c.digest not in missed and not cached(c)]
            size = sum(c.chunk_size for c in todo)
            if self.max_plain is not None and plain + size > self.max_plain:
                break
            plain += size
            out += todo
        return out


def small_files(table: Table, lo: int, hi: int, small: int, files: Files) -> Iterator[Sequence[Chunk]]:
    """The chunks of each file stored wholly within blob bytes ``[lo, hi)`` and at most ``small``
    compressed bytes, in blob order (half a file is no use to anyone; a big one is read on its own
    terms); at most ``MAX_FILES`` files are looked at. The one scan of the small-file guesses: a small
    file's neighbours (``LayerTree._neighbours``) and the read-ahead after a walk (``following``)."""
    offsets, inos = table
    i = bisect.bisect_left(offsets, lo)
    end = min(len(offsets), i + MAX_FILES)
    while i < end and offsets[i] < hi:
        ino = inos[i]
        i += 1
        try:
            found = files(ino)
        except FuseError:
            continue            # (logged where the file is read)
        if found is None:
            continue
        chunks, compressed = found
        if chunks and compressed <= small and all(lo <= c.offset and c.end <= hi for c in chunks):
            yield chunks
