"""The on-disk chunk cache: verified, uncompressed chunks, one namespace per layer blob.

Layout: ``<dir>/<layer blob hex>/<chunk digest hex>``. The read path of a layer sees only its own
namespace (:class:`ChunkStore`, from :meth:`DirectoryCache.layer`): a chunk is there only if it was
decoded from *that* blob and matched its chunkDigest. A hostile TOC claiming the chunkDigest of a file in
another image therefore cannot be served that image's bytes, nor learn whether this node has seen them
(issue 9). The blob digest fixes the blob's bytes, so every image whose registry serves the blob shares
the namespace, as stargz-snapshotter's per-layer cache does.

The cache is bounded (``FsConfig.cache_max_bytes``): past the bound, the least recently read chunks that
no open file pins are deleted. The whole-file copies a layer assembles from its chunks for FUSE
passthrough (``snapshots/<hex>/files/<ino>``) use the same disk, so they count against the same bound
and are evicted the same way (:meth:`ChunkStore.keep_file`), except while a passthrough id may hold
them; a closed layer's are deleted. The files the kernel holds for ids a restarted server adopted are
counted too (:meth:`ChunkStore.hold`): deleted or not, their blocks stay allocated. A write that
fails for want of space evicts about what it needs (plus a few chunks) and is tried again; one that
still fails (disk full of other things, I/O error) is logged with its path and skipped:
the chunk is still served from memory, so reads go on while the disk is full.

Files are written to a temporary name and renamed, without fsync (a sync per chunk would cost every
miss): instead every chunk this process did not write (an earlier server's, maybe from before a power
loss, or another process's) is hashed at its first use, and a chunk that does not match its digest is
deleted and fetched again. Chunks written by this process were verified before they were written.

Opening the cache does not wait for its directory to be read: a walk in the background (seconds with
100k chunks on a cold disk) indexes what an earlier server left, oldest first, and until it is done the
bound applies to what is indexed (what this server wrote and read, and what the walk found so far), the
free-space reserve to the disk itself. The same walk deletes the copies a killed server left behind.

Nothing large is deleted under the cache's lock (every read takes it): an evicted or released copy is
renamed to a ``.trash-`` name under the lock and unlinked after it; a crash in between leaves only
``.trash-`` names, which the next start deletes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from lazypull import layerdir
from lazypull.errors import MountError

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")
_HEX = re.compile(r"[0-9a-f]{64}")

AUTO_FRACTION = 0.10            # default bound: this share of the cache's filesystem ...
AUTO_CAP = 10 << 30             # ... but at most 10 GiB
LOW_WATER = 0.9                 # eviction goes down to this share of the bound (not one chunk per write)
ROOM_FACTOR = 4                 # disk full: free what the failed write needs times this (a few chunks)
ROOM_TRIES = 4                  # ... and try the write again up to this many times
RESERVE_FRACTION = 0.02         # a write never takes the filesystem's free space below this share ...
RESERVE_CAP = 1 << 30           # ... (at most 1 GiB): it is left to the containers' own writes
RESERVE_SLACK = 64 << 20        # free space this far above the reserve is trusted for what we write ...
RESERVE_RECHECK = 1.0           # ... for this many seconds, without asking statvfs again
BLOCK = 4096                    # chunks are counted in whole filesystem blocks, as they use the disk
MERGE_BATCH = 4096              # the start walk adds what it found this many entries per lock hold
TRASH = ".trash-"               # a file or directory being deleted (renamed under the lock)

_Key = tuple[str, str]          # (layer hex, chunk hex)


def digest_hex(digest: str, what: str = "digest") -> str:
    """``sha256:<hex>`` -> ``<hex>``, refusing anything else: the hex names a file or a directory."""
    m = _SHA256.fullmatch(digest)
    if m is None:
        raise MountError(f"not a sha256 {what}: {digest!r}")
    return m.group(1)


def default_max_bytes(directory: Path) -> int:
    """The default bound: 10% of the filesystem holding the cache, at most 10 GiB.

    A share of the filesystem, because the cache lives beside containerd's content, the containers'
    upper directories and logs (kubelet starts evicting pods when less than 10-15% of the node's disk is
    free); a cap, because a lazy image's working set is tens of MiB (docs/benchmarks.md), so 10 GiB holds
    the working sets of a hundred images and more cache buys little.
    """
    try:
        st = os.statvfs(directory)
    except OSError:
        return AUTO_CAP
    return max(BLOCK, min(AUTO_CAP, int(st.f_blocks * st.f_frsize * AUTO_FRACTION)))


def stored_bytes(directory: Path, digest: str) -> int:
    """Bytes of a layer's chunks on disk in the cache ``directory``, without opening the cache (for
    ``lazypull images``: what a lazy layer holds locally). Temporary files are not counted."""
    total = 0
    with contextlib.suppress(OSError), os.scandir(directory / digest_hex(digest, "layer digest")) as it:
        for entry in it:
            if _HEX.fullmatch(entry.name):
                with contextlib.suppress(OSError):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def _blocks(size: int) -> int:
    return max(BLOCK, (size + BLOCK - 1) // BLOCK * BLOCK)


class ChunkStore(Protocol):
    """The verified chunks of one layer: what the lazy read path may serve. Thread-safe."""

    def contains(self, digest: str, size: int) -> bool:
        """Whether the whole chunk is stored (not an access: LRU order is unchanged)."""
        ...

    def get(self, digest: str, size: int) -> bytes | None:
        """The chunk's bytes, or None when absent or damaged (a damaged copy is deleted)."""
        ...

    def read(self, digest: str, size: int, offset: int, length: int) -> bytes | None:
        """Bytes ``[offset, offset+length)`` of a stored chunk of ``size`` bytes, or None."""
        ...

    def put(self, digest: str, data: bytes) -> bool:
        """Store verified bytes; False when they could not be written (logged; the caller has them)."""
        ...

    def pin(self, digest: str, size: int) -> str | None:
        """Keep a stored, verified chunk from eviction and give its file (for passthrough or copying);
        None when it is not stored. Each pin is undone by one :meth:`unpin`."""
        ...

    def unpin(self, digest: str) -> None:
        ...

    def release(self) -> None:
        """Undo every pin still held through this store (the layer is closed); later puts cache nothing.
        Its whole-file copies are deleted (the next mount of the layer makes its own)."""
        ...

    def keep_file(self, name: str, written: Path, final: Path, *, pinned: bool) -> bool:
        """Rename ``written``, a whole-file copy just assembled from this layer's chunks, to ``final``
        and count it against the bound; evicted (deleted) like a chunk while unpinned. ``pinned``: pinned
        once already. False (nothing renamed) when the layer is closed."""
        ...

    def make_room(self, size: int) -> bool:
        """The disk is full: evict the least recently read chunks and copies no one pins until ``size``
        bytes are free (for a copy being assembled); False when there was nothing to evict."""
        ...

    def pin_file(self, name: str) -> str | None:
        """Keep a counted copy from eviction (a passthrough open may hold it) and give its path; None when
        it is not counted (never kept, or evicted). Each pin is undone by one :meth:`unpin_file`."""
        ...

    def unpin_file(self, name: str) -> None:
        ...

    def hold(self, name: str, size: int, chunk: str | None = None) -> None:
        """Count ``size`` bytes the kernel holds for the file ``name`` (a backing file an earlier server
        registered for passthrough: its blocks stay allocated, deleted or not, while the id lasts),
        never evicted, until :meth:`unhold` or the layer is released. ``chunk``: the file is that
        chunk of this layer (a one-chunk file is backed by the chunk's own file): pinned if stored, so
        its blocks count once, not as a chunk and again as held."""
        ...

    def unhold(self, name: str) -> None:
        """The kernel let go of what :meth:`hold` counted (absent: nothing)."""
        ...

    @property
    def size(self) -> int:
        """Bytes stored for this layer (in filesystem blocks)."""
        ...


class DirectoryCache:
    """``<dir>/<layer hex>/<chunk hex>`` files with a size bound, LRU eviction, pins and verification.

    One per mount server (its in-memory index is the server's); other processes using the same directory
    are tolerated: a file deleted under it is noticed and dropped from the index at its next use.
    ``copies``: the directory of the layers' state (``<root>/snapshots``) whose ``<hex>/files/`` hold the
    whole-file copies; given, the start walk deletes the copies of every layer not opened here (a killed
    server's: a layer's next mount assembles its own again)."""

    def __init__(self, directory: Path, max_bytes: int = 0, *, copies: Path | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_bytes = max_bytes or default_max_bytes(self.dir)
        self._copies = copies
        self._lock = threading.Lock()
        self._lru: OrderedDict[_Key, int] = OrderedDict()   # oldest access first; value: bytes on disk
        self._unverified: set[_Key] = set()                 # found on disk at start, not hashed yet
        self._pins: Counter[_Key] = Counter()
        self._files: dict[_Key, Path] = {}                  # counted whole-file copies, not chunks
        self._held: set[_Key] = set()                       # bytes the kernel holds (see hold), pinned
        self._open: Counter[str] = Counter()                # layers opened here (their copies are live)
        self._dropped: set[_Key] | None = set()             # forgotten while the start walk runs
        self._dropped_layers: set[str] | None = set()       # namespaces deleted meanwhile
        self._total = 0
        self._trash_seq = 0
        self._room = (0, 0.0)       # free space beyond reserve + slack at the last statvfs, and when
        self.evicted = 0            # chunks deleted to stay under the bound
        self.write_errors = 0       # chunks that could not be written (served from memory)
        self.corrupt = 0            # chunks found damaged on disk and deleted
        self._scanned = threading.Event()
        self._tmp = f".tmp-{os.getpid()}-"  # this process's temporary files (the start walk spares them)
        threading.Thread(target=self._start, name="chunk-cache-walk", daemon=True).start()

    # -- the namespaces --

    def layer(self, digest: str) -> LayerChunks:
        """The chunk store of one layer blob (``sha256:<hex>``); its copies are live until it is
        released (the start walk leaves them alone)."""
        lhex = digest_hex(digest, "layer digest")
        with self._lock:
            self._open[lhex] += 1
        return LayerChunks(self, lhex)

    def wait_scanned(self, timeout: float | None = None) -> bool:
        """Wait until the start walk indexed the directory (and deleted what a killed server left)."""
        return self._scanned.wait(timeout)

    def layer_dir(self, digest: str) -> Path:
        return self.dir / digest_hex(digest, "layer digest")

    def layers(self) -> list[str]:
        """Digests of the layers with a namespace on disk."""
        with contextlib.suppress(FileNotFoundError):
            return sorted("sha256:" + e.name for e in os.scandir(self.dir)
                          if _HEX.fullmatch(e.name) and e.is_dir(follow_symlinks=False))
        return []

    def drop_layer(self, digest: str) -> int:
        """Delete a layer's namespace (its image is gone); bytes freed (pinned chunks are kept: a pin
        indexes its chunk, so what the start walk has not indexed yet is not pinned)."""
        lhex = digest_hex(digest, "layer digest")
        with self._lock:
            if self._dropped_layers is not None:    # the start walk must not index what it listed
                self._dropped_layers.add(lhex)
            keys = [k for k in self._lru if k[0] == lhex]
            pinned = {k for k in keys if self._pins[k] > 0}
            paths = {k: self._path(k) for k in keys}
            freed = 0
            for key in keys:
                if key not in pinned:
                    freed += self._forget(key)
        if pinned:
            for key in keys:
                if key not in pinned:
                    with contextlib.suppress(OSError):
                        os.unlink(paths[key])
            return freed
        shutil.rmtree(self.dir / lhex, ignore_errors=True)
        return freed

    @property
    def size(self) -> int:
        """Bytes stored (in filesystem blocks)."""
        return self._total

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"bytes": self._total, "max_bytes": self.max_bytes,
                    "chunks": len(self._lru) - len(self._files) - len(self._held),
                    "files": len(self._files), "held": len(self._held),
                    "pinned": sum(1 for n in self._pins.values() if n > 0), "evicted": self.evicted,
                    "write_errors": self.write_errors, "corrupt": self.corrupt}

    # -- per chunk (LayerChunks calls these) --

    def _path(self, key: _Key) -> Path:
        return self._files.get(key) or self.dir / key[0] / key[1]

    # -- whole-file copies (LayerChunks calls these) --

    def _keep_file(self, store: LayerChunks, key: _Key, written: Path, final: Path, pinned: bool) -> bool:
        size = _blocks(written.stat().st_size)
        with self._lock:        # renamed and counted at once: an eviction never sees one without the other
            if store._released:     # (set under this lock: a release in between deleted the others)
                return False
            os.replace(written, final)
            if pinned:
                self._pins[key] += 1
            self._files[key] = final
            old = self._lru.pop(key, None)
            self._total += size - (old or 0)
            self._lru[key] = size
            over = self._total > self.max_bytes
        if over:
            self._evict(int(self.max_bytes * LOW_WATER))
        return True

    def _pin_file(self, key: _Key) -> str | None:
        with self._lock:
            path = self._files.get(key)
            if path is None or key not in self._lru:
                return None
            self._pins[key] += 1
            self._lru.move_to_end(key)
        if not path.exists():       # deleted under us (another process, a prune): not there any more
            self._unpin(key)
            self._vanished(key)
            return None
        return str(path)

    def _release_layer(self, layer_hex: str) -> None:
        """The layer is closed: its copies are deleted (nothing of ours reads them any more; a
        passthrough id the kernel still holds keeps its own reference to the file), so none stays on
        disk uncounted; its next mount assembles them again."""
        with self._lock:
            self._open[layer_hex] -= 1
            if self._open[layer_hex] <= 0:
                del self._open[layer_hex]
            trash = []
            for key in [k for k in self._files if k[0] == layer_hex]:
                path = self._files[key]
                self._pins.pop(key, None)
                self._forget(key)
                trash.append(self._detach(path))
            for key in [k for k in self._held if k[0] == layer_hex]:
                self._pins.pop(key, None)
                self._forget(key)
        _unlink_all(trash)

    def _hold(self, store: LayerChunks, key: _Key, size: int) -> None:
        with self._lock:
            if key in self._lru or store._released:     # (a released layer's holds are dropped)
                return
            self._held.add(key)
            self._pins[key] += 1
            self._lru[key] = _blocks(size)
            self._total += _blocks(size)
            over = self._total > self.max_bytes
        if over:
            self._evict(int(self.max_bytes * LOW_WATER))

    def _unhold(self, key: _Key) -> None:
        with self._lock:
            if key in self._held:
                self._pins.pop(key, None)
                self._forget(key)

    def _contains(self, key: _Key, size: int) -> bool:
        try:
            ok = self._path(key).stat().st_size == size
        except FileNotFoundError:
            ok = False
        if not ok:
            with self._lock:
                if key in self._lru and self._pins[key] == 0:
                    self._forget(key)
        return ok

    def _open_verified(self, key: _Key, size: int) -> int | None:
        """An open fd of the whole, verified chunk file (an access); None when absent or damaged."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._vanished(key)
            return None
        try:
            if os.fstat(fd).st_size != size:
                os.close(fd)
                self._damaged(key, f"{size} bytes expected")
                return None
            with self._lock:    # not indexed: left by an earlier server (not walked yet) or another process
                unverified = key in self._unverified or key not in self._lru
            if unverified:
                h = hashlib.sha256()
                for off in range(0, size, 1 << 20):
                    h.update(os.pread(fd, min(1 << 20, size - off), off))
                if h.hexdigest() != key[1]:
                    os.close(fd)
                    self._damaged(key, "content does not match its digest")
                    return None
            with self._lock:
                self._unverified.discard(key)
                if key in self._lru:
                    self._lru.move_to_end(key)
                else:       # not walked yet, or another process's: counted from now on
                    self._lru[key] = _blocks(size)
                    self._total += _blocks(size)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    def _get(self, key: _Key, size: int) -> bytes | None:
        fd = self._open_verified(key, size)
        if fd is None:
            return None
        try:
            return os.pread(fd, size, 0) if size else b""
        finally:
            os.close(fd)

    def _read(self, key: _Key, size: int, offset: int, length: int) -> bytes | None:
        fd = self._open_verified(key, size)
        if fd is None:
            return None
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def _pin(self, key: _Key, size: int) -> str | None:
        with self._lock:
            self._pins[key] += 1        # before the check, so eviction cannot slip in between
        fd = self._open_verified(key, size)
        if fd is None:
            self._unpin(key)
            return None
        os.close(fd)
        return str(self._path(key))

    def _unpin(self, key: _Key) -> None:
        with self._lock:
            self._pins[key] -= 1
            if self._pins[key] <= 0:
                del self._pins[key]

    def _put(self, key: _Key, data: bytes, store: LayerChunks | None = None) -> bool:
        """Write and count a chunk; not for ``store`` released meanwhile (checked under the lock its
        release sets the flag under: its namespace may be deleted next)."""
        final = self._path(key)
        with self._lock:
            present = key in self._lru and key not in self._unverified
        if present:
            try:
                if final.stat().st_size == len(data):
                    return True
            except FileNotFoundError:
                pass
        need = _blocks(len(data))
        if not self._keep_reserve(need):
            return self._not_written(final, f"{os.strerror(errno.ENOSPC)} (beyond the reserve left "
                                            "to other writers)")
        for attempt in range(ROOM_TRIES + 1):
            try:
                self._write(final, data)
                break
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT) and attempt < ROOM_TRIES \
                        and self._make_room(need):
                    continue        # freed some of our own chunks: try again
                return self._not_written(final, err.strerror or str(err))
        with self._lock:
            released = store is not None and store._released
            if released:    # not counted, and not left on disk uncounted (unless the layer was
                #             opened again: the file may be its new store's, written but not counted yet)
                trash = None if key in self._lru or self._open[key[0]] else self._detach(final)
            else:
                self._unverified.discard(key)
                old = self._lru.pop(key, None)
                self._total += need - (old or 0)
                self._lru[key] = need
                over = self._total > self.max_bytes
        if released:
            _unlink_all([trash])
            return False
        if over:
            self._evict(int(self.max_bytes * LOW_WATER))
        return True

    def _write(self, final: Path, data: bytes) -> None:
        final.parent.mkdir(exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=self._tmp)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- bookkeeping --

    def _forget(self, key: _Key) -> int:
        """Drop a key from the index (lock held); its bytes."""
        size = self._lru.pop(key, 0)
        self._total -= size
        self._unverified.discard(key)
        self._files.pop(key, None)
        self._held.discard(key)
        if self._dropped is not None:   # the start walk must not index it again from a stale listing
            self._dropped.add(key)
        return size

    def _detach(self, path: Path) -> Path | None:
        """Rename ``path`` (a copy) to a ``.trash-`` name beside it (lock held; a rename is quick, an
        unlink of a big file is not); what to unlink after the lock, None if there is nothing."""
        trash = self._trash_path(path.parent)
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return None
        except OSError:
            return path         # cannot rename (?): unlinked after the lock all the same
        return trash

    def _trash_path(self, parent: Path) -> Path:
        """A ``.trash-<pid>-<n>`` name free in ``parent`` (lock held): one an earlier boot's process
        of the same pid left (a directory not empty refuses the rename) is stepped over."""
        while True:
            self._trash_seq += 1
            trash = parent / f"{TRASH}{os.getpid()}-{self._trash_seq}"
            if not os.path.lexists(trash):
                return trash

    def _vanished(self, key: _Key) -> None:
        with self._lock:
            if self._pins[key] == 0:
                self._forget(key)

    def _damaged(self, key: _Key, why: str) -> None:
        path = self._path(key)
        log.warning("chunk cache: %s is damaged (%s); deleted, it will be fetched again", path, why)
        with self._lock:
            self.corrupt += 1
            self._forget(key)
        with contextlib.suppress(OSError):
            path.unlink()

    def _not_written(self, final: Path, why: str) -> bool:
        """A chunk not cached: it is served from memory all the same; say so once in a while, naming
        the path. False, for ``put``."""
        with self._lock:
            self.write_errors += 1
            first = self.write_errors == 1 or self.write_errors % 1000 == 0
        log.log(logging.WARNING if first else logging.DEBUG,
                "chunk cache: cannot write %s (%s); serving the chunk without caching it "
                "(%d chunk(s) not cached so far)", final, why, self.write_errors)
        return False

    def _keep_reserve(self, need: int) -> bool:
        """Whether a write of ``need`` bytes leaves the reserve free (evicting our oldest files first if
        it would not). With a bound larger than the free space the cache would otherwise fill the disk
        to its last block, and the next container to write its upper directory or bundle would fail.
        Far from the reserve, one statvfs a second (not one per chunk) tells."""
        now = time.monotonic()
        with self._lock:
            room, when = self._room
            if need <= room and now - when < RESERVE_RECHECK:
                self._room = (room - need, when)
                return True
        try:
            st = os.statvfs(self.dir)
        except OSError:
            return True
        reserve = min(RESERVE_CAP, int(st.f_blocks * st.f_frsize * RESERVE_FRACTION))
        free = st.f_bavail * st.f_frsize
        with self._lock:
            self._room = (max(0, free - reserve - RESERVE_SLACK - need), now)
        if free - need >= reserve:
            return True
        self._make_room(need, reserve + need * ROOM_FACTOR)
        try:
            st = os.statvfs(self.dir)
        except OSError:
            return True
        return st.f_bavail * st.f_frsize - need >= reserve

    def _make_room(self, need: int, want: int = 0) -> bool:
        """The disk is full: evict the least recently read of our files until ``want`` bytes (default:
        ``need`` and a margin of a few more writes like it) are free (as statvfs says; at least
        ``need`` bytes are evicted, as the space may be a quota's); False when there was nothing to
        evict.

        Only that much: the bound may be larger than the disk (or the disk full of other things), and
        emptying the cache for one chunk would make every later read a miss."""
        want = want or need * ROOM_FACTOR
        try:
            st = os.statvfs(self.dir)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = 0
        with self._lock:
            target = self._total - max(need, want - free)
        return self._evict(max(0, target)) > 0

    def _evict(self, target: int) -> int:
        """Delete the least recently used unpinned chunks until at most ``target`` bytes are stored;
        the number deleted."""
        victims: list[_Key] = []
        in_use: list[_Key] = []
        with self._lock:
            total = self._total
            for key in self._lru:
                if total <= target:
                    break
                if self._pins[key] > 0:
                    in_use.append(key)
                    continue
                victims.append(key)
                total -= self._lru[key]
            doomed: list[Path | None] = []
            for key in victims:
                if key in self._files:
                    # renamed now, not unlinked after the lock: a copy assembled again and pinned
                    # meanwhile (the same path) must not be deleted by this stale choice
                    doomed.append(self._detach(self._files[key]))
                else:
                    doomed.append(self._path(key))
                self._forget(key)
            for key in in_use:      # pinned = in use: the next scan need not step over them again
                self._lru.move_to_end(key)
            self.evicted += len(victims)
        _unlink_all(doomed)
        if victims:
            log.info("chunk cache: evicted %d chunk(s), %d bytes stored (bound %d)",
                     len(victims), self._total, self.max_bytes)
        return len(victims)

    def _start(self) -> None:
        """The start walk (a thread): delete what a killed server left, index the rest."""
        try:
            self._sweep_copies()
            self._scan()
        except Exception:       # (an I/O error): what is not indexed is hashed and counted at first use
            log.exception("chunk cache: reading %s at start failed", self.dir)
        finally:
            with self._lock:
                self._dropped = self._dropped_layers = None
            self._scanned.set()

    def _sweep_copies(self) -> None:
        """Delete the copies of the layers not opened here (their ``files`` with what a crash between a
        rename and its unlink left in it), and ``.trash-`` names a killed sweep left. Each ``files`` is
        moved out of its layer's directory under the lock: a mount of that layer starting meanwhile
        keeps a copy it just made, and a prune of it (:meth:`drop_layer` first) finds it gone or
        untouched, never moving under its removal."""
        if self._copies is None:
            return
        doomed: list[Path | None] = []
        with contextlib.suppress(OSError), os.scandir(self._copies) as layers:
            for top in layers:
                if top.name.startswith(TRASH):
                    doomed.append(Path(top.path))
                    continue
                if not (_HEX.fullmatch(top.name) and top.is_dir(follow_symlinks=False)):
                    continue
                with self._lock:
                    if top.name not in self._open and top.name not in (self._dropped_layers or ()):
                        trash = self._trash_path(self._copies)
                        with contextlib.suppress(OSError):     # (none: nothing to delete)
                            os.rename(layerdir.files_dir(Path(top.path)), trash)
                            doomed.append(trash)
        _remove_all(doomed)

    def _scan(self) -> None:
        """Index what an earlier server left (unverified, oldest first by mtime, in front of what this
        server stored meanwhile); remove temporary files and the flat ``<chunk hex>`` files of the old
        layout, which say nothing of their layer."""
        found: list[tuple[float, _Key, int]] = []
        legacy = 0
        for top in os.scandir(self.dir):
            if top.is_file(follow_symlinks=False):
                if _HEX.fullmatch(top.name) or top.name.startswith(".tmp-"):
                    with contextlib.suppress(OSError):
                        os.unlink(top.path)
                    legacy += 1
                continue
            if not (_HEX.fullmatch(top.name) and top.is_dir(follow_symlinks=False)):
                continue
            with contextlib.suppress(OSError), os.scandir(top.path) as entries:
                for entry in entries:
                    if entry.name.startswith(".tmp-"):
                        if not entry.name.startswith(self._tmp):    # (not one a write of ours fills)
                            with contextlib.suppress(OSError):
                                os.unlink(entry.path)
                        continue
                    if not _HEX.fullmatch(entry.name):
                        continue
                    with contextlib.suppress(OSError):
                        st = entry.stat(follow_symlinks=False)
                        found.append((st.st_mtime, (top.name, entry.name), _blocks(st.st_size)))
        if legacy:
            log.info("chunk cache: removed %d file(s) of the old shared layout from %s", legacy, self.dir)
        found.sort(reverse=True)        # newest first: each goes to the front, so the oldest ends first
        for i in range(0, len(found), MERGE_BATCH):
            self._index_found(found[i:i + MERGE_BATCH])
        with self._lock:
            over = self._total > self.max_bytes
        if over:
            self._evict(int(self.max_bytes * LOW_WATER))

    def _index_found(self, found: Iterable[tuple[float, _Key, int]]) -> None:
        """Index what the start walk found, unless this server stored, read or dropped it meanwhile."""
        with self._lock:
            dropped, layers = self._dropped or set(), self._dropped_layers or set()
            for _, key, size in found:
                if key in self._lru or key in dropped or key[0] in layers:
                    continue
                self._lru[key] = size
                self._lru.move_to_end(key, last=False)
                self._unverified.add(key)
                self._total += size


def _remove(path: Path | None) -> None:
    """Delete a file or a directory tree (absent is fine)."""
    if path is None:
        return
    try:
        os.unlink(path)
    except IsADirectoryError:
        shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass


def _remove_all(paths: Iterable[Path | None]) -> None:
    for path in paths:
        _remove(path)


def _unlink_all(paths: Iterable[Path | None]) -> None:
    for path in paths:
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


class LayerChunks:
    """One layer's namespace of a :class:`DirectoryCache` (implements :class:`ChunkStore`)."""

    def __init__(self, cache: DirectoryCache, layer_hex: str) -> None:
        self.cache = cache
        self.layer = layer_hex
        self._pins: Counter[str] = Counter()
        self._pins_lock = threading.Lock()
        self._released = False      # the layer is closed: a fetch finishing late caches nothing (set
        #                             under the cache's lock, which keep_file and hold check it under)
        self._held_chunks: dict[str, str] = {}     # hold()'s name -> the chunk it pinned instead

    def _key(self, digest: str) -> _Key:
        return (self.layer, digest_hex(digest, "chunk digest"))

    def path(self, digest: str) -> Path:
        """Where the chunk's file is (or would be); diagnostics and tests; the read path uses ``pin``."""
        return self.cache._path(self._key(digest))

    def contains(self, digest: str, size: int) -> bool:
        return self.cache._contains(self._key(digest), size)

    def get(self, digest: str, size: int) -> bytes | None:
        return self.cache._get(self._key(digest), size)

    def read(self, digest: str, size: int, offset: int, length: int) -> bytes | None:
        return self.cache._read(self._key(digest), size, offset, length)

    def put(self, digest: str, data: bytes) -> bool:
        if self._released:          # its namespace may be gone already (rmi, containerd's GC)
            return False
        return self.cache._put(self._key(digest), data, self)

    def pin(self, digest: str, size: int) -> str | None:
        path = self.cache._pin(self._key(digest), size)
        if path is None:
            return None
        with self._pins_lock:   # (release swaps _pins and sets _released under it: one or the other)
            if not self._released:
                self._pins[digest] += 1
                return path
        self.cache._unpin(self._key(digest))    # released: nobody would undo this pin
        return None

    def unpin(self, digest: str) -> None:
        with self._pins_lock:
            if self._pins[digest] <= 0:
                return
            self._pins[digest] -= 1
            if not self._pins[digest]:
                del self._pins[digest]
        self.cache._unpin(self._key(digest))

    def release(self) -> None:
        with self._pins_lock:
            with self.cache._lock:
                released, self._released = self._released, True
            pins, self._pins = self._pins, Counter()
            self._held_chunks.clear()
        for digest, n in pins.items():
            for _ in range(n):
                self.cache._unpin(self._key(digest))
        if not released:
            self.cache._release_layer(self.layer)

    def _file_key(self, name: str) -> _Key:
        return (self.layer, "file:" + name)     # never a chunk's hex: no clash with a chunk's key

    def keep_file(self, name: str, written: Path, final: Path, *, pinned: bool) -> bool:
        return self.cache._keep_file(self, self._file_key(name), written, final, pinned)

    def make_room(self, size: int) -> bool:
        return self.cache._make_room(_blocks(size), _blocks(size))

    def hold(self, name: str, size: int, chunk: str | None = None) -> None:
        if chunk is not None and self.pin(chunk, size) is not None:
            with self._pins_lock:
                if not self._released and name not in self._held_chunks:
                    self._held_chunks[name] = chunk
                    return
            self.unpin(chunk)       # released meanwhile (its pins are undone), or held already
            return
        self.cache._hold(self, (self.layer, "held:" + name), size)

    def unhold(self, name: str) -> None:
        with self._pins_lock:
            chunk = self._held_chunks.pop(name, None)
        if chunk is not None:
            self.unpin(chunk)
        else:
            self.cache._unhold((self.layer, "held:" + name))

    def pin_file(self, name: str) -> str | None:
        return self.cache._pin_file(self._file_key(name))

    def unpin_file(self, name: str) -> None:
        self.cache._unpin(self._file_key(name))

    @property
    def size(self) -> int:
        with self.cache._lock:
            return sum(n for (lhex, _), n in self.cache._lru.items() if lhex == self.layer)
