"""The request loop on ``/dev/fuse`` and the :class:`FuseMount` that owns it.

One reader thread per mount reads requests (the kernel hands out one message per ``read``) and passes
them to a worker pool that grows when every worker is busy and shrinks when workers sit idle (the way
pyfuse3 sizes its tasks), so a READ waiting for the network never holds up a LOOKUP or GETATTR. Each
reply is a single ``writev`` of header and payload, as the kernel requires.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
from collections.abc import Callable
from types import TracebackType

from lazypull.errors import MountError
from lazypull.fs.fuse import mount as _mount
from lazypull.fs.fuse import protocol
from lazypull.fs.fuse.ops import Operations
from lazypull.fs.fuse.protocol import Op, Request
from lazypull.fs.fuse.tree import Tree

log = logging.getLogger(__name__)

#: Layers never change, so the kernel may cache names and attributes for a long time.
DAY = 86400.0


class WorkerPool:
    """Threads running ``handler(request)``; between ``min_workers`` and ``max_workers`` of them."""

    def __init__(
        self,
        handler: Callable[[Request], None],
        min_workers: int,
        max_workers: int,
        idle_timeout: float = 10.0,
        name: str = "",
    ) -> None:
        if not 0 <= min_workers <= max_workers or max_workers < 1:
            raise ValueError(f"invalid worker counts ({min_workers}, {max_workers})")
        self._handler = handler
        self._min = min_workers
        self._max = max_workers
        self._idle_timeout = idle_timeout
        self._name = name
        self._queue: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._threads: set[threading.Thread] = set()
        self._idle = 0
        self._pending = 0
        self._stopping = False
        self._lock = threading.Lock()  # guards _threads, _idle, _pending, _stopping
        self.peak = 0
        with self._lock:
            for _ in range(min_workers):
                self._spawn()

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._threads)

    def submit(self, req: Request) -> None:
        with self._lock:
            self._pending += 1
            if self._pending > self._idle and len(self._threads) < self._max:
                self._spawn()
        self._queue.put(req)

    def _spawn(self) -> None:
        t = threading.Thread(target=self._run, name=f"fuse-worker{self._name}", daemon=True)
        self._threads.add(t)
        self.peak = max(self.peak, len(self._threads))
        t.start()

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:
                self._idle += 1
            try:
                req = self._queue.get(timeout=self._idle_timeout)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    if len(self._threads) > self._min or self._stopping:
                        self._threads.discard(me)
                        return
                continue
            with self._lock:
                self._idle -= 1
                if req is not None:
                    self._pending -= 1
            if req is None:
                with self._lock:
                    self._threads.discard(me)
                return
            self._handler(req)

    def stop(self, timeout: float) -> bool:
        """Ask every worker to finish; True when all did within ``timeout``."""
        with self._lock:
            self._stopping = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        for t in threads:
            t.join(timeout)
        return not any(t.is_alive() for t in threads)


class FuseMount:
    """Serve ``tree`` read-only at ``mountpoint`` until :meth:`stop`.

    ``passthrough``: hand reads of files whose ``Tree.backing_path`` is set to the kernel (6.9+);
    ``passthrough_active`` says whether the kernel agreed. ``workers``: (min, max) threads.
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
        init_timeout: float = 10.0,
    ) -> None:
        self.tree = tree
        self.mountpoint = os.path.abspath(os.fspath(mountpoint))
        self.fsname = fsname
        self._want_passthrough = passthrough
        self._workers = workers
        self._entry_timeout = entry_timeout
        self._attr_timeout = attr_timeout
        self._init_timeout = init_timeout
        self._fd = -1
        self._device = ""
        self._ops: Operations | None = None
        self._pool: WorkerPool | None = None
        self._reader: threading.Thread | None = None
        self._initialized = threading.Event()
        self._mounted = False
        self._fd_lock = threading.Lock()  # guards _fd against replacement while a reply is written

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FuseMount:
        """Mount and start serving; returns once the kernel finished INIT."""
        if self._reader is not None:
            raise MountError(f"FUSE mount at {self.mountpoint} already started")
        if not os.path.isdir(self.mountpoint):
            raise MountError(f"mountpoint {self.mountpoint} is not a directory")
        try:
            self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise MountError(f"cannot open /dev/fuse for {self.mountpoint}: {err.strerror}") from err
        self._ops = Operations(
            self.tree,
            entry_timeout=self._entry_timeout,
            attr_timeout=self._attr_timeout,
            passthrough=self._want_passthrough,
            dev_fd=self._fd,
        )
        try:
            _mount.mount_fuse(self._fd, self.mountpoint, self.fsname)
        except MountError:
            os.close(self._fd)
            self._fd = -1
            raise
        self._mounted = True
        entry = _mount.mount_entry(self.mountpoint)
        self._device = entry[2] if entry else ""
        self._pool = WorkerPool(self._run_one, *self._workers, name=f" {self.mountpoint}")
        self._reader = threading.Thread(
            target=self._read_loop, name=f"fuse-reader {self.mountpoint}", daemon=True
        )
        self._reader.start()
        if not self._initialized.wait(self._init_timeout):
            self.stop()
            raise MountError(f"kernel sent no FUSE_INIT for {self.mountpoint} within {self._init_timeout}s")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Unmount (detached) and stop the threads; a busy mount's connection is aborted after ``timeout``."""
        if self._mounted:
            self._mounted = False
            try:
                _mount.umount(self.mountpoint)
            except OSError as err:
                if err.errno not in (errno.EINVAL, errno.ENOENT):
                    log.warning("unmount of %s: %s", self.mountpoint, err)
        if self._reader is not None:
            self._reader.join(timeout)
            if self._reader.is_alive() and self._device and _mount.abort_connection(self._device):
                self._reader.join(timeout)
            if self._reader.is_alive():
                log.error("FUSE reader of %s did not stop", self.mountpoint)
        if self._ops is not None:
            self._ops.backing.close_all()
        workers_done = self._pool.stop(timeout) if self._pool is not None else True
        reader_done = self._reader is None or not self._reader.is_alive()
        with self._fd_lock:
            if self._fd >= 0:
                if workers_done and reader_done:
                    os.close(self._fd)
                else:
                    # A thread is still inside the tree or the device: keep the fd number taken (by
                    # /dev/null) so its late reply cannot reach a file opened later under that number.
                    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                    os.dup2(null, self._fd)
                    os.close(null)
                self._fd = -1

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
    def passthrough_files(self) -> int:
        """Inodes currently registered as passthrough backing files."""
        return len(self._ops.backing) if self._ops is not None else 0

    # -- the loop ---------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        assert self._ops is not None and self._pool is not None
        while True:
            try:
                buf = os.read(self._fd, protocol.READ_BUFFER)
            except OSError as err:
                if err.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                    continue  # ENOENT: the request was interrupted before we read it
                if err.errno not in (errno.ENODEV, errno.ECONNABORTED, errno.EBADF):
                    log.error("reading /dev/fuse for %s: %s", self.mountpoint, err)
                break  # ENODEV: unmounted
            if not buf:
                break
            try:
                req = protocol.parse_request(buf)
            except protocol.ProtocolError as err:
                log.error("%s: %s", self.mountpoint, err)
                continue
            if req.opcode == Op.INIT:
                self._reply(req, self._ops.init(req))
                self._initialized.set()
            elif req.opcode in protocol.NO_REPLY or req.opcode == Op.DESTROY:
                self._run_one(req)
            else:
                self._pool.submit(req)
        self._initialized.set()

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
            if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.EBADF, errno.ECONNABORTED):
                log.error("FUSE reply to %s on %s failed: %s", Op(req.opcode).name, self.mountpoint, exc)
