"""Prefetch and background fetch of one layer.

Prefetch: at mount, the blob range before ``.prefetch.landmark`` (the files the image author said are
needed first) is fetched in one request, and every chunk in it decoded, verified and cached. Readers that
need one of those chunks meanwhile wait for it rather than fetching it again. ``wait_prefetch`` lets the
container start wait for it, up to a timeout. Then what the layer's first run on this node read
(``learned``), in read order; a start does not wait for that.

Background fetch: then the rest of the layer, a batch of neighbouring units per request, a few at a time,
pausing while on-demand misses are being served (and ``background_pause`` after), so it only uses idle time;
it starts and resumes only after ``background_quiet`` s without any mount, prefetch or miss in the server
(the server's ``activity.Activity``), so it does not compete with a container's start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from lazypull.format import Chunk
from lazypull.fs.config import FsConfig
from lazypull.fs.layer.activity import Activity
from lazypull.fs.layer.fetch import ChunkFetcher, Unit
from lazypull.fs.stats import LayerStats

log = logging.getLogger(__name__)

BACKGROUND_PASSES = 12           # a layer whose fetch keeps failing is retried this often, then left
BACKGROUND_RETRY_INITIAL = 2.0   # seconds before the first retry pass, doubled up to the maximum
BACKGROUND_RETRY_MAX = 60.0
# The prefetch range goes in pieces of this many compressed bytes, this many requests at a time (in blob
# order, so in the order the files are needed): a piece is decoded, and its files readable, while the next
# ones download, instead of everything after the last byte.
PREFETCH_PIECE = 1 << 20
PREFETCH_STREAMS = 2
# The learned fetch (``learned``) goes in read order: a small first piece (the first files read wait for
# it), then pieces of PREFETCH_PIECE, each one multi-range request, this many at a time.
LEARNED_FIRST_PIECE = 256 << 10
LEARNED_STREAMS = 3


def pieces(chunks: list[Chunk], size: int) -> list[list[Chunk]]:
    """``chunks`` in blob order, cut between compressed units into pieces of about ``size`` bytes."""
    by_unit: dict[Unit, list[Chunk]] = {}
    for chunk in chunks:
        by_unit.setdefault((chunk.offset, chunk.end), []).append(chunk)
    out: list[list[Chunk]] = []
    piece: list[Chunk] = []
    piece_start = 0
    for (start, end), group in sorted(by_unit.items()):
        if piece and end - piece_start > size:
            out.append(piece)
            piece = []
        if not piece:
            piece_start = start
        piece += group
    if piece:
        out.append(piece)
    return out


def ordered_pieces(chunks: list[Chunk], first: int, size: int) -> list[list[Chunk]]:
    """``chunks`` in the given order, cut into pieces of about ``first``, then ``size``, compressed
    bytes (a unit counted once)."""
    out: list[list[Chunk]] = []
    piece: list[Chunk] = []
    units: set[Unit] = set()
    total = 0
    for chunk in chunks:
        unit = (chunk.offset, chunk.end)
        if unit not in units:
            if piece and total + unit[1] - unit[0] > (size if out else first):
                out.append(piece)
                piece, units, total = [], set(), 0
            units.add(unit)
            total += unit[1] - unit[0]
        piece.append(chunk)
    if piece:
        out.append(piece)
    return out


class Background:
    """Runs the prefetch, then the background fetch, in its own threads."""

    def __init__(self, fetcher: ChunkFetcher, stats: LayerStats, config: FsConfig,
                 prefetch_range: tuple[int, int] | None,
                 on_progress: Callable[[], None] | None = None,
                 index: Callable[[int | None], object] | None = None,
                 learned: Callable[[], list[Chunk]] | None = None,
                 early: Callable[[], list[Chunk]] | None = None, activity: Activity | None = None) -> None:
        self.fetcher = fetcher
        self.activity = activity if activity is not None else Activity()   # the server's, shared
        self.stats = stats
        self.config = config
        self.prefetch_range = prefetch_range
        self.on_progress = on_progress
        self.index = index
        self.learned = learned
        self.early = early          # small files wanted by every start: fetched beside the prefetch
        self.prefetched = threading.Event()
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"prefetch-{fetcher.digest[7:19]}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.prefetched.set()

    def wait_prefetch(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the prefetch; True when it is done (or there was none)."""
        return self.prefetched.wait(timeout)

    def _run(self) -> None:
        try:
            if self.index is not None:      # the prefetch's files now, the rest when it is quiet
                self.index(self.prefetch_range[1] if self.config.prefetch and self.prefetch_range else 0)
            if self.early is not None and not self._stop.is_set() and (first := self.early()):
                self.fetcher.fetch_async(first, deadline=time.monotonic() + self.config.read_deadline)
            self._prefetch()
        except Exception:
            log.exception("layer %s: prefetch failed", self.fetcher.digest)
            self.stats.set(prefetch_state="failed")
        finally:
            self.prefetched.set()
        # Not waited for by a start (``wait_prefetch``): it comes in the order the workload reads it, and
        # a read of a chunk it is fetching waits for that fetch, so the container's set-up overlaps it
        # (docs/benchmarks.md, "Without prefetch: learned fetch-ahead").
        try:
            self._learned()
        except Exception:
            log.exception("layer %s: learned fetch failed", self.fetcher.digest)
            self.stats.set(learned_state="failed")
        if not self._stop.is_set():     # a container starts next: its misses should not wait handshakes
            self.fetcher.remote.warm(self.config.warm_connections)
        try:
            if self.config.background_fetch and not self._stop.is_set():
                self._background()
            else:
                if self.index is not None and not self._stop.is_set():
                    self.index(None)        # siblings of on-demand reads (min-chunk-size members)
                self.stats.set(background_state="off")
        except Exception:
            log.exception("layer %s: background fetch failed", self.fetcher.digest)
            self.stats.set(background_state="failed")
        finally:
            self.finished.set()

    def _prefetch(self) -> None:
        if not self.config.prefetch or self.prefetch_range is None:
            self.stats.set(prefetch_state="none")
            return
        start, end = self.prefetch_range
        chunks = [c for (off, stop), group in self.fetcher.units.items() if start <= off and stop <= end
                  for c in group]
        began = time.monotonic()
        mine = self.fetcher.claim_for_background(chunks)
        if not mine:
            self.stats.set(prefetch_state="skipped", prefetch_seconds=0.0)
            return
        self.stats.set(prefetch_state="running")
        before = self.stats.bytes_fetched
        deadline = time.monotonic() + self.config.read_deadline
        name = f"prefetch-{self.fetcher.digest[7:19]}"
        with self.activity.busy(), ThreadPoolExecutor(PREFETCH_STREAMS, thread_name_prefix=name) as pool:
            for piece in pieces(mine, PREFETCH_PIECE):
                pool.submit(self.fetcher.run_group, piece, deadline, single_range=True)
        missing = [c for c in mine if not self.fetcher.cache.contains(c.digest, c.chunk_size)]
        self.stats.set(prefetch_seconds=round(time.monotonic() - began, 6),
                       prefetch_bytes=self.stats.bytes_fetched - before,
                       prefetch_state="failed" if missing else "done")
        if self.on_progress:
            self.on_progress()

    def _learned(self) -> None:
        """Fetch what an earlier mount's workload read first (``learned``), in that order, before it
        is asked for again; reads of those chunks meanwhile wait for this fetch, never fetch twice."""
        if self.learned is None or self._stop.is_set():
            return
        chunks = self.learned()
        if not chunks:
            return
        self.stats.set(learned_state="running")
        began = time.monotonic()
        before = self.stats.bytes_fetched
        deadline = began + self.config.read_deadline
        name = f"learned-{self.fetcher.digest[7:19]}"

        def one(piece: list[Chunk]) -> None:
            if self._stop.is_set():
                return
            mine = self.fetcher.claim_for_background(piece)   # at its turn: a read may have fetched some
            if mine:
                self.fetcher.run_group(mine, deadline, single_range=False)

        with self.activity.busy(), ThreadPoolExecutor(LEARNED_STREAMS, thread_name_prefix=name) as pool:
            for piece in ordered_pieces(chunks, LEARNED_FIRST_PIECE, PREFETCH_PIECE):
                pool.submit(one, piece)
        missing = self._uncached(chunks)
        self.stats.set(learned_chunks=len(chunks), learned_bytes=self.stats.bytes_fetched - before,
                       learned_seconds=round(time.monotonic() - began, 6),
                       learned_state="failed" if missing else "done")

    def _uncached(self, chunks: list[Chunk]) -> list[Chunk]:
        """Of ``chunks`` (the learned fetch is over), those still not cached: a chunk a read was
        fetching when its piece was claimed is left to that read, whose fetch may still be under way,
        so it is waited for before it is counted missing. Only waited for: one nobody fetches (failed,
        or evicted since) is not asked for again (``activity.busy`` is over: it is a read's to fetch)."""
        missing = [c for c in chunks if not self.fetcher.cache.contains(c.digest, c.chunk_size)]
        if missing and not self._stop.is_set():
            self.fetcher.wait_fetching(missing, deadline=time.monotonic() + self.config.read_deadline)
            missing = [c for c in missing if not self.fetcher.cache.contains(c.digest, c.chunk_size)]
        return missing

    def _background(self) -> None:
        self.stats.set(background_state="waiting")
        if not self.activity.wait_quiet(self.config.background_quiet, self._stop):
            self.stats.set(background_state="stopped")
            return
        if self.index is not None:
            self.index(None)
        units = sorted(self.fetcher.units.items())
        self.stats.set(background_total=sum(stop - off for (off, stop), _ in units))
        delay = BACKGROUND_RETRY_INITIAL
        for attempt in range(BACKGROUND_PASSES):
            batches, done = self._batches(units)
            self.stats.set(background_done=done)
            if not batches:
                self.stats.set(background_state="done")
                self.fetcher.drop_preloaded()
                return
            self.stats.set(background_state="running" if attempt == 0 else "retrying")
            with ThreadPoolExecutor(self.config.background_concurrency,
                                    thread_name_prefix=f"bg-{self.fetcher.digest[7:19]}") as pool:
                failed = sum(0 if ok else 1 for ok in pool.map(self._one_batch, batches))
            if self.on_progress:
                self.on_progress()
            if self._stop.is_set():
                self.stats.set(background_state="stopped")
                return
            if not failed:
                self.stats.set(background_state="done", background_done=self.stats.background_total)
                self.fetcher.drop_preloaded()     # everything is cached: the TOC tail bytes are not needed
                return
            log.warning("layer %s: %d background batch(es) failed; retrying in %.0fs",
                        self.fetcher.digest, failed, delay)
            self.stats.set(background_state="waiting")
            if self._stop.wait(delay):
                self.stats.set(background_state="stopped")
                return
            delay = min(delay * 2, BACKGROUND_RETRY_MAX)
        self.stats.set(background_state="failed")

    def _batches(self, units: list[tuple[Unit, list[Chunk]]]
                 ) -> tuple[list[list[tuple[Unit, list[Chunk]]]], int]:
        """Neighbouring uncached units in batches of ``background_batch`` bytes; bytes already cached."""
        batches: list[list[tuple[Unit, list[Chunk]]]] = []
        batch: list[tuple[Unit, list[Chunk]]] = []
        size = 0
        done = 0
        for unit, group in units:
            if all(self.fetcher.cache.contains(c.digest, c.chunk_size) for c in group):
                done += unit[1] - unit[0]
                continue
            batch.append((unit, group))
            size += unit[1] - unit[0]
            if size >= self.config.background_batch:
                batches.append(batch)
                batch, size = [], 0
        if batch:
            batches.append(batch)
        return batches, done

    def _one_batch(self, batch: list[tuple[Unit, list[Chunk]]]) -> bool:
        while not self.fetcher.remote.demand_quiet():
            if self._stop.wait(0.05):
                return False
        if not self.activity.wait_quiet(self.config.background_quiet, self._stop):
            return False
        if self._stop.is_set():
            return False
        chunks = [c for _, group in batch for c in group]
        mine = self.fetcher.claim_for_background(chunks)
        if mine:
            self.fetcher.run_group(mine, time.monotonic() + self.config.read_deadline, single_range=False)
        ok = all(self.fetcher.cache.contains(c.digest, c.chunk_size) for c in chunks)
        if ok:
            self.stats.add(background_done=sum(stop - off for (off, stop), _ in batch))
        return ok
