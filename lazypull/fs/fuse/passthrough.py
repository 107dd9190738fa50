"""FUSE passthrough (kernel 6.9+): reads of an opened file go straight to a local backing file.

The server registers a backing file with ``FUSE_DEV_IOC_BACKING_OPEN`` on the ``/dev/fuse`` fd and
answers OPEN with ``FOPEN_PASSTHROUGH`` and the returned backing id. The kernel binds one backing file
to an inode while it is open, so every open of that inode (the kernel's own open during an overlayfs
copy-up included) must carry the same id: ids are therefore per inode and reference-counted by the
opens. A layer never changes, so an id outlives its inode's last open (up to ``IDLE_KEPT`` idle ids
per mount, least recently opened closed first with ``FUSE_DEV_IOC_BACKING_CLOSE``): opening the file
again costs one OPEN reply instead of opening and registering the backing file again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import struct
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from lazypull.fs.fuse import protocol

log = logging.getLogger(__name__)

#: The first kernel whose FUSE has passthrough (FUSE_PASSTHROUGH in INIT, protocol 7.40).
FIRST_KERNEL = (6, 9)
#: Backing ids kept registered per mount while no open uses them (each holds a kernel file reference
#: on the backing file, ~1-2 KiB of kernel memory with its inode; no file descriptor).
IDLE_KEPT = 16384


def kernel_version(release: str | None = None) -> tuple[int, int] | None:
    """(major, minor) of ``release`` (default: the running kernel's, ``uname -r``), None if unreadable."""
    match = re.match(r"(\d+)\.(\d+)", os.uname().release if release is None else release)
    return (int(match[1]), int(match[2])) if match else None


def unavailable_reason(release: str | None = None) -> str:
    """Why a mount that asked for passthrough did not get it, for the one-line log a user sees.

    The kernel's FUSE_INIT offer decides (a kernel built without CONFIG_FUSE_PASSTHROUGH offers none
    even when new enough); the version only makes the message say what would change it.
    """
    release = os.uname().release if release is None else release
    version = kernel_version(release)
    if version is not None and version < FIRST_KERNEL:
        return f"kernel {release} has no FUSE passthrough (it needs {FIRST_KERNEL[0]}.{FIRST_KERNEL[1]}+)"
    return f"kernel {release} did not offer FUSE passthrough in FUSE_INIT (CONFIG_FUSE_PASSTHROUGH off?)"


@dataclass
class _Backing:
    backing_id: int
    opens: int
    note: int = 0       # the number of the note telling ``on_change`` of this id (0: none to tell)
    closing: bool = False   # unregistered, ``on_closed`` not told yet: no open takes it, none replaces it


class BackingFiles:
    """Backing ids of the inodes open in passthrough mode (or opened so lately that their id is kept),
    for one ``/dev/fuse`` fd.

    ``on_change`` (the keeper: a socket round trip, up to its reply timeout when it hangs) is never
    called under a lock a FUSE thread needs: registering and unregistering queue a numbered note, and
    the thread that queued it tells the queue in order (:meth:`announce`, or ``release`` itself) after
    letting go of its locks; one thread tells at a time, so the notes of one inode (id, 0, next id...)
    arrive in the order they happened. An id waiting to be told is not reused by a warm open (the
    thread reading /dev/fuse answers those and must not wait), and an evicted id stays registered
    until its removal is told (the keeper never holds an id the kernel already forgot). An evicted
    inode stays "closing" until ``on_closed`` has run: an id registered meanwhile would hold a file
    the stale news unpins, so an open waits for it (:meth:`wait_closed`, never on the reading thread)
    or, if it cannot wait, gets no id (:meth:`acquire` returns 0: served in cached mode).
    """

    def __init__(self, dev_fd: int, idle_kept: int = IDLE_KEPT) -> None:
        self._dev_fd = dev_fd
        self._by_inode: dict[int, _Backing] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()  # inodes whose id no open uses, oldest first
        self._idle_kept = idle_kept
        self._by_inode_lock = threading.Lock()
        self._told_cond = threading.Condition(self._by_inode_lock)
        #: notes not yet told, oldest first: (number, inode, id or 0, id to unregister once told or 0)
        self._notes: deque[tuple[int, int, int, int]] = deque()
        self._queued = 0            # notes numbered so far
        self._told = 0              # every note up to this number has been told
        self._telling = False       # a thread is telling the queue
        self._closing = 0           # entries of _by_inode marked closing
        #: told of every id registered (ino, id) and, before it is unregistered, (ino, 0): a server taking
        #: over the connection must answer opens of an inode in passthrough mode with that same id
        self.on_change: Callable[[int, int], None] | None = None
        #: told of each inode whose idle id was unregistered (after it was): the kernel holds its
        #: backing file no more (the tree lets the chunk cache evict it again)
        self.on_closed: Callable[[int], None] | None = None

    def adopt(self, ids: dict[int, int]) -> None:
        """Take over ids a previous server registered on this connection (``ino -> id``): opens of
        those inodes pass through with them. Their open count is unknown, so they stay registered."""
        with self._by_inode_lock:
            for ino, backing_id in ids.items():
                self._by_inode.setdefault(ino, _Backing(backing_id, 1))     # never back to 0: kept

    def __len__(self) -> int:
        with self._by_inode_lock:
            return len(self._by_inode)

    def is_open(self, ino: int) -> bool:
        """Whether ``ino`` has a backing id (open, kept or closing): an open does not ask the tree
        for a backing file (:meth:`acquire` reuses the id or, closing, refuses)."""
        with self._by_inode_lock:
            return ino in self._by_inode

    def is_closing(self, ino: int) -> bool:
        """Whether the id of ``ino`` is being unregistered (the tree not told yet): open it in cached
        mode, neither with that id nor with a new one."""
        with self._by_inode_lock:
            entry = self._by_inode.get(ino)
            return entry is not None and entry.closing

    def wait_closed(self, ino: int) -> None:
        """Return once the id of ``ino`` is not closing (its unregister and ``on_closed`` are done):
        then the tree is asked for its backing file afresh (it pins it again)."""
        with self._told_cond:
            while (entry := self._by_inode.get(ino)) is not None and entry.closing:
                self._told_cond.wait()

    def is_warm(self, ino: int) -> bool:
        """Whether an open of ``ino`` is answered at once by :meth:`reuse` (its id is told)."""
        with self._by_inode_lock:
            entry = self._by_inode.get(ino)
            return entry is not None and not entry.closing and entry.note <= self._told

    def reuse(self, ino: int) -> int:
        """The id of ``ino`` for one more open if it has one (open or kept) that is told, else 0
        (nothing taken: :meth:`acquire` then :meth:`announce`)."""
        with self._by_inode_lock:
            entry = self._by_inode.get(ino)
            if entry is None or entry.closing or entry.note > self._told:
                return 0
            entry.opens += 1
            self._idle.pop(ino, None)
            return entry.backing_id

    def acquire(self, ino: int, path: str | None) -> int:
        """The backing id for one more open of ``ino``; registers ``path`` when the inode has none.
        The caller then calls :meth:`announce` without holding its own locks. 0 (nothing taken: serve
        the open in cached mode) when the inode's id is closing or it has none and ``path`` is None.

        Raises OSError when the file cannot be opened or the kernel refuses it (no passthrough).
        """
        with self._by_inode_lock:
            entry = self._by_inode.get(ino)
            if entry is not None and entry.closing:
                return 0    # (a caller that may wait called wait_closed first)
            if entry is not None:
                entry.opens += 1
                self._idle.pop(ino, None)
                return entry.backing_id
            if path is None:
                return 0
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                arg = bytearray(protocol.BACKING_MAP.pack(fd, 0, 0))
                backing_id: int = fcntl.ioctl(self._dev_fd, protocol.FUSE_DEV_IOC_BACKING_OPEN, arg, True)
            finally:
                os.close(fd)  # the kernel holds its own reference to the file
            if backing_id <= 0:
                raise OSError(f"FUSE_DEV_IOC_BACKING_OPEN returned {backing_id} for {path}")
            self._by_inode[ino] = _Backing(backing_id, 1, self._note(ino, backing_id))
            return backing_id

    def announce(self, ino: int) -> None:
        """Return once ``on_change`` has been told of the id of ``ino`` (telling the queue if no other
        thread is): before the OPEN reply that uses it, so a server taking over knows every id in use."""
        with self._by_inode_lock:
            entry = self._by_inode.get(ino)
            note = 0 if entry is None else entry.note
        self._tell_until(note)

    def release(self, ino: int) -> None:
        """One open of ``ino`` ended; after the last one the id is kept idle, and the oldest idle id past
        ``idle_kept`` is unregistered (never one in use: the kernel binds it to its inode while open)."""
        note = 0
        closed: list[tuple[int, _Backing]] = []
        with self._by_inode_lock:
            entry = self._by_inode.get(ino)
            if entry is None or entry.closing:
                return
            entry.opens -= 1
            if entry.opens > 0:
                return
            self._idle[ino] = None
            while len(self._idle) > self._idle_kept:
                old, _ = self._idle.popitem(last=False)
                gone = self._by_inode[old]
                gone.closing = True     # kept until on_closed ran: no open registers a new id before
                self._closing += 1
                note = self._note(old, 0, gone.backing_id)
                closed.append((old, gone))
        try:
            self._tell_until(note)
            for old, _ in closed:   # (unregistered by now: by _note, or by the telling of the notes)
                if self.on_closed is not None:
                    try:
                        self.on_closed(old)
                    except Exception:   # one inode's news lost, not the others' (their pins) nor the RELEASE
                        log.exception("telling the tree that inode %d's backing id closed failed", old)
        finally:
            with self._by_inode_lock:
                for old, gone in closed:
                    if self._by_inode.get(old) is gone:     # (close_all may have cleared it)
                        del self._by_inode[old]
                        self._closing -= 1
                self._told_cond.notify_all()    # (wait_closed)

    def release_may_wait(self) -> bool:
        """Whether the next last-close may unregister an idle id and tell ``on_change`` of it (the
        keeper: a socket round trip), so a RELEASE is not one the FUSE reading thread answers itself."""
        with self._by_inode_lock:
            return self.on_change is not None and len(self._idle) >= self._idle_kept

    def in_use(self) -> int:
        """Inodes with passthrough opens now (diagnostics and tests)."""
        with self._by_inode_lock:
            return len(self._by_inode) - len(self._idle) - self._closing

    def close_all(self) -> None:
        """Unregister everything (session end); notes not yet told are dropped (nobody serves on)."""
        with self._by_inode_lock:
            # (a closing id is its note's to unregister, or unregistered already: never closed twice)
            ids = [entry.backing_id for entry in self._by_inode.values() if not entry.closing]
            ids += [unregister for _, _, _, unregister in self._notes if unregister]
            self._by_inode.clear()
            self._idle.clear()
            self._closing = 0
            self._notes.clear()
            self._told = self._queued
            self._told_cond.notify_all()
            for backing_id in ids:
                self._close_id(backing_id)

    def _note(self, ino: int, backing_id: int, unregister: int = 0) -> int:
        """Queue the note ``(ino, backing_id)`` (under the lock) and its number; with nobody to tell,
        ``unregister`` is unregistered now and there is nothing to wait for (0)."""
        if self.on_change is None:
            if unregister:
                self._close_id(unregister)
            return 0
        self._queued += 1
        self._notes.append((self._queued, ino, backing_id, unregister))
        return self._queued

    def _tell_until(self, note: int) -> None:
        """Return once every note up to ``note`` is told; the first thread waiting tells them all."""
        with self._told_cond:
            while self._told < note and self._telling:
                self._told_cond.wait()
            if self._told >= note:
                return
            self._telling = True
        try:
            while True:
                with self._told_cond:
                    if not self._notes:
                        return
                    number, ino, backing_id, unregister = self._notes.popleft()
                self._tell(ino, backing_id)
                if unregister:
                    self._close_id(unregister)
                with self._told_cond:
                    self._told = max(self._told, number)
                    self._told_cond.notify_all()
        finally:
            with self._told_cond:
                self._telling = False
                self._told_cond.notify_all()

    def _tell(self, ino: int, backing_id: int) -> None:
        if self.on_change is not None:
            try:
                self.on_change(ino, backing_id)
            except Exception:       # the keeper's loss: the next server serves that inode's reads itself
                log.exception("noting backing id %d of inode %d failed", backing_id, ino)

    def _close_id(self, backing_id: int) -> None:
        arg = bytearray(struct.pack("=I", backing_id))
        # OSError: the connection is already gone, and the kernel dropped every backing file with it.
        with contextlib.suppress(OSError):
            fcntl.ioctl(self._dev_fd, protocol.FUSE_DEV_IOC_BACKING_CLOSE, arg, True)
