"""The request journal: what a FUSE server read from ``/dev/fuse`` and has not answered, kept in memory
that outlives the server, so that the next server answers it. Kernels before 6.9 have no
FUSE_NOTIFY_RESEND: without this, a request a killed server had read waits for ever (its caller in D
state) until the mount goes.

Requests are read straight into the journal: each serving thread owns a slot of a memfd mapped shared
and hands that slot to ``read``, so a request is recorded the moment the kernel gives it out (no window
in which the kernel counts it as taken and the journal does not hold it). A slot whose ``unique`` (the
in-header's third field) is not 0 holds a request read and not yet answered; its thread zeroes it
after writing the reply. A reply written just before a kill is answered again by the next server: the
kernel refuses it (ENOENT: uniques are never reused on a connection), which is harmless.

The memfd is created at mount and kept with the connection's fd by the keeper
(``lazypull.snapshot.keeper``); the next server maps it (:meth:`Journal.adopt`), answers what the
slots hold, and journals into it in turn. Each slot has a replay counter: a request that several
servers in a row took up again and died on is answered EIO (a request that kills its server must not
kill every next one).

Layout: a 4 KiB header (magic, version, slot count, slot size, then one replay counter byte per slot)
followed by the slots, each ``protocol.READ_BUFFER`` bytes (the kernel refuses smaller read buffers).
Pages are allocated when written only: about one 4 KiB page per slot ever used.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading

from lazypull.errors import MountError
from lazypull.fs.fuse import protocol

MAGIC = b"LPFUSEJ\x01"
_HEAD = struct.Struct("=8sIIQ")         # magic, version, slots, slot size
VERSION = 1
HEADER_SIZE = 4096
_COUNTERS = 64                          # offset of the replay counters (one byte per slot)
MAX_SLOTS = 256
#: A request still unanswered after this many servers took it up again is answered EIO.
MAX_REPLAYS = 3
_UNIQUE = struct.Struct("=Q")
_UNIQUE_AT = 8                          # fuse_in_header: len u32, opcode u32, unique u64


class JournalError(MountError):
    """A journal memfd handed over is not one this server can use (wrong size, magic or version)."""


class Journal:
    """One connection's journal: ``slots`` request buffers in a shared memfd; thread-safe slot handout."""

    def __init__(self, fd: int, slots: int, slot_size: int) -> None:
        self.fd = fd
        self.slots = slots
        self.slot_size = slot_size
        self._map = mmap.mmap(fd, HEADER_SIZE + slots * slot_size, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        self._lock = threading.Lock()
        self._closing = False
        self._free = [i for i in range(slots) if not self.unique(i)]
        self._free.reverse()                # hand out low slots first (fewer pages touched)

    @classmethod
    def create(cls, slots: int, name: str = "lazypull-fuse-journal") -> Journal:
        """A new empty journal of ``slots`` slots (1..MAX_SLOTS), sealed against resizing."""
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"journal slots must be 1..{MAX_SLOTS}, not {slots}")
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, HEADER_SIZE + slots * protocol.READ_BUFFER)
            # no one holding the fd (the keeper, a later server) can shrink it under a mapping (SIGBUS)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            os.pwrite(fd, _HEAD.pack(MAGIC, VERSION, slots, protocol.READ_BUFFER), 0)
            return cls(fd, slots, protocol.READ_BUFFER)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def adopt(cls, fd: int) -> Journal:
        """Map the journal ``fd`` a previous server of the connection wrote (takes ``fd``)."""
        try:
            try:
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            except OSError:
                seals = 0                   # not a memfd
            try:
                size = os.fstat(fd).st_size
                head = os.pread(fd, _HEAD.size, 0)
            except OSError as err:
                raise JournalError(f"FUSE request journal unreadable: {err.strerror}") from err
            if len(head) < _HEAD.size or not seals & fcntl.F_SEAL_SHRINK:
                raise JournalError("FUSE request journal: not a sealed journal memfd")
            magic, version, slots, slot_size = _HEAD.unpack(head)
            if magic != MAGIC or version != VERSION:
                raise JournalError(f"FUSE request journal: unknown format {magic!r} version {version}")
            if (not 1 <= slots <= MAX_SLOTS or slot_size < protocol.READ_BUFFER
                    or slot_size % mmap.PAGESIZE or size != HEADER_SIZE + slots * slot_size):
                raise JournalError(f"FUSE request journal: {slots} slots of {slot_size} bytes do not "
                                   f"fit its {size} bytes")
            return cls(fd, slots, slot_size)
        except BaseException:
            os.close(fd)
            raise

    # -- slots ------------------------------------------------------------------------------------

    def acquire(self) -> int | None:
        """A free slot for a serving thread, or None when every slot is in use."""
        with self._lock:
            return self._free.pop() if self._free else None

    def release(self, slot: int) -> None:
        """Give back a slot whose thread ends (its view of the slot released first)."""
        with self._lock:
            self._free.append(slot)
            if self._closing:
                self._unmap()

    def buffer(self, slot: int) -> memoryview:
        """The slot's bytes: the buffer its thread reads requests into."""
        start = HEADER_SIZE + slot * self.slot_size
        return memoryview(self._map)[start:start + self.slot_size]

    def unique(self, slot: int) -> int:
        """The unique of the request the slot holds unanswered; 0 if none."""
        return int(_UNIQUE.unpack_from(self._map, HEADER_SIZE + slot * self.slot_size + _UNIQUE_AT)[0])

    def clear(self, slot: int) -> None:
        """The slot's request is answered (or was never handed out): nothing to replay."""
        _UNIQUE.pack_into(self._map, HEADER_SIZE + slot * self.slot_size + _UNIQUE_AT, 0)
        if self._map[_COUNTERS + slot]:
            self._map[_COUNTERS + slot] = 0

    def held(self) -> list[int]:
        """Slots holding an unanswered request (at adoption: the previous server's)."""
        with self._lock:
            free = set(self._free)
        return [i for i in range(self.slots) if i not in free and self.unique(i)]

    def request(self, slot: int) -> bytes:
        """The request bytes of a held slot (its in-header's length, bounded by the slot)."""
        start = HEADER_SIZE + slot * self.slot_size
        length = int(struct.unpack_from("=I", self._map, start)[0])
        return bytes(self._map[start:start + min(max(length, 0), self.slot_size)])

    def count_replay(self, slot: int) -> int:
        """Note that a server takes the slot's request up again; how many servers did, this one too."""
        n = min(self._map[_COUNTERS + slot] + 1, 255)
        self._map[_COUNTERS + slot] = n
        return n

    def close(self) -> None:
        """Close the fd and the mapping; while a thread still reads into a slot (stuck in a tree after
        its mount stopped), the mapping (and the fd mmap holds) stays until that thread ends."""
        with self._lock:
            if self.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self.fd)
                self.fd = -1
            self._closing = True
            self._unmap()

    def _unmap(self) -> None:
        with contextlib.suppress(BufferError):
            self._map.close()
