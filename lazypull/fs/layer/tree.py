"""``LayerTree``: the FUSE ``Tree`` of one eStargz / zstd:chunked layer, served lazily.

Metadata comes from the TOC (``InodeTable``); file content from the chunk cache or, on a miss, from
the blob through ``ChunkFetcher``. Files whose every chunk is cached are offered to the FUSE server as
local backing files (passthrough), so their reads never reach Python again.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

from lazypull import layerdir
from lazypull.format import Chunk, FormatError
from lazypull.fs.cache import ChunkStore, LayerChunks
from lazypull.fs.config import FsConfig
from lazypull.fs.fuse.tree import Attr, FuseError, StatFs
from lazypull.fs.layer import hints, learned
from lazypull.fs.layer.access import AccessRecorder
from lazypull.fs.layer.activity import Activity
from lazypull.fs.layer.background import PREFETCH_PIECE, Background, pieces
from lazypull.fs.layer.elf import MAGIC as ELF_MAGIC
from lazypull.fs.layer.fetch import ChunkFetcher, ChunkUnavailable, Unit
from lazypull.fs.layer.inodes import InodeTable, Node
from lazypull.fs.layer.readahead import BlobReadAhead, small_files
from lazypull.fs.remote import REWARM_IDLE, RemoteBlob
from lazypull.fs.stats import MISS_WAIT_BOUNDS, LatencyHistogram, LayerStats

if TYPE_CHECKING:
    from lazypull.format import LayerReader

log = logging.getLogger(__name__)

ASSEMBLE_INLINE_MAX = 64 << 20   # complete files up to this size are assembled during open()
SMALL_FILE = 64 << 10            # compressed size up to which a file's neighbours come with it
PROGRAM_CACHE_SHARE = 8          # programs fetched whole when started take at most 1/8 of the cache bound
PROGRAM_STREAMS = 2              # requests in flight for programs fetched whole (not the demand reads' pool)


class _FileChunks:
    """A regular file's chunks in file order, with their start offsets for bisection."""

    __slots__ = ("chunks", "compressed", "starts")

    def __init__(self, chunks: Sequence[Chunk]) -> None:
        self.chunks = list(chunks)
        self.starts = [c.chunk_offset for c in self.chunks]
        # compressed bytes of the whole file (each compressed range once)
        self.compressed = sum(end - off for off, end in {(c.offset, c.end) for c in self.chunks})


def _has_content(node: Node | None) -> TypeGuard[Node]:
    """A regular file with bytes (not a directory, symlink or device; a hardlink is its target)."""
    return node is not None and node.entry is not None and node.children is None and not node.link \
        and node.attr.size > 0 and (node.attr.mode & 0o170000) == 0o100000


class LayerTree:
    """Implements ``lazypull.fs.fuse.Tree`` for one layer. Thread-safe.

    ``activity`` and ``groups`` are the server's, shared by its layers (``fs.facade.LayerFs``; a tree
    made without them has its own). ``access`` records the files read (``access.recorder_for``),
    ``learner`` notes the first reads for the next cold mount and ``learned_record`` is an earlier
    mount's notes, fetched at start (``learned``). ``preloaded``: blob bytes already read (with the
    TOC), which serve the chunks inside them without a request. ``miss_wait``: the server's histogram
    of how long reads that missed waited.
    """

    def __init__(self, digest: str, reader: LayerReader, remote: RemoteBlob, cache: ChunkStore,
                 stats: LayerStats, config: FsConfig, layer_dir: Path, *, activity: Activity | None = None,
                 groups: hints.Groups | None = None, access: AccessRecorder | None = None,
                 learner: learned.Learner | None = None,
                 learned_record: list[learned.LearnedFile] | None = None,
                 preloaded: Sequence[tuple[int, bytes]] = (), miss_wait: LatencyHistogram | None = None
                 ) -> None:
        self.digest = digest
        self.miss_wait = miss_wait if miss_wait is not None else LatencyHistogram(MISS_WAIT_BOUNDS)
        self.activity = activity if activity is not None else Activity()
        self.groups = groups if groups is not None else hints.Groups()
        self.access = access
        self.learner = learner
        self.learned_record = learned_record
        self.reader = reader
        self.remote = remote
        self.cache = cache
        self.stats = stats
        self.config = config
        self.files_dir = layerdir.files_dir(layer_dir)
        # Files assembled by an earlier server were never verified since (no fsync, maybe a power loss):
        # they are assembled again from chunks, which the cache verifies at first use.
        shutil.rmtree(self.files_dir, ignore_errors=True)
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._backing: dict[str, str] = {}      # chunk digest -> its file, pinned while it backs a file
        self._backed_by: dict[str, set[int]] = {}   # chunk digest -> the inodes it backs
        self.inodes = InodeTable(reader)
        self._has_xattrs: bool | None = None     # (has_xattrs: computed at the first xattr request)
        # Chunk lists are built on first use (a big TOC would otherwise delay the mount by seconds);
        # the background thread indexes every file before it prefetches.
        self._files: dict[int, _FileChunks] = {}
        # regular files by blob offset (offsets, inodes), for fetching neighbours of small files
        self._by_offset: tuple[list[int], list[int]] | None = None
        self._total_size = self.inodes.total_size()   # without making every regular file's Attr
        # unit -> its chunks, each digest once: grown by index(), read by the fetcher (siblings) and
        # the background fetch
        self._units: dict[Unit, list[Chunk]] = {}
        self._indexed: set[str] = set()          # chunk digests in _units
        # containers/storage zstd:chunked stores all-zero chunks as holes (no data to fetch)
        self.fetcher = ChunkFetcher(digest, remote, cache, stats, config, self._units, preloaded=preloaded,
                                    zero_holes=getattr(reader, "footer_kind", "") == "zstd-64")
        cache_bound = cache.cache.max_bytes if isinstance(cache, LayerChunks) else 0
        self.blob_readahead = BlobReadAhead(config.blob_readahead, small=SMALL_FILE, cache_bound=cache_bound)
        share = cache_bound // PROGRAM_CACHE_SHARE if cache_bound else 0
        self._program_max = min(config.program_max, share)
        self._program_budget = min(config.program_budget, share)   # bytes left (under _ahead_lock)
        # programs fetched whole go through streams of their own: the demand reads' pool (the fetcher's)
        # never waits behind their pieces
        self._program_pool = ThreadPoolExecutor(PROGRAM_STREAMS, thread_name_prefix=f"program-{digest[7:19]}")
        self.background = Background(self.fetcher, stats, config,
                                     reader.prefetch_range() if config.prefetch else None, index=self.index,
                                     learned=self.learned_chunks,
                                     early=self.user_db_chunks if config.fetch_user_db else None,
                                     activity=self.activity)
        self._readahead_lock = threading.Lock()
        self._last_end: dict[int, int] = {}       # ino -> where the last read of it ended
        self._readahead_next: dict[int, int] = {} # ino -> first chunk index not yet read ahead
        self._assembling: set[int] = set()
        # inodes whose files/<ino> was handed out for passthrough: pinned in the cache until the layer
        # closes (the kernel holds a registered backing file until unmount, so deleting it frees nothing)
        self._file_pins: set[int] = set()
        self._assemble_lock = threading.Lock()
        self._assembler = ThreadPoolExecutor(1, thread_name_prefix=f"assemble-{digest[7:19]}")
        # files fetched ahead for the dynamic loader (``hints``), each once; the image's layers are a group
        self._ahead: set[int] = set()
        self._programs: set[int] = set()          # executables looked at for a whole fetch, each once
        self._ahead_lock = threading.Lock()
        self._ahead_pool = ThreadPoolExecutor(4, thread_name_prefix=f"ahead-{digest[7:19]}")
        ref = getattr(remote.source, "ref", None)
        self.group: str | None = str(ref) if ref is not None else None
        self.groups.join(self.group, self)

    def _chunks_of(self, ino: int) -> _FileChunks | None:
        """The chunks of a regular file with content (None for anything else)."""
        fc = self._files.get(ino)
        if fc is not None:
            return fc
        node = self.inodes.get(ino)
        if node is None or node.entry is None or node.attr.size == 0:
            return None
        try:
            chunks = self.reader.chunks(node.entry)
        except FormatError as err:
            log.error("layer %s: file %r: %s", self.digest, node.path, err)
            raise FuseError(errno.EIO, str(err)) from err
        covered = sum(c.chunk_size for c in chunks)
        if covered != node.attr.size:
            log.error("layer %s: chunks of %r cover %d bytes, file size is %d",
                      self.digest, node.path, covered, node.attr.size)
            raise FuseError(errno.EIO, f"chunks of {node.path!r} do not cover the file")
        fc = self._files.setdefault(ino, _FileChunks(chunks))
        return fc

    def index(self, below: int | None = None) -> dict[Unit, list[Chunk]]:
        """Chunks of every file by compressed range (each chunk digest once), the fetcher's too; grown
        in place (only the background thread calls it), never rebuilt. ``below``: only files whose data
        starts before that blob offset (what the prefetch needs; the whole index costs ~0.1 s of CPU per
        5000 files)."""
        units = self._units
        seen = self._indexed
        located: list[tuple[int, int]] = []
        for node in list(self.inodes.regular_files()):
            offset = getattr(node.entry, "offset", 0)
            located.append((offset, node.attr.ino))
            if below is not None and offset >= below:
                continue
            try:
                fc = self._chunks_of(node.attr.ino)
            except FuseError:
                continue          # logged; reads of that file fail, the others are fetched
            for chunk in fc.chunks if fc else ():
                if chunk.digest not in seen:
                    seen.add(chunk.digest)
                    units.setdefault((chunk.offset, chunk.end), []).append(chunk)
        if self._by_offset is None:
            located.sort()
            self._by_offset = ([off for off, _ in located], [ino for _, ino in located])
        return units

    def _neighbours(self, fc: _FileChunks, missing: Sequence[Chunk]) -> list[Chunk]:
        """Uncached chunks of the small files stored wholly within ``neighbour_window`` compressed bytes of
        a small file's missing chunks: a directory's files are stored together and are often read one
        after the other (a package's modules), each a round trip otherwise."""
        window = self.config.neighbour_window
        table = self._by_offset     # built by index() at mount; until then, no guesses
        if not window or table is None or fc.compressed > SMALL_FILE:
            return []
        lo = min(c.offset for c in missing) - window
        hi = max(c.end for c in missing) + window
        return [c for chunks in small_files(table, lo, hi, SMALL_FILE, self._located)
                if chunks is not fc.chunks for c in chunks if not self.cache.contains(c.digest, c.chunk_size)]

    def _located(self, ino: int) -> tuple[Sequence[Chunk], int] | None:
        """An inode's chunks and compressed size, for the scans of ``readahead.small_files``."""
        fc = self._chunks_of(ino)
        return None if fc is None else (fc.chunks, fc.compressed)

    # -- lifecycle --

    def start(self) -> LayerTree:
        """Start prefetch and background fetch (returns at once)."""
        self.background.start()
        return self

    def wait_prefetch(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the prefetch to finish."""
        return self.background.wait_prefetch(timeout)

    @property
    def prefetched(self) -> bool:
        """Whether the prefetch is over (done, failed or stopped), without waiting."""
        return self.background.prefetched.is_set()

    def close(self) -> None:
        """Stop background work and pending fetches."""
        self.groups.leave(self.group, self)
        self.background.stop()
        self.fetcher.close()
        self.cache.release()
        self._assembler.shutdown(wait=False, cancel_futures=True)
        self._ahead_pool.shutdown(wait=False, cancel_futures=True)
        self._program_pool.shutdown(wait=False, cancel_futures=True)
        if self.access is not None:
            self.access.close()
        if self.learner is not None:
            self.learner.close()

    # -- Tree --

    def _node(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node is None:
            raise FuseError(errno.ENOENT, f"no inode {ino}")
        return node

    def lookup(self, parent: int, name: bytes) -> Attr | None:
        node = self._node(parent)
        if node.children is None:
            raise FuseError(errno.ENOTDIR)
        ino = node.children.get(name)
        return None if ino is None else self.inodes.nodes[ino].attr

    def getattr(self, ino: int) -> Attr:
        return self._node(ino).attr

    def readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        node = self._node(ino)
        if node.children is None:
            raise FuseError(errno.ENOTDIR)
        return [(name, self.inodes.nodes[child].attr) for name, child in sorted(node.children.items())]

    def readlink(self, ino: int) -> bytes:
        node = self._node(ino)
        if not node.link:
            raise FuseError(errno.EINVAL)
        return node.link

    def getxattr(self, ino: int, name: bytes) -> bytes | None:
        return self._node(ino).xattrs.get(name)

    def listxattr(self, ino: int) -> list[bytes]:
        return sorted(self._node(ino).xattrs)

    def has_xattrs(self) -> bool:
        """``XattrAware``: whether any inode has one (the TOC's, or an opaque directory's marker); the
        inode table is complete and fixed from the start, so the answer is too. Computed once."""
        found = self._has_xattrs
        if found is None:
            found = self._has_xattrs = any(node.xattrs for node in self.inodes.nodes.values())
        return found

    def metadata_in_memory(self) -> bool:
        """``MetadataInMemory``: lookups, attributes, listings, links and xattrs come from the inode
        table, complete from the start; none waits (the session answers them on its reading thread)."""
        return True

    def statfs(self) -> StatFs:
        return StatFs(blocks=(self._total_size + 4095) // 4096, files=len(self.inodes.nodes))

    def read(self, ino: int, offset: int, size: int) -> bytes:
        return self._served(ino, offset, size, executing=False)

    def read_exec(self, ino: int, offset: int, size: int) -> bytes:
        """``read`` for the kernel executing the file (``fuse.tree.ExecAware``): its first miss also
        starts fetching the rest of a big program (``_fetch_program``). A library the loader maps, ``file``
        or ``ldconfig`` reading an executable ELF, read with ``read``, do not."""
        return self._served(ino, offset, size, executing=True)

    def _served(self, ino: int, offset: int, size: int, *, executing: bool) -> bytes:
        node = self._node(ino)
        if self.access is not None:
            self.access.note(ino, node.path)
        data, missed = self._read(node, offset, size)
        if self.learner is not None and not self.learner.closed and data:
            self._learn(ino, node, offset, offset + len(data))
        if missed and executing and self._program_once(ino):
            with contextlib.suppress(RuntimeError):         # closing
                self._ahead_pool.submit(self._started, ino)
        if missed and offset == 0 and self.config.fetch_elf_deps and (
                data[:4] == ELF_MAGIC or (data[:2] == b"#!" and node.attr.mode & 0o111)):
            # a program starting, or the loader opening a library: what it loads next
            self._ahead_once(ino, hints.follow, self, ino)
        return data

    def _started(self, ino: int) -> None:
        """A program is being executed (``read_exec``): the rest of it if big."""
        with contextlib.suppress(FuseError):
            self._fetch_program(ino)

    def _program_once(self, ino: int) -> bool:
        """Whether ``ino`` is to be looked at for a whole fetch now (the first time only)."""
        with self._ahead_lock:
            if ino in self._programs:
                return False
            self._programs.add(ino)
            return True

    def _learn(self, ino: int, node: Node, offset: int, end: int) -> None:
        fc = self._files.get(ino)
        if fc is None or self.learner is None:
            return
        i = max(0, bisect.bisect_right(fc.starts, offset) - 1)
        j = bisect.bisect_left(fc.starts, end)
        self.learner.note(ino, node.path, fc.starts[i:j])

    def user_db_chunks(self) -> list[Chunk]:
        """Uncached chunks of this layer's ``hints.USER_DB`` files (regular files, small): fetched at mount,
        so the container's create finds them here instead of waiting a round trip for each."""
        out: list[Chunk] = []
        for path in hints.USER_DB:
            node = hints.node_at(self, path)
            if not _has_content(node):
                continue
            try:
                fc = self._chunks_of(node.attr.ino)
            except FuseError:
                continue
            if fc is None or fc.compressed > SMALL_FILE:
                continue
            out += [c for c in fc.chunks if not self.cache.contains(c.digest, c.chunk_size)]
        return out      # (not counted as fetched_ahead: that counts guesses made for a container's start)

    def learned_chunks(self) -> list[Chunk]:
        """The uncached chunks of the learned record (``learned_record``), in the order they were first read,
        each once, up to ``learned.MAX_BYTES`` compressed: what the mount fetches first. Paths and
        offsets are looked up in this layer's TOC; what is not found there is skipped. A mount that
        finds some of them cached is not cold: its learner keeps the record as it is."""
        record, self.learned_record = self.learned_record, None
        if not record:
            return []
        out: list[Chunk] = []
        seen: set[str] = set()
        units: set[tuple[int, int]] = set()
        files: set[int] = set()
        budget = learned.MAX_BYTES
        cached = 0
        for item in record:
            node = hints.node_at(self, item.path)
            if not _has_content(node) or node.attr.ino in files:
                continue            # (a file named twice, or by two hardlinks, is looked at once)
            files.add(node.attr.ino)
            try:
                fc = self._chunks_of(node.attr.ino)
            except FuseError:
                continue
            if fc is None:
                continue
            wanted = set(item.offsets) if item.offsets is not None else None
            for chunk in fc.chunks:
                if (wanted is not None and chunk.chunk_offset not in wanted) or chunk.digest in seen:
                    continue
                seen.add(chunk.digest)
                if self.cache.contains(chunk.digest, chunk.chunk_size):
                    cached += 1
                    continue
                unit = (chunk.offset, chunk.end)
                if unit not in units:
                    if chunk.end - chunk.offset > budget:
                        break
                    budget -= chunk.end - chunk.offset
                    units.add(unit)
                out.append(chunk)
        if cached and self.learner is not None:
            self.learner.replace = False
        return out

    def read_quiet(self, ino: int, offset: int, size: int) -> bytes:
        """``read`` for the server's own guesses: not recorded as an access, nothing followed."""
        return self._read(self._node(ino), offset, size, quiet=True)[0]

    def fetch_ahead(self, ino: int, *, program: bool = False) -> None:
        """Fetch a file the workload is about to open (whole if small enough), then follow it (``hints``:
        an ELF file's libraries, a program's interpreter); at most once per file, in the background."""
        self._ahead_once(ino, self._fetch_and_follow, ino, program)

    def _ahead_once(self, ino: int, fn: Callable[..., object], *args: object) -> None:
        with self._ahead_lock:
            if ino in self._ahead:
                return
            self._ahead.add(ino)
        with contextlib.suppress(RuntimeError):     # closing
            self._ahead_pool.submit(fn, *args)

    def _fetch_and_follow(self, ino: int, program: bool) -> None:
        try:
            fc = self._chunks_of(ino)
            if fc is None:
                return
            if program and self._program_once(ino):
                self._fetch_program(ino)
            if fc.compressed <= self.config.whole_file_max:
                todo = [c for c in fc.chunks if not self.cache.contains(c.digest, c.chunk_size)]
                if todo:
                    self.stats.add(fetched_ahead=1)
                    self.remote.demand_begin()
                    try:
                        self.fetcher.get(todo, deadline=time.monotonic() + self.config.read_deadline)
                    finally:
                        self.remote.demand_end()
            if self.config.fetch_elf_deps:
                hints.follow(self, ino, program=program)
        except (FuseError, ChunkUnavailable) as err:
            log.debug("layer %s: fetching inode %d ahead failed: %s", self.digest, ino, err)
        except Exception:
            log.exception("layer %s: fetching inode %d ahead failed", self.digest, ino)

    def _fetch_program(self, ino: int) -> None:
        """Start fetching all of a program too big for ``whole_file_max`` that is being started (an
        executable file): in pieces of ``PREFETCH_PIECE`` compressed bytes, in file order, each its own
        request, ``PROGRAM_STREAMS`` at a time on a pool of their own, each readable as it arrives. A
        program faults its pages in wherever its code runs, one miss at a time (gcc's 12 MB ``cc1``, all of
        it read, four 4 MiB chunks one after the other): fetched whole, the link stays busy through its
        start. A piece is claimed only when its turn comes, so a demand read (of this program or any other
        file) never queues behind the pieces: a chunk not yet claimed is fetched by the read itself at
        once, one already claimed waits for its piece only. Bounded: a program of at most ``program_max``
        bytes, at most ``program_budget`` bytes per layer, each at most ``1/PROGRAM_CACHE_SHARE`` of the
        chunk cache's bound (none when the bound is unknown); returns without waiting."""
        node = self.inodes.get(ino)
        fc = self._chunks_of(ino)
        if node is None or fc is None or not node.attr.mode & 0o111 \
                or fc.compressed <= self.config.whole_file_max or node.attr.size > self._program_max:
            return
        todo = [c for c in fc.chunks if not self.cache.contains(c.digest, c.chunk_size)]
        cost = sum(c.chunk_size for c in {c.digest: c for c in todo}.values())
        with self._ahead_lock:
            if not todo or cost > self._program_budget:
                return
            self._program_budget -= cost
        self.stats.add(fetched_ahead=1)
        for piece in pieces(todo, PREFETCH_PIECE):
            try:
                self._program_pool.submit(self._program_piece, piece)
            except RuntimeError:        # closing
                return

    def _program_piece(self, piece: list[Chunk]) -> None:
        """One piece of a program fetched whole, at its turn: what nobody has fetched or claimed since
        (its deadline from then: a 64 MiB program's last pieces start long after its first)."""
        if self.fetcher.remote.closed.is_set():
            return
        mine = self.fetcher.claim_for_background(piece)
        if mine:    # (a demand read may have taken chunks out of the middle: no range over them)
            self.fetcher.run_group(mine, time.monotonic() + self.config.read_deadline, single_range=False)

    def _read(self, node: Node, offset: int, size: int, *, quiet: bool = False) -> tuple[bytes, bool]:
        """Bytes ``[offset, offset+size)`` of a file, and whether any had to be fetched. ``quiet``: the
        server's own read, not counted as the workload's."""
        ino = node.attr.ino
        if node.children is not None:
            raise FuseError(errno.EISDIR)
        file_size = node.attr.size if node.entry is not None else 0
        end = min(file_size, offset + size)
        if offset >= end:
            return b"", False
        fc = self._chunks_of(ino)
        if fc is None:
            return b"", False
        i = max(0, bisect.bisect_right(fc.starts, offset) - 1)
        wanted: list[tuple[Chunk, int, int]] = []
        while i < len(fc.chunks) and fc.chunks[i].chunk_offset < end:
            chunk = fc.chunks[i]
            lo = max(offset, chunk.chunk_offset) - chunk.chunk_offset
            hi = min(end, chunk.chunk_offset + chunk.chunk_size) - chunk.chunk_offset
            wanted.append((chunk, lo, hi))
            i += 1
        pieces: list[bytes | None] = []
        missing: list[Chunk] = []
        for chunk, lo, hi in wanted:
            data = self.fetcher.read_slice(chunk, lo, hi - lo)
            if data is None or len(data) != hi - lo:
                missing.append(chunk)
                pieces.append(None)
            else:
                pieces.append(data)
        hits = len(wanted) - len(missing)
        if hits and not quiet:
            self.stats.add(cache_hits=hits)
        if missing:
            if not quiet:
                self.stats.add(misses_waited=1)
                # after a long pause (a container started long after its pull) the burst that follows a
                # first miss should not wait for new connections either
                self.remote.warm(self.config.warm_connections, if_idle=REWARM_IDLE)
            self.remote.demand_begin()
            waited = time.monotonic()
            try:
                got = self.fetcher.get(missing, deadline=time.monotonic() + self.config.read_deadline,
                                       extra=self._neighbours(fc, missing),
                                       ahead=self._rest_of_file(fc, missing)
                                       + ([] if quiet else self._following(fc, missing)))
            except ChunkUnavailable as err:
                self.stats.add(read_errors=1)
                self.stats.error(f"read of {node.path!r} [{offset}, {end}): {err}")
                log.error("layer %s: read of %r [%d, %d) failed: %s",
                          self.digest, node.path, offset, end, err)
                raise FuseError(errno.EIO, str(err)) from err
            finally:
                self.remote.demand_end()
                if not quiet:
                    self.miss_wait.observe(time.monotonic() - waited)
            for k, (chunk, lo, hi) in enumerate(wanted):
                if pieces[k] is None:
                    pieces[k] = got[chunk.digest][lo:hi]
        if end == file_size and len(fc.chunks) > 1 and self.config.passthrough:
            self._maybe_assemble_later(ino)     # read to the end: likely complete, ready it for passthrough
        if self.config.readahead and len(fc.chunks) > 1:
            self._read_ahead(ino, fc, i, offset, end)
        return b"".join(p for p in pieces if p is not None), bool(missing)

    def _rest_of_file(self, fc: _FileChunks, missing: Sequence[Chunk]) -> list[Chunk]:
        """The file's other uncached chunks when the whole file is small enough to fetch at its first
        miss (``whole_file_max``): a program reading a file mostly reads all of it, and fetching the rest
        beside the chunks asked for saves a round trip per later miss."""
        if len(fc.chunks) <= len(missing) or fc.compressed > self.config.whole_file_max:
            return []
        wanted = {c.digest for c in missing}
        return [c for c in fc.chunks
                if c.digest not in wanted and not self.cache.contains(c.digest, c.chunk_size)]

    def _following(self, fc: _FileChunks, missing: Sequence[Chunk]) -> list[Chunk]:
        """The small files stored after a small file's missing chunks (``readahead``)."""
        return self.blob_readahead.following(missing, fc.compressed, self._by_offset, self._located,
                                             lambda c: self.cache.contains(c.digest, c.chunk_size))

    def _read_ahead(self, ino: int, fc: _FileChunks, next_index: int, offset: int, end: int) -> None:
        """When a file is read sequentially, start fetching its next chunks before they are asked for."""
        with self._readahead_lock:
            sequential = self._last_end.get(ino) == offset
            self._last_end[ino] = end
            if not sequential:
                return
            start = max(next_index, self._readahead_next.get(ino, 0))
            stop, size = start, 0
            while stop < len(fc.chunks) and size < self.config.readahead:
                size += fc.chunks[stop].chunk_size
                stop += 1
            if stop == start:
                return
            self._readahead_next[ino] = stop
        self.fetcher.fetch_async(fc.chunks[start:stop], deadline=time.monotonic() + self.config.read_deadline)

    def backing_path(self, ino: int) -> str | None:
        if self.access is not None and (opened := self.inodes.get(ino)) is not None:
            self.access.note(ino, opened.path)      # called at open: files never read are recorded too
        if not self.config.passthrough:
            return None
        node = self.inodes.get(ino)
        try:
            fc = self._chunks_of(ino)
        except FuseError:
            return None
        if node is None or fc is None:
            return None
        backing = self._backing_path(ino, fc, node)
        if backing is not None and self.learner is not None and not self.learner.closed:
            self.learner.note(ino, node.path, None)     # its reads will not reach the server
        return backing

    def _backing_path(self, ino: int, fc: _FileChunks, node: Node) -> str | None:
        if len(fc.chunks) == 1:     # the cached chunk is the whole file
            chunk = fc.chunks[0]
            with self._assemble_lock:
                backing = self._backing.get(chunk.digest)
                if backing is None:     # verified now if an earlier server wrote it; kept while it backs
                    backing = self.cache.pin(chunk.digest, chunk.chunk_size)
                    if backing is not None:
                        self._backing[chunk.digest] = backing
                if backing is not None:
                    self._backed_by.setdefault(chunk.digest, set()).add(ino)
            return backing
        kept = self._pin_assembled(ino)
        if kept is not None:
            return kept
        if not self._complete(fc):
            return None
        if node.attr.size <= ASSEMBLE_INLINE_MAX:
            return str(self.files_dir / str(ino)) if self._assemble(ino, pinned=True) else None
        self._maybe_assemble_later(ino)
        return None

    def backing_adopted(self, inos: Collection[int]) -> None:
        """A previous server registered these inodes' backing files on the connection this tree serves
        now (a restart): the kernel holds those files (this tree deleted the copies, or the cache may
        evict the chunk) until their ids go, so the cache counts their bytes until the layer closes (their
        open count is unknown: ``BackingFiles`` never lets them go idle, so no ``backing_closed``)."""
        for ino in inos:
            node = self.inodes.get(ino)
            if node is not None:    # a one-chunk file's backing file is its chunk's: counted once
                try:
                    fc = self._chunks_of(ino)
                except FuseError:   # (logged) its size is counted all the same
                    fc = None
                one = fc.chunks[0].digest if fc is not None and len(fc.chunks) == 1 else None
                self.cache.hold(str(ino), node.attr.size, one)

    def backing_closed(self, ino: int) -> None:
        """The kernel let go of ``ino``'s backing file (its idle id was unregistered): the copy it held
        is no longer pinned (evicted like any other), what an adopted id held is no longer counted."""
        fc = self._files.get(ino)
        with self._assemble_lock:
            if ino in self._file_pins:
                self._file_pins.discard(ino)
                self.cache.unpin_file(str(ino))
            if fc is not None and len(fc.chunks) == 1:      # its chunk, unless it backs another inode
                digest = fc.chunks[0].digest
                inos = self._backed_by.get(digest, set())
                inos.discard(ino)
                if not inos and self._backing.pop(digest, None) is not None:
                    self._backed_by.pop(digest, None)
                    self.cache.unpin(digest)
        self.cache.unhold(str(ino))

    def _pin_assembled(self, ino: int) -> str | None:
        """``files/<ino>`` pinned until the layer closes, if it is there and counted in the cache."""
        with self._assemble_lock:
            path = self.files_dir / str(ino)
            if ino in self._file_pins:
                if path.exists():
                    return str(path)
                self._file_pins.discard(ino)        # removed under us (the layer's state was freed)
                self.cache.unpin_file(str(ino))
            kept = self.cache.pin_file(str(ino))
            if kept is not None:
                self._file_pins.add(ino)
            return kept

    # -- complete files --

    def _complete(self, fc: _FileChunks) -> bool:
        return all(self.cache.contains(c.digest, c.chunk_size) for c in fc.chunks)

    def _maybe_assemble_later(self, ino: int) -> None:
        with self._assemble_lock:
            if ino in self._assembling or (self.files_dir / str(ino)).exists():
                return
            self._assembling.add(ino)
        try:
            self._assembler.submit(self._assemble_if_complete, ino)
        except RuntimeError:  # shutting down
            with self._assemble_lock:
                self._assembling.discard(ino)

    def _assemble_if_complete(self, ino: int) -> None:
        try:
            fc = self._files.get(ino)
            if fc is not None and self._complete(fc):
                self._assemble(ino)
        finally:
            with self._assemble_lock:
                self._assembling.discard(ino)

    def _assemble(self, ino: int, *, pinned: bool = False) -> bool:
        """Concatenate the cached chunks into ``files/<ino>`` (atomically) and count it in the cache
        (``pinned``: for a passthrough open, until the layer closes); False if one is missing. A full
        disk evicts the cache's least recently read chunks and copies for it, once."""
        size = self.inodes.nodes[ino].attr.size
        for attempt in range(2):
            try:
                return self._assemble_once(ino, pinned)
            except OSError as err:
                if attempt == 0 and err.errno in (errno.ENOSPC, errno.EDQUOT) and self.cache.make_room(size):
                    continue
                log.warning("layer %s: assembling inode %d failed: %s", self.digest, ino, err)
                return False
        return False

    def _assemble_once(self, ino: int, pinned: bool) -> bool:
        final = self.files_dir / str(ino)
        fd, tmp = tempfile.mkstemp(dir=self.files_dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self._files[ino].chunks:
                    src_path = self.cache.pin(chunk.digest, chunk.chunk_size)   # verified, not evicted
                    if src_path is None:
                        os.unlink(tmp)
                        return False
                    try:
                        with open(src_path, "rb") as src:
                            shutil.copyfileobj(src, out, 1 << 20)
                    except FileNotFoundError:
                        os.unlink(tmp)
                        return False
                    finally:
                        self.cache.unpin(chunk.digest)
                size = out.tell()
            if size != self.inodes.nodes[ino].attr.size:
                os.unlink(tmp)
                return False
            os.chmod(tmp, 0o444)
            with self._assemble_lock:
                pin = pinned and ino not in self._file_pins     # one pin per inode
                if not self.cache.keep_file(str(ino), Path(tmp), final, pinned=pin):
                    os.unlink(tmp)                              # the layer is closed
                    return False
                if pinned:
                    self._file_pins.add(ino)
            return True
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
