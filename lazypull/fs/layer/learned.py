"""Fetch-ahead learned on this node: what a layer's workload read first, replayed at its next cold mount.

An image nobody optimized has no prioritized files, so its start is a string of on-demand misses, one
round trip each. The first run of it on a node shows which chunks it reads: a :class:`Learner` notes,
for the first ``learn_window`` seconds after the layer's first access, each regular file read (the
offsets of the chunks read) or opened whole for passthrough, in first-access order. It is written, at
the end of the window or at unmount, to :data:`RECORD_NAME` in the layer's state dir
(``snapshots/<hex>/``, beside ``toc.record``; 0600, atomically, bounded). The next mount whose cache
lacks those chunks (the cache was evicted or pruned, the state dir kept) fetches them at mount time,
in the order they were first read (``Background``), as stargz-snapshotter's prioritized files would.

The record only steers *what* is fetched: each (path, chunk offset) is looked up in the layer's
verified TOC, and only that layer's own chunks, from its own blob, verified by digest, are ever
fetched; nothing in the record is served. A damaged or hostile record can at worst make a mount fetch
up to :data:`MAX_BYTES` of its layer early.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RECORD_NAME = "learned.json"
VERSION = 1
MAX_FILES = 4096                # files in a record (a start reading more is not a start)
MAX_OFFSETS = 4096              # chunk offsets per file (beyond: the file is fetched whole)
MAX_RECORD_SIZE = 1 << 20       # bytes of the record file
MAX_BYTES = 64 << 20            # compressed bytes one replay may fetch
TEMP_PREFIX = f".{RECORD_NAME}."    # a record being written (left behind by a crash: removed at mount)


@dataclass(frozen=True)
class LearnedFile:
    """One file in first-access order: its path in the layer and the file offsets of the chunks read
    (None: the whole file)."""

    path: str
    offsets: tuple[int, ...] | None


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
        """Write the record (atomically, 0600), unless there is nothing to write or it must be kept."""
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
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=TEMP_PREFIX)   # 0600
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


def record_path(layer_dir: Path) -> Path:
    """Where a layer's learned record is kept."""
    return layer_dir / RECORD_NAME


def load(layer_dir: Path, origin: str | None = None) -> list[LearnedFile] | None:
    """The layer's learned record, or None when there is none or it cannot be used (logged: the mount
    goes on without it, and learns a new one). Records a crashed server was writing are removed.

    ``origin``: who serves the blob now; a record learned from another origin is not used (replaying it
    would show that registry what an earlier workload on this node read, and in which order)."""
    path = record_path(layer_dir)
    with contextlib.suppress(OSError):
        for stale in layer_dir.glob(TEMP_PREFIX + "*"):
            stale.unlink(missing_ok=True)
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
        files = parse(data)
        if origin is not None and _origin(data) != origin:
            log.info("learned record %s was learned from another origin; not used for %s", path, origin)
            return None
        return files
    except (OSError, ValueError) as err:
        log.warning("learned record %s: %s; ignored", path, err)
        return None


def _origin(data: bytes) -> str:
    """The origin a (parsed, so valid) record was learned from; "" for records that name none."""
    doc = json.loads(data.decode("utf-8", "surrogateescape"))
    origin = doc.get("origin", "")
    return origin if isinstance(origin, str) else ""


def parse(data: bytes) -> list[LearnedFile]:
    """The files of a record; ValueError naming what is wrong."""
    doc = json.loads(data.decode("utf-8", "surrogateescape"))
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} learned record")
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
    return out


__all__ = ["MAX_BYTES", "RECORD_NAME", "TEMP_PREFIX", "LearnedFile", "Learner", "load", "parse",
           "record_path"]
