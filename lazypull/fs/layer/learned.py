"""Fetch-ahead learned on this node: what a layer's workload read first, replayed at its next cold mount.

An image nobody optimized has no prioritized files, so its start is a string of on-demand misses, one
round trip each. The first run of it on a node shows which chunks it reads: a :class:`Learner` notes,
for the first ``learn_window`` seconds after the layer's first access, each regular file read (the
offsets of the chunks read) or opened whole for passthrough, in first-access order. It is written, at
the end of the window or at unmount, to the node's learned store, ``<root>/learned/<hex>.json``
(``lazypull.layerdir``; 0700 directory, 0600 records, atomically). The next mount whose cache lacks
those chunks fetches them at mount time, in the order they were first read (``Background``), as
stargz-snapshotter's prioritized files would.

The store is keyed by layer digest and is not the layer's state dir, because ``rmi`` / ``image prune``
(and kubelet's image GC, all the time) delete that dir: the next cold start of the image, pulled
again, is exactly the start the record helps. It is bounded (:data:`MAX_RECORDS`,
:data:`MAX_STORE_BYTES`; the least recently used records go first) and emptied by
``lazypull image prune --learned``.

The record only steers *what* is fetched: each (path, chunk offset) is looked up in the layer's
verified TOC, and only that layer's own chunks, from its own blob, verified by digest, are ever
fetched; nothing in the record is served. A damaged or hostile record is ignored with a warning; at
worst it makes a mount fetch up to :data:`MAX_BYTES` of its layer early.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lazypull.fs.cache import digest_hex
from lazypull.layerdir import learned_record

log = logging.getLogger(__name__)

VERSION = 1
MAX_FILES = 4096                # files in a record (a start reading more is not a start)
MAX_OFFSETS = 4096              # chunk offsets per file (beyond: the file is fetched whole)
MAX_RECORD_SIZE = 1 << 20       # bytes of the record file
MAX_BYTES = 64 << 20            # compressed bytes one replay may fetch
MAX_RECORDS = 1024              # records in the node's store (least recently used removed first)
MAX_STORE_BYTES = 64 << 20      # bytes of all records in the store
TEMP_MAX_AGE = 600.0            # a record being written this long ago was left by a crash
LEGACY_NAME = "learned.json"    # where records were kept before the store: snapshots/<hex>/, moved at mount
_RECORD = re.compile(r"[0-9a-f]{64}\.json")


@dataclass(frozen=True)
class LearnedFile:
    """One file in first-access order: its path in the layer and the file offsets of the chunks read
    (None: the whole file)."""

    path: str
    offsets: tuple[int, ...] | None


@dataclass(frozen=True)
class Record:
    """A parsed record: who served the blob it was learned from ("" if it names none), and its files."""

    origin: str
    files: list[LearnedFile]


class Learner:
    """Notes the files of one layer a workload reads first; thread-safe, cheap once the window closed."""

    def __init__(self, path: Path, window: float, origin: str = "") -> None:
        self.path = path
        self.window = window
        self.origin = origin        # who served the blob: the record is replayed for it only
        self.replace = True         # False: a record exists and this mount was not cold; keep it
        self._files: dict[int, tuple[str, set[int] | None]] = {}    # ino -> (path, offsets); in order
        self._first: float | None = None
        self._lock = threading.Lock()
        self.closed = False

    def note(self, ino: int, path: str, offsets: list[int] | None) -> None:
        """``path`` (inode ``ino``) was read at these chunk offsets (None: opened whole)."""
        if self.closed:
            return
        now = time.monotonic()
        with self._lock:
            if self.closed:
                return
            if self._first is None:
                self._first = now
            elif now - self._first > self.window:
                self.closed = True
                threading.Thread(target=self.save, name="learned-save", daemon=True).start()
                return
            known = self._files.get(ino)
            if known is None:
                if len(self._files) >= MAX_FILES:
                    return
                self._files[ino] = (path, None if offsets is None else set(offsets))
            elif known[1] is not None:
                if offsets is None or len(known[1]) + len(offsets) > MAX_OFFSETS:
                    self._files[ino] = (path, None)
                else:
                    known[1].update(offsets)

    def files(self) -> list[LearnedFile]:
        with self._lock:
            return [LearnedFile(p, None if o is None else tuple(sorted(o))) for p, o in self._files.values()]

    def close(self) -> None:
        """Stop noting and write what was noted (at unmount)."""
        with self._lock:
            was_closed, self.closed = self.closed, True
        if not was_closed:
            self.save()

    def save(self) -> None:
        """Write the record (atomically, 0600), unless there is nothing to write or it must be kept;
        then prune the store to its bounds."""
        files = self.files()
        if not files or not self.replace:
            return
        doc = {"version": VERSION, "origin": self.origin,
               "files": [[f.path, None if f.offsets is None else list(f.offsets)] for f in files]}
        data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape")
        if len(data) > MAX_RECORD_SIZE:
            log.info("learned record %s would take %d bytes; not written", self.path, len(data))
            return
        try:
            _private_dir(self.path.parent)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=_temp_prefix(self.path))   # 0600
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as err:       # a full disk costs the next start its hint, nothing else
            log.warning("cannot write learned record %s: %s", self.path, err)
            return
        prune(self.path.parent)


def _temp_prefix(path: Path) -> str:
    """Names of ``path``'s record being written (one left by a crash is removed at the next mount)."""
    return f".{path.name}."


def _private_dir(path: Path) -> None:
    """The store's directory, 0700 (created so, or narrowed): the records show what workloads read."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{path} is not a directory") from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o700)


def prune(store: Path, max_records: int | None = None, max_bytes: int | None = None) -> int:
    """Remove the least recently used records (by mtime: a record is touched when a mount uses it)
    until at most ``max_records`` (default :data:`MAX_RECORDS`) of at most ``max_bytes`` (default
    :data:`MAX_STORE_BYTES`) in all are left, and records a crash left half-written; how many went."""
    max_records = MAX_RECORDS if max_records is None else max_records
    max_bytes = MAX_STORE_BYTES if max_bytes is None else max_bytes
    records: list[tuple[float, int, str]] = []
    removed = 0
    now = time.time()
    try:
        with os.scandir(store) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if _RECORD.fullmatch(entry.name) and stat.S_ISREG(st.st_mode):
                    records.append((st.st_mtime, st.st_size, entry.name))
                elif entry.name.startswith(".") and now - st.st_mtime > TEMP_MAX_AGE:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
    except OSError:
        return 0
    records.sort(reverse=True)          # most recently used first: what is kept, while it fits
    kept = total = 0
    for _, size, name in records:
        if kept < max_records and total + size <= max_bytes:
            kept += 1
            total += size
            continue
        with contextlib.suppress(FileNotFoundError):
            (store / name).unlink()
            removed += 1
    if removed:
        log.info("learned store %s: %d least recently used record(s) removed", store, removed)
    return removed


def forget(store: Path) -> int:
    """Remove every record of the store (``lazypull image prune --learned``); how many there were."""
    removed = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(store) as entries:
        for entry in entries:
            record = _RECORD.fullmatch(entry.name) is not None
            if record or entry.name.startswith("."):    # (and any record being written)
                with contextlib.suppress(OSError):      # gone, or not a file: not ours to remove
                    os.unlink(entry.path)
                    removed += record
    return removed


def record_path(root: Path, digest: str) -> Path:
    """Where the layer ``digest``'s learned record is kept (``lazypull.layerdir``)."""
    return learned_record(root, digest_hex(digest, "layer digest"))


def load(path: Path, origin: str | None = None, legacy: Path | None = None) -> list[LearnedFile] | None:
    """The record at ``path``, or None when there is none or it cannot be used (a one-line warning: the
    mount goes on without it, and learns a new one). Records a crashed server was writing are removed;
    a record used is marked recently used (its mtime), so the store's bound removes others first.

    ``origin``: who serves the blob now; a record learned from another origin is not used (replaying it
    would show that registry what an earlier workload on this node read, and in which order).
    ``legacy``: the layer's state dir, where older versions kept its record: moved into the store."""
    with contextlib.suppress(OSError):
        for stale in path.parent.glob(_temp_prefix(path) + "*"):
            stale.unlink(missing_ok=True)
    if legacy is not None:
        _adopt(legacy, path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("learned record %s: %s; ignored", path, err.strerror or err)
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ValueError("not a regular file")
            data = fh.read(MAX_RECORD_SIZE + 1)
            if len(data) > MAX_RECORD_SIZE:
                raise ValueError(f"larger than {MAX_RECORD_SIZE} bytes")
            record = parse(data)
            if origin is not None and record.origin != origin:
                log.info("learned record %s was learned from another origin; not used for %s", path, origin)
                return None
            with contextlib.suppress(OSError):
                os.utime(fh.fileno())       # recently used: kept by the store's bound
        return record.files
    except (OSError, ValueError) as err:
        log.warning("learned record %s: %s; ignored", path, err)
        return None


def _adopt(layer_dir: Path, path: Path) -> None:
    """Move a record an older version kept in the layer's state dir into the store (unless the store
    has one already), and drop what that version left half-written."""
    old = layer_dir / LEGACY_NAME
    with contextlib.suppress(OSError):
        for stale in layer_dir.glob(f".{LEGACY_NAME}.*"):
            stale.unlink(missing_ok=True)
    try:
        if not os.path.lexists(old):
            return
        if os.path.lexists(path) or not stat.S_ISREG(os.lstat(old).st_mode):
            old.unlink()
            return
        _private_dir(path.parent)
        os.replace(old, path)
    except OSError as err:
        log.warning("learned record %s: cannot move it to %s: %s", old, path, err.strerror or err)


def parse(data: bytes) -> Record:
    """A record's origin and files; ValueError naming what is wrong."""
    try:
        doc = json.loads(data.decode("utf-8", "surrogateescape"))
    except RecursionError:      # (not a ValueError: nested deeper than the decoder goes)
        raise ValueError("nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} learned record")
    origin = doc.get("origin", "")
    if not isinstance(origin, str):
        raise ValueError("'origin' is not a string")
    items = doc.get("files")
    if not isinstance(items, list) or len(items) > MAX_FILES:
        raise ValueError(f"'files' must be a list of at most {MAX_FILES} entries")
    out: list[LearnedFile] = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError("an entry is not [path, offsets]")
        offsets = item[1]
        if offsets is not None and not (isinstance(offsets, list) and len(offsets) <= MAX_OFFSETS
                                        and all(type(o) is int and o >= 0 for o in offsets)):
            raise ValueError(f"offsets of {item[0][:100]!r} are not a list of at most {MAX_OFFSETS} "
                             f"non-negative integers")
        out.append(LearnedFile(item[0], None if offsets is None else tuple(offsets)))
    return Record(origin, out)


__all__ = ["MAX_BYTES", "MAX_RECORDS", "MAX_STORE_BYTES", "LearnedFile", "Learner", "Record", "forget",
           "load", "parse", "prune", "record_path"]
