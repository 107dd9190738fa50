"""The threads serving one ``/dev/fuse`` fd: one reads at a time and answers quick requests itself.

Leader and followers: exactly one thread (the reader) waits in ``read`` on the device. A request the
``inline`` test calls quick (an OPEN whose passthrough id is known, a RELEASE, metadata a tree holds in
memory) is answered by the reader, which then reads the next one: a warm ``open``/``close`` costs no
thread wake-up in the server beyond the kernel's own, and no two threads contend for the GIL. A request
that may wait (a READ fetching from the network) first hands the reading over to a parked follower (or
a new thread, up to ``max_threads``), then is answered by the thread that read it, so a slow READ never
holds up a LOOKUP or an OPEN.

Why not every thread in ``read`` at once (the previous pool): the kernel wakes waiting readers in
turn, so consecutive requests (an OPEN, the last file's RELEASE) landed on different threads that then
fought over the GIL; that cost ~30 µs per open and close on a 2-CPU machine, twice the server's work.

Followers park on their own event, the most recently parked woken first, so under a light load the
same few threads serve and the rest time out after ``IDLE_SECONDS`` and end (down to
``min_threads``). Each thread reads into its own buffer, a slot of the connection's request journal
when there is one (``fuse.journal``): a request stays in it until answered, then the slot is cleared.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from typing import Protocol

from lazypull.fs.fuse import protocol

log = logging.getLogger(__name__)

#: A parked follower ends after this long without being needed (if more than ``min_threads`` live).
IDLE_SECONDS = 10.0


class Journal(Protocol):
    """What the threads use of a request journal (``fuse.journal.Journal``): one slot per thread."""

    slots: int

    def acquire(self) -> int | None:
        """A free slot, or None when every slot is in use."""
        ...

    def release(self, slot: int) -> None:
        """Give back the slot of a thread that ends."""
        ...

    def buffer(self, slot: int) -> memoryview:
        """The slot's bytes, which the thread reads requests into."""
        ...

    def clear(self, slot: int) -> None:
        """The slot's request is answered."""
        ...


class Readers:
    """The serving threads of one ``/dev/fuse`` fd (see the module docstring). ``journal``: threads read
    into its slots (at most one thread per slot); ``replay(slot)`` answers a slot a previous server
    left unanswered (``start``)."""

    def __init__(
        self,
        serve: Callable[[bytes], None],
        fd: int,
        min_threads: int,
        max_threads: int,
        inline: Callable[[bytes], bool],
        journal: Journal | None = None,
        replay: Callable[[int], None] | None = None,
    ) -> None:
        if max_threads < 1 or not 0 <= min_threads <= max_threads:
            raise ValueError(f"invalid worker counts ({min_threads}, {max_threads})")
        if journal is not None:
            max_threads = min(max_threads, journal.slots)
            min_threads = min(min_threads, max_threads)
        self._serve = serve
        self._inline = inline
        self._journal = journal
        self._replay = replay
        self._fd = fd
        self._min = max(min_threads, 1)
        self._max = max_threads
        self._lock = threading.Lock()  # guards everything below but the counters
        self._threads: set[threading.Thread] = set()
        self._parked: list[threading.Event] = []  # followers, the last parked on top
        self._reading = False  # a thread holds the reader role (or was just given it)
        self._done = False  # the device said the connection is gone: every thread ends
        self.peak = 0
        self.started = 0
        #: requests answered by the thread that read them without handing the reading over / handed over
        #: (plain counters: a lost update under a race only blurs a diagnostic)
        self.inline = 0
        self.handed_over = 0
        self.fatal: OSError | None = None
        #: set by close_fd_when_done() when threads outlive the mount: the last one to end closes the fd
        self.close_when_done = False

    def start(self, replay: list[int] | None = None) -> None:
        """Start the reader and followers up to ``min_threads``; ``replay``: journal slots holding
        requests a previous server read and never answered, each answered first by a thread of its
        own (which then follows as the others)."""
        with self._lock:
            self._reading = self._spawn(reader=True)
            for slot in replay or ():
                self._spawn(reader=False, slot=slot, replay=True)
            for _ in range(max(self._min - len(self._threads), 0)):
                self._spawn(reader=False)

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._threads)

    def threads(self) -> list[threading.Thread]:
        with self._lock:
            return list(self._threads)

    def close_fd_when_done(self) -> None:
        """Close the fd now if no thread is left, else let the last thread close it."""
        with self._lock:
            if self._threads:
                self.close_when_done = True
            else:
                os.close(self._fd)

    def _spawn(self, *, reader: bool, slot: int | None = None, replay: bool = False) -> bool:
        """Start a thread (the lock held), as the reader or as a follower; False when every journal
        slot is taken (a predecessor's journal with fewer slots)."""
        if slot is None and self._journal is not None:
            slot = self._journal.acquire()
            if slot is None:
                return False
        t = threading.Thread(target=self._run, args=(reader, slot, replay), name="fuse-worker", daemon=True)
        try:
            t.start()
        except RuntimeError as err:     # no thread to be had (RLIMIT_NPROC, memory): this one stays
            log.warning("cannot start another FUSE thread: %s", err)
            if slot is not None and self._journal is not None:
                self._journal.release(slot)
            return False
        self.started += 1
        self._threads.add(t)
        self.peak = max(self.peak, len(self._threads))
        return True

    def _run(self, reader: bool, slot: int | None, replay: bool) -> None:
        me = threading.current_thread()
        journal = self._journal if slot is not None else None
        view = journal.buffer(slot) if journal is not None and slot is not None \
            else memoryview(bytearray(protocol.READ_BUFFER))
        wake = threading.Event()
        try:
            if replay and journal is not None and slot is not None and self._replay is not None:
                self._replay(slot)
                journal.clear(slot)
            while reader or self._follow(wake):
                reader = False
                request = self._read(view, journal, slot)
                if request is None:
                    return
                self._serve(request)
                if journal is not None and slot is not None:
                    journal.clear(slot)  # answered: nothing for a next server to take up
        finally:
            view.release()
            if journal is not None and slot is not None:
                journal.release(slot)
            with self._lock:
                self._threads.discard(me)
                if not self._threads and self.close_when_done:
                    os.close(self._fd)
                    self.close_when_done = False

    def _read(self, view: memoryview, journal: Journal | None, slot: int | None) -> bytes | None:
        """As the reader: answer quick requests until one that may wait; hand the reading over and
        return that one (None: the connection is gone, every thread ends)."""
        while True:
            try:
                n = os.readv(self._fd, [view])
            except OSError as err:
                if journal is not None and slot is not None:
                    journal.clear(slot)  # what the kernel copied before failing is not ours
                if err.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                    continue  # ENOENT: the request was interrupted before we read it
                if err.errno not in (errno.ENODEV, errno.ECONNABORTED, errno.EBADF):
                    self.fatal = err
                    log.error("reading /dev/fuse failed, FUSE threads stop: %s", err)
                self._end()  # ENODEV: unmounted
                return None
            if n == 0:
                self._end()
                return None
            request = bytes(view[:n])
            try:
                quick = self._inline(request)
            except Exception:  # a bug there must not end the reading: the request is served as slow
                log.exception("deciding where to answer a FUSE request failed")
                quick = False
            if not quick:
                self.handed_over += 1
                self._hand_over()
                return request
            self.inline += 1
            self._serve(request)
            if journal is not None and slot is not None:
                journal.clear(slot)

    def _hand_over(self) -> None:
        """Give the reader role to the follower parked last, else to a new thread (if allowed); with
        every thread busy, the first to finish reads next."""
        with self._lock:
            if self._parked:
                self._parked.pop().set()
            elif len(self._threads) >= self._max or not self._spawn(reader=True):
                self._reading = False

    def _follow(self, wake: threading.Event) -> bool:
        """After answering a request that was handed over: take the reader role if it is free, else
        park until given it (True), or end (False: the connection is gone, or idle long enough)."""
        with self._lock:
            if self._done:
                return False
            if not self._reading:
                self._reading = True
                return True
            wake.clear()
            self._parked.append(wake)
        while not wake.wait(IDLE_SECONDS):
            with self._lock:
                if wake.is_set():
                    break  # given the role just as the wait timed out
                if len(self._threads) > self._min:
                    self._parked.remove(wake)
                    return False
        return not self._done

    def _end(self) -> None:
        """The connection is gone: wake every follower so that it ends."""
        with self._lock:
            self._done = True
            self._reading = False
            for wake in self._parked:
                wake.set()
            self._parked.clear()
