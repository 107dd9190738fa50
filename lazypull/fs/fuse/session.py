"""The request loop on ``/dev/fuse`` and the :class:`FuseMount` that owns it.

The threads of a mount (``workers.Readers``) take turns reading requests from the device: the one
reading answers quick requests itself (a warm OPEN, RELEASE, metadata held in memory) and hands the
reading to another thread before answering one that may wait (a READ fetching from the network), so
such a READ never holds up a LOOKUP or an OPEN. Each reply is a single ``writev`` of header and
payload, as the kernel requires.
"""

from __future__ import annotations

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
from lazypull.fs.fuse.ops import Negotiated, Operations
from lazypull.fs.fuse.passthrough import unavailable_reason
from lazypull.fs.fuse.protocol import Op, Request
from lazypull.fs.fuse.tree import Tree
from lazypull.fs.fuse.workers import Readers

log = logging.getLogger(__name__)

#: Layers never change, so the kernel may cache names and attributes for a long time.
DAY = 86400.0


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
    the tree (its target may be mounted on demand).

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
            _mount.mount_fuse(self._fd, self.mountpoint, self.fsname, readonly=self._readonly)
        except MountError:
            os.close(self._fd)
            self._fd = -1
            raise
        self._ops.backing.on_change = self.on_backing
        self._mounted = True
        entry = _mount.mount_entry(self.mountpoint)
        self._device = entry[2] if entry else ""
        self._pool = Readers(self._serve, self._fd, *self._workers, inline=self._ops.inline)
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

    def resume(self, fd: int, state: Negotiated, backing: dict[int, int] | None = None) -> FuseMount:
        """Serve the live connection ``fd`` (a ``/dev/fuse`` fd of the mount already at ``mountpoint``,
        kept while its server was gone: ``lazypull.snapshot.keeper``) instead of mounting; takes ``fd``.

        The kernel sends no INIT again: ``state`` is what it settled. Requests the previous server read
        and never answered are asked for again (FUSE_NOTIFY_RESEND, Linux 6.9+; older kernels refuse
        it, and those requests stay unanswered until the mount goes). ``backing``: the passthrough ids
        the previous server registered (``ino -> id``, see ``on_backing``)."""
        if self._pool is not None:
            raise MountError(f"FUSE mount at {self.mountpoint} already started")
        entry = _mount.mount_entry(self.mountpoint)
        if entry is None or entry[0] != _mount.FSTYPE:
            os.close(fd)
            raise MountError(f"no lazypull FUSE mount at {self.mountpoint} to serve")
        self._fd = fd
        self._device = entry[2]
        self._ops = self._operations()
        self._ops.resume(state, backing)
        self._ops.backing.on_change = self.on_backing
        self._mounted = True
        self._initialized.set()
        self._pool = Readers(self._serve, self._fd, *self._workers, inline=self._ops.inline)
        self._pool.start()
        try:
            os.write(self._fd, protocol.notify_resend())
        except OSError as err:
            log.warning("%s: the kernel did not resend unanswered requests (%s): reads the previous "
                        "server had taken may hang until the mount goes", self.mountpoint, err.strerror)
        return self

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
        if reply is not None:
            self._reply(req, reply)

    def _reply(self, req: Request, reply: tuple[int, bytes]) -> None:
        err, payload = reply
        header = protocol.out_header(req.unique, err, 0 if err else len(payload))
        with self._fd_lock:
            fd = self._fd
        if fd < 0:
            return
        try:
            os.writev(fd, [header] if err or not payload else [header, payload])
        except OSError as exc:
            # ENOENT: the request was interrupted and is gone; ENODEV: the mount is gone.
            if exc.errno in (errno.ENOENT, errno.ENODEV, errno.EBADF, errno.ECONNABORTED):
                return
            log.error(
                "FUSE reply to %s (%d bytes) on %s refused: %s",
                protocol.op_name(req.opcode),
                len(payload),
                self.mountpoint,
                exc,
            )
            if not err:  # e.g. more bytes than the kernel asked for: answer EIO so the caller is not stuck
                self._reply(req, (errno.EIO, b""))
