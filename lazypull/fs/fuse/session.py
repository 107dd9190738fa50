"""The request loop on ``/dev/fuse`` and the :class:`FuseMount` that owns it.

The threads of a mount (``workers.Readers``) take turns reading requests from the device: the one
reading answers quick requests itself (a warm OPEN, RELEASE, metadata held in memory) and hands the
reading to another thread before answering one that may wait (a READ fetching from the network), so
such a READ never holds up a LOOKUP or an OPEN. Each reply is a single ``writev`` of header and
payload, as the kernel requires.

Each thread reads into its own slot of the connection's request journal (``journal``), which outlives
the process: a server taking the connection over after a kill answers what its predecessor had read
and not answered, also on kernels without FUSE_NOTIFY_RESEND (before 6.9).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType

from lazypull.errors import MountError
from lazypull.fs.fuse import mount as _mount
from lazypull.fs.fuse import protocol
from lazypull.fs.fuse.journal import MAX_REPLAYS, MAX_SLOTS, Journal, JournalError
from lazypull.fs.fuse.ops import Negotiated, Operations
from lazypull.fs.fuse.passthrough import unavailable_reason
from lazypull.fs.fuse.protocol import Op, Request
from lazypull.fs.fuse.tree import Tree
from lazypull.fs.fuse.workers import Readers

log = logging.getLogger(__name__)

#: Layers never change, so the kernel may cache names and attributes for a long time.
DAY = 86400.0
#: Set to ``0`` in a server's environment: a server taking over live connections does not ask the kernel
#: to resend what its predecessor read and never answered (FUSE_NOTIFY_RESEND) but answers those
#: requests from the journal, as it must on kernels before 6.9. For tests and benchmarks of that path.
RESEND_ENV = "LAZYPULL_FUSE_RESEND"


#: Opens whose handle is released again when the kernel refuses the reply: opcode -> its release.
_OPENS: dict[int, int] = {Op.OPEN: Op.RELEASE, Op.OPENDIR: Op.RELEASEDIR}

_no_passthrough_noted = threading.Event()


def _note_no_passthrough() -> None:
    """Say once per process that reads are served (slower, still correct) because the kernel said no."""
    if not _no_passthrough_noted.is_set():
        _no_passthrough_noted.set()
        log.info("%s: lazypull serves every read itself", unavailable_reason())


class FuseMount:
    """Serve ``tree`` read-only at ``mountpoint`` until :meth:`stop`.

    ``passthrough``: hand reads of files whose ``Tree.backing_path`` is set to the kernel (6.9+);
    ``passthrough_active`` says whether the kernel agreed (its FUSE_INIT offer decides; without it
    every read is served, logged once per process). ``workers``: (min, max) threads. Timeouts
    (seconds) say how long the kernel caches names, attributes and missing names (``negative_timeout``,
    default ``entry_timeout``: a Tree should raise rather than answer "missing" while it cannot know).
    ``readonly=False`` mounts without MS_RDONLY so that create/rmdir reach the tree's
    ``WriteObserver`` hook (still refused); ``cache_symlinks=False``: every walk through a symlink asks
    the tree (its target may be mounted on demand). ``journal=False``: no request journal (a server
    taking the connection over cannot answer what this one read and left unanswered without
    FUSE_NOTIFY_RESEND; for measurements).

    The serving process must not ``subprocess.run`` a program that lives on its own mount: CPython
    starts children with vfork, which holds the GIL until the child's exec completes, and that exec
    waits for this process's FUSE threads (deadlock). Start such programs through a host binary
    (``/bin/sh -c 'exec ...'``) or from another process.
    """

    def __init__(
        self,
        tree: Tree,
        mountpoint: str | os.PathLike[str],
        *,
        fsname: str = "lazypull",
        passthrough: bool = True,
        workers: tuple[int, int] = (1, 8),
        entry_timeout: float = DAY,
        attr_timeout: float = DAY,
        negative_timeout: float | None = None,
        init_timeout: float = 10.0,
        readonly: bool = True,
        cache_symlinks: bool = True,
        journal: bool = True,
    ) -> None:
        self.tree = tree
        self.mountpoint = os.path.abspath(os.fspath(mountpoint))
        self.fsname = fsname
        self._want_passthrough = passthrough
        self._workers = workers
        self._entry_timeout = entry_timeout
        self._attr_timeout = attr_timeout
        self._negative_timeout = negative_timeout
        self._init_timeout = init_timeout
        self._readonly = readonly
        self._cache_symlinks = cache_symlinks
        self._want_journal = journal
        self._journal: Journal | None = None
        #: requests a previous server had read and not answered: answered here again, and answered EIO
        #: (after MAX_REPLAYS servers took one up and died, or unreadable in the journal)
        self.replayed = 0
        self.replay_failed = 0
        self._fd = -1
        self._device = ""
        self._ops: Operations | None = None
        self._pool: Readers | None = None
        self._initialized = threading.Event()
        self._mounted = False
        self._fd_lock = threading.Lock()  # guards _fd, which stop() closes or points at /dev/null
        #: told (ino, id) of each passthrough id registered, (ino, 0) before one is unregistered: what a
        #: server taking over the connection needs (set before start)
        self.on_backing: Callable[[int, int], None] | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FuseMount:
        """Mount and start serving; returns once the kernel finished INIT."""
        if self._pool is not None:
            raise MountError(f"FUSE mount at {self.mountpoint} already started")
        if not os.path.isdir(self.mountpoint):
            raise MountError(f"mountpoint {self.mountpoint} is not a directory")
        try:
            self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise MountError(f"cannot open /dev/fuse for {self.mountpoint}: {err.strerror}") from err
        self._ops = self._operations()
        try:
            if self._want_journal:
                self._journal = self._new_journal()
            _mount.mount_fuse(self._fd, self.mountpoint, self.fsname, readonly=self._readonly)
        except (MountError, OSError) as err:
            os.close(self._fd)
            self._fd = -1
            if self._journal is not None:
                self._journal.close()
                self._journal = None
            if isinstance(err, MountError):
                raise
            raise MountError(f"cannot create the FUSE request journal of {self.mountpoint}: "
                             f"{err.strerror}") from err
        self._ops.backing.on_change = self.on_backing
        self._mounted = True
        entry = _mount.mount_entry(self.mountpoint)
        self._device = entry[2] if entry else ""
        self._pool = Readers(self._serve, self._fd, *self._workers, inline=self._ops.inline,
                             journal=self._journal)
        self._pool.start()
        deadline = time.monotonic() + self._init_timeout
        while not self._initialized.wait(0.05):
            if time.monotonic() > deadline or self._pool.size == 0:
                why = self._pool.fatal or f"no FUSE_INIT within {self._init_timeout}s"
                self.stop()
                raise MountError(f"FUSE session for {self.mountpoint} did not start: {why}")
        self._raise_readahead()
        if self._want_passthrough and not self.passthrough_active:
            _note_no_passthrough()
        return self

    def _operations(self) -> Operations:
        """The request handlers over this mount's tree and ``/dev/fuse`` fd (a new or a resumed one)."""
        return Operations(
            self.tree,
            entry_timeout=self._entry_timeout,
            attr_timeout=self._attr_timeout,
            negative_timeout=self._negative_timeout,
            passthrough=self._want_passthrough,
            dev_fd=self._fd,
            cache_symlinks=self._cache_symlinks,
            no_open=self._readonly,
        )

    def resume(self, fd: int, state: Negotiated, backing: dict[int, int] | None = None,
               journal: int | None = None) -> FuseMount:
        """Serve the live connection ``fd`` (a ``/dev/fuse`` fd of the mount already at ``mountpoint``,
        kept while its server was gone: ``lazypull.snapshot.keeper``) instead of mounting; takes ``fd``
        and ``journal`` (the connection's request journal memfd, see ``journal_fd``).

        The kernel sends no INIT again: ``state`` is what it settled. ``backing``: the passthrough ids
        the previous server registered (``ino -> id``, see ``on_backing``). Requests the previous server
        read and never answered are asked for again (FUSE_NOTIFY_RESEND, Linux 6.9+); where the kernel
        refuses that (or ``LAZYPULL_FUSE_RESEND=0``), they are answered from the journal: served again,
        with their original unique (:meth:`_replay`). Without a journal and without RESEND they stay
        unanswered until the mount goes."""
        if self._pool is not None:
            os.close(fd)
            if journal is not None:
                os.close(journal)
            raise MountError(f"FUSE mount at {self.mountpoint} already started")
        entry = _mount.mount_entry(self.mountpoint)
        if entry is None or entry[0] != _mount.FSTYPE:
            os.close(fd)
            if journal is not None:
                os.close(journal)
            raise MountError(f"no lazypull FUSE mount at {self.mountpoint} to serve")
        self._fd = fd
        self._device = entry[2]
        self._ops = self._operations()
        self._ops.resume(state, backing)
        self._ops.backing.on_change = self.on_backing
        self._mounted = True
        self._initialized.set()
        adopted = False
        if journal is not None:
            try:
                self._journal = Journal.adopt(journal)
                adopted = True
            except JournalError as err:
                log.warning("%s: %s; what the previous server left unanswered is not answered from it",
                            self.mountpoint, err)
        if self._journal is None and self._want_journal:
            with contextlib.suppress(OSError):
                self._journal = self._new_journal()
        held = self._journal.held() if self._journal is not None and adopted else []
        resent = False
        if os.environ.get(RESEND_ENV, "1") != "0":
            try:
                os.write(self._fd, protocol.notify_resend())
                resent = True
            except OSError as err:
                level = logging.INFO if adopted else logging.WARNING
                log.log(level, "%s: the kernel did not resend unanswered requests (%s)%s", self.mountpoint,
                        err.strerror, ": the journal answers them" if adopted else
                        ": reads the previous server had taken may hang until the mount goes")
        if resent and self._journal is not None:   # queued again: the copies would be answered twice
            for slot in held:
                self._journal.clear(slot)
                self._journal.release(slot)     # free for this server's threads
            held = []
        elif held:
            log.info("%s: answering %d requests the previous server had read and not answered (from the "
                     "journal)", self.mountpoint, len(held))
        self._pool = Readers(self._serve, self._fd, *self._workers, inline=self._ops.inline,
                             journal=self._journal, replay=self._replay)
        self._pool.start(held)
        return self

    def _new_journal(self) -> Journal:
        return Journal.create(min(max(self._workers[1], 1), MAX_SLOTS),
                              name=f"lazypull-journal-{os.path.basename(self.mountpoint)}")

    @property
    def journal_fd(self) -> int:
        """The request journal's memfd (-1: none): handed to the keeper with ``dev_fd``."""
        return self._journal.fd if self._journal is not None else -1

    @property
    def negotiated(self) -> Negotiated | None:
        """What INIT settled (None before it): with the fd, all a later server needs to take over."""
        return self._ops.negotiated() if self._ops is not None and self._initialized.is_set() else None

    @property
    def dev_fd(self) -> int:
        """The ``/dev/fuse`` fd (-1 once stopped)."""
        with self._fd_lock:
            return self._fd

    def stop(self, timeout: float = 5.0) -> None:
        """Unmount (detached) and stop the threads; a busy mount's connection is aborted after ``timeout``."""
        if self._mounted:
            self._mounted = False
            try:
                _mount.umount(self.mountpoint)
            except OSError as err:
                if err.errno not in (errno.EINVAL, errno.ENOENT):
                    log.warning("unmount of %s: %s", self.mountpoint, err)
        alive = self._join(timeout)
        if alive and self._device and _mount.abort_connection(self._device):
            alive = self._join(timeout)
        if alive:
            log.error("%d FUSE threads of %s did not stop", len(alive), self.mountpoint)
        if self._ops is not None:
            self._ops.backing.close_all()
        if self._journal is not None:
            self._journal.close()       # the mapping stays while a thread still reads into it
        with self._fd_lock:
            if self._fd >= 0:
                if not alive:
                    os.close(self._fd)
                else:
                    # A thread is still inside the tree or the device: keep the fd number taken (by
                    # /dev/null) so its late reply cannot reach a file opened later under that number.
                    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                    os.dup2(null, self._fd)
                    os.close(null)
                    assert self._pool is not None
                    self._pool.close_fd_when_done()
                self._fd = -1

    def _raise_readahead(self) -> None:
        """Let the kernel read ahead up to one full READ (1 MiB) instead of its 128 KiB default.

        INIT can only lower the mount's readahead; the bdi setting raises it, so sequential reads of
        served files take 8 times fewer round trips.
        """
        if not self._device:
            return
        path = f"/sys/class/bdi/{self._device}/read_ahead_kb"
        try:
            with open(path, "w") as f:
                f.write(str(protocol.MAX_WRITE // 1024))
        except OSError as err:
            log.debug("cannot raise readahead of %s (%s): %s", self.mountpoint, path, err)

    def _join(self, timeout: float) -> list[threading.Thread]:
        """Wait up to ``timeout`` for the threads to end; the ones still alive."""
        if self._pool is None:
            return []
        deadline = time.monotonic() + timeout
        for t in self._pool.threads():
            t.join(max(deadline - time.monotonic(), 0))
        return [t for t in self._pool.threads() if t.is_alive()]

    def __enter__(self) -> FuseMount:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- state ------------------------------------------------------------------------------------

    @property
    def passthrough_active(self) -> bool:
        """Whether the kernel accepted FUSE passthrough for this mount."""
        return self._ops is not None and self._ops.passthrough_active

    @property
    def last_errors(self) -> list[str]:
        """The most recent unexpected tree errors (answered EIO), oldest first."""
        return list(self._ops.last_errors) if self._ops is not None else []

    @property
    def workers(self) -> int:
        """Worker threads alive now."""
        return self._pool.size if self._pool is not None else 0

    @property
    def peak_workers(self) -> int:
        return self._pool.peak if self._pool is not None else 0

    @property
    def open_files(self) -> int:
        """Files the kernel has open on this mount (as far as RELEASE told us)."""
        return self._ops.open_files() if self._ops is not None else 0

    @property
    def passthrough_files(self) -> int:
        """Inodes open now in passthrough mode."""
        return self._ops.backing.in_use() if self._ops is not None else 0

    @property
    def passthrough_registered(self) -> int:
        """Inodes with a registered backing file: open now, or kept from an earlier open."""
        return len(self._ops.backing) if self._ops is not None else 0

    @property
    def inline_requests(self) -> int:
        """Requests answered by the thread that read them, with no hand-over (diagnostics and tests)."""
        return self._pool.inline if self._pool is not None else 0

    @property
    def handed_over(self) -> int:
        """Requests that may wait, answered after the reading was handed to another thread."""
        return self._pool.handed_over if self._pool is not None else 0

    @property
    def threads_started(self) -> int:
        """Worker threads started since the mount (diagnostics and tests)."""
        return self._pool.started if self._pool is not None else 0

    # -- the loop ---------------------------------------------------------------------------------

    def _serve(self, buf: bytes) -> None:
        assert self._ops is not None
        try:
            req = protocol.parse_request(buf)
        except protocol.ProtocolError as err:
            log.error("%s: %s", self.mountpoint, err)
            return
        try:
            if req.opcode == Op.INIT:
                self._reply(req, self._ops.init(req))
                self._initialized.set()
            else:
                self._run_one(req)
        except Exception:
            # A bug here must not kill the thread nor leave the caller waiting forever.
            log.exception("FUSE %s on %s failed", protocol.op_name(req.opcode), self.mountpoint)
            if req.opcode not in protocol.NO_REPLY:
                self._reply(req, (errno.EIO, b""))

    def _run_one(self, req: Request) -> None:
        assert self._ops is not None
        reply = self._ops.handle(req)
        if reply is not None and not self._reply(req, reply) and not reply[0] and req.opcode in _OPENS:
            # Nobody waits for this open any more (its caller is gone, or it was answered before a
            # restart and is replayed): the handle given out here will never be released by the kernel.
            fh = protocol.OPEN_OUT.unpack_from(reply[1])[0]
            self._ops.handle(Request(_OPENS[req.opcode], 0, req.nodeid, 0, 0, 0,
                                     protocol.RELEASE_IN.pack(fh, 0, 0, 0)))

    def _replay(self, slot: int) -> None:
        """Answer the request journal ``slot`` holds: one a previous server of this connection read and
        died before answering. Served as if just read (a reply the kernel no longer waits for is refused
        with ENOENT: no harm); EIO when it cannot be: unreadable, or MAX_REPLAYS servers took it up
        already (a request that kills its server must not kill every next one)."""
        journal = self._journal
        assert journal is not None
        unique = journal.unique(slot)
        data = journal.request(slot)
        tries = journal.count_replay(slot)
        try:
            req = protocol.parse_request(data)
        except protocol.ProtocolError as err:
            self.replay_failed += 1
            log.error("%s: request %d left unanswered by the previous server is unreadable in the journal "
                      "(%s): answered EIO", self.mountpoint, unique, err)
            self._reply(Request(0, unique, 0, 0, 0, 0, b""), (errno.EIO, b""))
            return
        if tries > MAX_REPLAYS:
            self.replay_failed += 1
            log.error("%s: %s on inode %d answered EIO: read by a server and taken up again by %d more, "
                      "each ended before answering it", self.mountpoint, protocol.op_name(req.opcode),
                      req.nodeid, tries - 1)
            if req.opcode not in protocol.NO_REPLY:
                self._reply(req, (errno.EIO, b""))
            return
        self.replayed += 1
        self._serve(data)

    def _reply(self, req: Request, reply: tuple[int, bytes]) -> bool:
        """Write the reply; False when the kernel refused it (nobody waits for it, or no mount)."""
        err, payload = reply
        header = protocol.out_header(req.unique, err, 0 if err else len(payload))
        with self._fd_lock:
            fd = self._fd
        if fd < 0:
            return False
        try:
            os.writev(fd, [header] if err or not payload else [header, payload])
            return True
        except OSError as exc:
            # ENOENT: the request was interrupted and is gone; ENODEV: the mount is gone.
            if exc.errno in (errno.ENOENT, errno.ENODEV, errno.EBADF, errno.ECONNABORTED):
                return False
            log.error(
                "FUSE reply to %s (%d bytes) on %s refused: %s",
                protocol.op_name(req.opcode),
                len(payload),
                self.mountpoint,
                exc,
            )
            if not err:  # e.g. more bytes than the kernel asked for: answer EIO so the caller is not stuck
                self._reply(req, (errno.EIO, b""))
            return False
