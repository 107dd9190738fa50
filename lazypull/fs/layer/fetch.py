"""Getting verified chunks of one layer: from the chunk cache, else from the blob in as few requests as
possible, each region fetched once however many readers want it at the same moment.

A *unit* is the compressed range ``[chunk.offset, chunk.end)`` that decodes to one or more chunks (several
with min-chunk-size). Missing units of one read are merged into ranges (``lazypull.registry.merge_spans``:
neighbours closer than ``merge_gap`` become one range) and all ranges go out in one (multi-range) request.
Each chunk digest has at most one fetch in flight (a future others wait on: singleflight). Every chunk is
checked against its chunkDigest before it is cached or served; a mismatch is fetched again, like a failed
request, until the read's deadline (the one retry loop is ``RemoteBlob.fetch_verified``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures

from lazypull.format import Chunk, FormatError, decode_chunks
from lazypull.format.reader import zeros_digest
from lazypull.fs.cache import ChunkStore
from lazypull.fs.config import FsConfig
from lazypull.fs.remote import FetchError, RemoteBlob
from lazypull.fs.stats import LayerStats
from lazypull.registry import merge_spans

log = logging.getLogger(__name__)

Unit = tuple[int, int]

PARALLEL_DECODE_MIN = 256 << 10     # compressed bytes from which a fetch's units are decoded in parallel
_decoder_pool: ThreadPoolExecutor | None = None
_decoder_lock = threading.Lock()


def _decoder() -> ThreadPoolExecutor:
    """The process's decoding threads (shared by every layer: as many as CPUs, up to 4)."""
    global _decoder_pool
    with _decoder_lock:
        if _decoder_pool is None:
            _decoder_pool = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="decode")
        return _decoder_pool


class ChunkUnavailable(Exception):
    """A chunk could not be had before the deadline, or never verified; the read becomes EIO."""


class ChunkFetcher:
    """Verified chunks of one layer; thread-safe. Blocking calls never hold the table lock."""

    def __init__(self, digest: str, remote: RemoteBlob, cache: ChunkStore, stats: LayerStats,
                 config: FsConfig, units: dict[Unit, list[Chunk]], *,
                 preloaded: Sequence[tuple[int, bytes]] = (), zero_holes: bool = False) -> None:
        self.digest = digest
        self.remote = remote
        self.cache = cache                       # this layer's namespace: only bytes from its own blob
        self.stats = stats
        self.config = config
        self.units = units                       # unit -> chunks decoded from it (unique digests)
        self._inflight: dict[str, Future[bytes]] = {}
        self._inflight_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=config.fetch_workers,
                                        thread_name_prefix=f"fetch-{digest[7:19]}")
        # Blob bytes already in memory (the tail read with the TOC): ranges inside them need no request.
        self.preloaded: list[tuple[int, bytes]] = list(preloaded)
        # containers/storage zstd:chunked holes: chunks of zeros stored as no data at all.
        self.zero_holes = zero_holes
        self._zero_digest_by_size: dict[int, str] = {}

    def drop_preloaded(self) -> None:
        """Forget the preloaded blob bytes (everything is cached: they are not needed any more)."""
        self.preloaded = []

    def close(self) -> None:
        """Stop fetching: the queued groups are cancelled, and every claim still in flight fails at
        once (a waiter would sit out its deadline for a group that never runs)."""
        self.remote.closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._inflight_lock:
            futures = list(self._inflight.values())
            self._inflight.clear()
        err = ChunkUnavailable(f"layer {self.digest} is being unmounted")
        for fut in futures:
            with contextlib.suppress(InvalidStateError):
                fut.set_exception(err)

    def wait_fetching(self, chunks: Sequence[Chunk], *, deadline: float) -> None:
        """Return once the fetches of ``chunks`` already in flight are over (or at ``deadline``);
        claims nothing, so nothing is fetched for this wait."""
        with self._inflight_lock:
            futures = [fut for c in chunks if (fut := self._inflight.get(c.digest)) is not None]
        if futures:
            wait_futures(futures, timeout=max(0.0, deadline - time.monotonic()))

    # -- reading --

    def read_slice(self, chunk: Chunk, offset: int, length: int) -> bytes | None:
        """Bytes ``[offset, offset+length)`` of a cached chunk, or None when it is not cached."""
        return self.cache.read(chunk.digest, chunk.chunk_size, offset, length)

    def get(self, chunks: Sequence[Chunk], *, deadline: float, extra: Sequence[Chunk] = (),
            ahead: Sequence[Chunk] = ()) -> dict[str, bytes]:
        """Fetch the given (uncached) chunks, waiting until ``deadline``; digest -> bytes.

        Uncached chunks likely wanted soon are fetched too, when nobody fetches them yet, but not waited
        for: ``extra`` in the same request (small neighbours), ``ahead`` in a request of their own beside
        it (the rest of the file: the read does not wait for its bytes)."""
        waits, mine = self._claim(chunks, with_siblings=True)
        if extra:
            mine += self._claim([c for c in extra if c.digest not in waits], with_siblings=True)[1]
        # Fetched by someone else between the caller's cache check and the claim: release from the cache
        # (what is evicted or damaged meanwhile stays claimed, to be fetched).
        if mine:
            mine = self._resolve_from_cache(mine)
        if mine:
            try:
                self._pool.submit(self._run_group, mine, deadline, False)
            except RuntimeError as err:     # the layer is being closed
                self._fail(mine, ChunkUnavailable(f"layer {self.digest} is being unmounted"))
                raise ChunkUnavailable(f"layer {self.digest} is being unmounted") from err
        if ahead:
            self.fetch_async([c for c in ahead if c.digest not in waits], deadline=deadline)
        return self._wait(waits, deadline)

    def _fail(self, chunks: Sequence[Chunk], err: Exception) -> None:
        with self._inflight_lock:
            futures = [self._inflight.pop(c.digest, None) for c in chunks]
        for fut in futures:
            if fut is not None and not fut.done():
                with contextlib.suppress(InvalidStateError):
                    fut.set_exception(err)

    def fetch_async(self, chunks: Sequence[Chunk], *, deadline: float) -> int:
        """Start fetching chunks nobody fetches yet (readahead); returns how many were claimed."""
        mine = self.claim_for_background(chunks)
        if mine:
            try:
                self._pool.submit(self._run_group, mine, deadline, False)
            except RuntimeError:        # shutting down: release the claims
                self._fail(mine, ChunkUnavailable(f"layer {self.digest} is being unmounted"))
        return len(mine)

    def _claim(self, chunks: Sequence[Chunk], *, with_siblings: bool
               ) -> tuple[dict[str, Future[bytes]], list[Chunk]]:
        """Futures for the chunks' digests; the chunks this caller must fetch (not in flight yet)."""
        waits: dict[str, Future[bytes]] = {}
        mine: list[Chunk] = []
        with self._inflight_lock:
            for chunk in chunks:
                if chunk.digest in waits:
                    continue
                fut = self._inflight.get(chunk.digest)
                if fut is None:
                    fut = Future()
                    self._inflight[chunk.digest] = fut
                    mine.append(chunk)
                waits[chunk.digest] = fut
            if with_siblings:   # other chunks decoded from the same compressed ranges come for free
                for unit in {(c.offset, c.end) for c in mine}:
                    for sib in self.units.get(unit, ()):
                        if sib.digest in self._inflight or self.cache.contains(sib.digest, sib.chunk_size):
                            continue
                        self._inflight[sib.digest] = Future()
                        mine.append(sib)
        return waits, mine

    def _resolve_from_cache(self, chunks: Sequence[Chunk]) -> list[Chunk]:
        """Complete the claims of the chunks the cache has; the others (still claimed)."""
        found: dict[str, bytes] = {}
        rest: list[Chunk] = []
        for chunk in chunks:
            data = (self.cache.get(chunk.digest, chunk.chunk_size)
                    if self.cache.contains(chunk.digest, chunk.chunk_size) else None)
            if data is None:
                rest.append(chunk)
            else:
                found[chunk.digest] = data
        with self._inflight_lock:
            futures = [(d, self._inflight.pop(d, None)) for d in found]
        for digest, fut in futures:
            if fut is not None:
                fut.set_result(found[digest])
        return rest

    def claim_for_background(self, chunks: Sequence[Chunk]) -> list[Chunk]:
        """Claim the chunks nobody fetches yet and that are not cached (background/prefetch)."""
        todo = [c for c in chunks if not self.cache.contains(c.digest, c.chunk_size)]
        return self._claim(todo, with_siblings=False)[1]

    def _wait(self, waits: dict[str, Future[bytes]], deadline: float) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for digest, fut in waits.items():
            try:
                out[digest] = fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout as err:
                raise ChunkUnavailable(f"chunk {digest} of layer {self.digest} not fetched within "
                                       f"the read deadline") from err
            except ChunkUnavailable:
                raise
            except Exception as err:
                raise ChunkUnavailable(str(err)) from err
        return out

    # -- fetching a claimed group --

    def run_group(self, chunks: Sequence[Chunk], deadline: float, *, single_range: bool) -> None:
        """Fetch and verify claimed chunks in this thread (prefetch and background use it directly)."""
        self._run_group(chunks, deadline, single_range)

    def _run_group(self, chunks: Sequence[Chunk], deadline: float, single_range: bool) -> None:
        results: dict[str, bytes] = {}
        errors: dict[str, BaseException] = {}
        unverified: dict[str, FormatError] = {}      # chunks whose latest bytes did not match their digest
        try:
            pending = self._decode_local(chunks, results, unverified)
            if pending:
                self._fetch_remote(pending, deadline, single_range, results, unverified)
        except FetchError as err:
            log.error("layer %s: %s", self.digest, err)
            for chunk in chunks:
                bad = unverified.get(chunk.digest)
                reason = f"chunk {chunk.digest} does not match its digest: {bad} ({err})" if bad else str(err)
                errors.setdefault(chunk.digest, ChunkUnavailable(f"layer {self.digest}, file "
                                                                 f"{chunk.name!r}: {reason}"))
        except BaseException as err:  # never leave waiters hanging
            log.exception("layer %s: unexpected failure fetching chunks", self.digest)
            for chunk in chunks:
                errors.setdefault(chunk.digest, ChunkUnavailable(f"layer {self.digest}: {err!r}"))
        finally:
            with self._inflight_lock:
                futures = {c.digest: self._inflight.pop(c.digest, None) for c in chunks}
            for digest, fut in futures.items():
                if fut is None or fut.done():
                    continue
                with contextlib.suppress(InvalidStateError):
                    if digest in results:
                        fut.set_result(results[digest])
                    else:
                        fut.set_exception(errors.get(digest)
                                          or ChunkUnavailable(f"chunk {digest} not fetched"))

    def _ready(self, digest: str, data: bytes) -> None:
        """Hand a verified, cached chunk to its waiters now, not when the whole group is done."""
        with self._inflight_lock:
            fut = self._inflight.get(digest)
        if fut is not None:
            with contextlib.suppress(InvalidStateError):     # failed meanwhile (the layer is closing)
                fut.set_result(data)

    def _is_zero(self, chunk: Chunk) -> bool:
        """Whether a chunk is all zeros (by its digest), for layers that store such chunks as holes."""
        if not self.zero_holes:
            return False
        digest = self._zero_digest_by_size.get(chunk.chunk_size)
        if digest is None:
            digest = zeros_digest(chunk.chunk_size)     # (sizes capped by the reader's chunks())
            self._zero_digest_by_size[chunk.chunk_size] = digest
        return bool(chunk.digest == digest)

    def _preloaded(self, start: int, end: int) -> bytes | None:
        for off, data in self.preloaded:
            if off <= start and end <= off + len(data):
                return data[start - off : end - off]
        return None

    def _decode_local(self, chunks: Sequence[Chunk], results: dict[str, bytes],
                      unverified: dict[str, FormatError]) -> list[Chunk]:
        """Serve what needs no request (zero holes, bytes read with the TOC); the chunks still to fetch."""
        pending: list[Chunk] = []
        local: dict[Unit, list[Chunk]] = {}
        for chunk in chunks:
            if self._is_zero(chunk):
                plain = bytes(chunk.chunk_size)
                self.cache.put(chunk.digest, plain)
                results[chunk.digest] = plain
            elif self.preloaded and self._preloaded(chunk.offset, chunk.end) is not None:
                local.setdefault((chunk.offset, chunk.end), []).append(chunk)
            else:
                pending.append(chunk)
        work = [(group, self._preloaded(*unit) or b"") for unit, group in local.items()]
        for chunk, err in self._decode(work, results):
            unverified[chunk.digest] = err
            pending.append(chunk)                   # the copy in memory was bad: ask the registry
        return pending

    def _fetch_remote(self, chunks: Sequence[Chunk], deadline: float, single_range: bool,
                      results: dict[str, bytes], unverified: dict[str, FormatError]) -> None:
        """Fetch and verify ``chunks``; what does not verify is asked again within the same deadline as
        failed requests (``RemoteBlob.fetch_verified``: one retry loop for every fault)."""
        by_unit: dict[Unit, list[Chunk]] = {}
        for chunk in chunks:
            by_unit.setdefault((chunk.offset, chunk.end), []).append(chunk)

        def ranges_for(units: Iterable[Unit], single: bool) -> list[tuple[int, int]]:
            spans = list(units)
            merged = [(min(s for s, _ in spans), max(e for _, e in spans))] if single \
                else merge_spans(spans, self.config.merge_gap)
            return [(s, e - s) for s, e in merged]

        def accept(asked: list[tuple[int, int]], datas: list[bytes]) -> list[tuple[int, int]]:
            work: list[tuple[list[Chunk], bytes]] = []
            for (offset, end), group in by_unit.items():
                for (start, length), data in zip(asked, datas, strict=True):
                    if start <= offset and end <= start + length:
                        work.append((group, data[offset - start : end - start]))
                        break
                else:  # cannot happen: every unit is inside a range
                    raise FetchError(f"no fetched range covers chunk {group[0].digest}")
            failed = self._decode(work, results)
            for group, _ in work:
                for chunk in group:
                    unverified.pop(chunk.digest, None)
            by_unit.clear()
            for chunk, err in failed:
                unverified[chunk.digest] = err
                by_unit.setdefault((chunk.offset, chunk.end), []).append(chunk)
            if not failed:
                return []
            log.warning("layer %s: %d chunk(s) failed verification (first: file %r, %s); fetching again",
                        self.digest, len(failed), failed[0][0].name, failed[0][1])
            return ranges_for(by_unit, False)

        self.remote.fetch_verified(ranges_for(by_unit, single_range), deadline, accept)

    def _decode(self, work: list[tuple[list[Chunk], bytes]], results: dict[str, bytes]
                ) -> list[tuple[Chunk, FormatError]]:
        """Decode, verify and store each unit's chunks; the chunks that failed verification."""
        failed: list[tuple[Chunk, FormatError]] = []
        if len(work) > 1 and sum(len(c) for _, c in work) >= PARALLEL_DECODE_MIN:
            # decompression and hashing release the GIL: the other units on the other CPUs, the first
            # (what the read that asked is waiting for) here
            pool = _decoder()
            others = [pool.submit(self._store, group, compressed, results) for group, compressed in work[1:]]
            failed += self._store(*work[0], results)
            for fut in others:
                failed += fut.result()
        else:
            for group, compressed in work:
                failed += self._store(group, compressed, results)
        return failed

    def _store(self, group: list[Chunk], compressed: bytes, results: dict[str, bytes]
               ) -> list[tuple[Chunk, FormatError]]:
        """Decode and verify the chunks of one compressed unit, cache them and hand them to their waiters;
        the chunks that failed verification."""
        failed: list[tuple[Chunk, FormatError]] = []
        # chunks sharing a member (min-chunk-size) are decompressed together, once
        for chunk, decoded in zip(group, decode_chunks(group, compressed), strict=True):
            if isinstance(decoded, FormatError):
                self.stats.add(verify_failures=1)
                failed.append((chunk, decoded))
                continue
            self.cache.put(chunk.digest, decoded)   # a failed write is logged; the bytes are served anyway
            self._ready(chunk.digest, decoded)      # its readers go on while the rest is decoded
            self.stats.add(chunks_fetched=1)
            results[chunk.digest] = decoded
        return failed
