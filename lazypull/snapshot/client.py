"""``MountClient``: what the CLI and the runtime use to talk to the mount server.

It connects to ``<root>/run/lazypull.sock`` and, when nobody answers there (no server yet, or the
server died), starts ``lazypull daemon`` detached from the caller (new session, reaped by a thread
of the caller, reparented to init when the caller exits, output in ``run/daemon.log``) and waits for
its socket. A server that dies between two requests is
restarted the same way; on start it restores the mounts its state file lists.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lazypull.errors import MountError
from lazypull.image.rootdir import prepare_root
from lazypull.selfexec import lazypull_argv
from lazypull.snapshot.paths import RunPaths
from lazypull.snapshot.protocol import (
    MAX_LINE,
    LayerMount,
    MountInfo,
    PulledImage,
    decode,
    encode,
    raise_error,
)

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
#: How often a client waiting for a starting server tries its socket (a unix connect costs microseconds).
START_POLL = 0.01


class MountClient:
    """A connection to the mount server of one store root; thread-safe (requests are serialised)."""

    def __init__(self, root: Path | str, *, autostart: bool = True, timeout: float | None = 600.0) -> None:
        self.paths = RunPaths(Path(root))
        self.autostart = autostart
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._lock = threading.Lock()

    # -- the API (docs/architecture.md, "snapshot") --

    def pull_image(self, ref: str, *, insecure: bool = False, platforms: Sequence[str] | None = None,
                   all_platforms: bool = False, holder: str | None = None,
                   run: dict[str, object] | None = None) -> PulledImage:
        """Pull ``ref`` lazily in the server (manifests and config into the store) and mount its lazy
        layers, held by ``holder`` (default: the image itself, as :meth:`mount_image` without one).
        ``run`` (``runtime.spec.run_request``): the flags of the container this pull is for; the server
        starts fetching the program it will execute, as :meth:`mount_image`'s ``program`` does."""
        result = self._call("pull_image", ref=ref, insecure=insecure,
                            platforms=list(platforms) if platforms else None, all_platforms=all_platforms,
                            holder=holder, run=run)
        if not isinstance(result, dict):
            raise MountError("mount server returned a malformed pull result")
        return PulledImage.from_json(result)

    def mount_image(self, image_name: str, *, insecure: bool = False, holder: str | None = None,
                    wait_prefetch: bool | None = None, program: dict[str, str] | None = None
                    ) -> list[LayerMount]:
        """Mount every lazy layer of a stored image; one entry per layer, bottom first.

        ``holder`` names who keeps the mounts (a container id); default: the image name itself.
        Each holder counts once per image however often it mounts it. ``wait_prefetch``: return only
        once the layers' prefetch is done (or ``prefetch_timeout`` passed); default: when a holder (a
        container about to start) is given, as stargz-snapshotter does when a container's rootfs is set up.
        ``program`` (``argv0``, ``path``, ``cwd``): what the container will execute; the server starts
        fetching it and its libraries now.
        """
        result = self._call("mount_image", image=image_name, insecure=insecure, holder=holder,
                            wait_prefetch=wait_prefetch, program=program)
        return [LayerMount.from_json(item) for item in result]

    def release_image(self, image_name: str, *, holder: str | None = None) -> None:
        """Drop ``holder``'s hold on the image's layers; layers nobody holds are unmounted."""
        self._call("release_image", image=image_name, holder=holder)

    def wait_prefetch(self, digests: Sequence[str], timeout: float | None = None) -> bool:
        """Wait until the prefetch of these layers is done; False on timeout.

        ``timeout`` None means the server's configured ``prefetch_timeout`` (10 s by default).
        """
        return bool(self._call("wait_prefetch", digests=list(digests), timeout=timeout))

    def unmount_unused(self) -> list[str]:
        """Unmount every layer no image or container holds; the digests unmounted."""
        return [str(d) for d in self._call("unmount_unused")]

    def list_mounts(self) -> list[MountInfo]:
        """Every layer filesystem the server has mounted."""
        return [MountInfo.from_json(item) for item in self._call("list_mounts")]

    def stats(self) -> dict[str, Any]:
        """Counters per layer: ``{"layers": {digest: {...}}, ...}``."""
        result = self._call("stats")
        if not isinstance(result, dict):
            raise MountError("mount server returned malformed stats")
        return result

    def store_request(self, op: str, **args: Any) -> Any:
        """An additional layer store request (``serve_store``, ``stop_store``, ``list_stores``:
        ``lazypull.store.service.Stores``); its raw result."""
        if op not in ("serve_store", "stop_store", "list_stores"):
            raise MountError(f"not a store request: {op!r}")
        return self._call(op, **args)

    def ping(self, *, warm: bool = False) -> dict[str, Any]:
        """The server's pid and root; starts it if needed. ``warm``: answered once the server has
        warmed up (registry and pull modules imported, clients made; otherwise done after its first
        request or 1 s), so a request sent next finds it as a server started long before would."""
        result = self._call("ping", warm=True) if warm else self._call("ping")
        return result if isinstance(result, dict) else {}

    def status(self) -> dict[str, Any]:
        """What ``lazypull daemon status`` shows: pid, root, uptime, metrics address, cache size and
        the counters of :meth:`LayerManager.totals` (mounted layers, holds, bytes fetched ...)."""
        result = self._call("status")
        if not isinstance(result, dict):
            raise MountError("mount server returned a malformed status")
        return result

    def shutdown(self, *, unmount: bool = True) -> None:
        """Ask the server to exit (unmounting everything unless ``unmount`` is False)."""
        with contextlib.suppress(MountError, OSError):
            self._call("shutdown", _autostart=False, unmount=unmount)
        self.close()

    def close(self) -> None:
        """Drop the connection (the server keeps running)."""
        with self._lock:
            self._disconnect()

    def __enter__(self) -> MountClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport --

    def _call(self, op: str, *, _autostart: bool | None = None, **args: Any) -> Any:
        autostart = self.autostart if _autostart is None else _autostart
        request = encode({"op": op, "args": args})
        with self._lock:
            for attempt in range(2):
                try:
                    if self._sock is None:
                        self._connect(autostart)
                    assert self._sock is not None
                    self._sock.sendall(request)
                    reply = decode(self._readline())
                    break
                except (ConnectionError, FileNotFoundError, BrokenPipeError, EOFError) as err:
                    self._disconnect()
                    if attempt == 1 or not autostart:
                        raise MountError(f"mount server at {self.paths.socket} did not answer {op!r}: "
                                         f"{err}") from err
                    log.info("mount server connection lost (%s); reconnecting", err)
                except TimeoutError as err:
                    self._disconnect()
                    raise MountError(f"mount server timed out on {op!r} after {self.timeout}s") from err
        if not reply.get("ok"):
            raise_error(reply.get("error") or {})
        return reply.get("result")

    def _readline(self) -> bytes:
        assert self._sock is not None
        while b"\n" not in self._buf:
            data = self._sock.recv(1 << 16)
            if not data:
                raise EOFError("connection closed by the mount server")
            self._buf += data
            if len(self._buf) > MAX_LINE:
                raise MountError("mount server reply too long")
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _try_connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.paths.socket))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        sock.settimeout(self.timeout)
        return sock

    def _connect(self, autostart: bool) -> None:
        self._buf = b""
        sock = self._try_connect()
        if sock is None:
            if not autostart:
                raise ConnectionRefusedError(f"no mount server listening on {self.paths.socket}")
            sock = self._start_daemon()
        self._sock = sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._buf = b""

    def _start_daemon(self) -> socket.socket:
        """Start the server unless another client just did; return a connection to it."""
        prepare_root(self.paths.root)
        with open(self.paths.start_lock, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sock = self._try_connect()
            if sock is not None:
                return sock
            pid: int | None = None
            began = time.monotonic()
            while time.monotonic() < began + START_TIMEOUT:
                # A server holding the lock without a socket is starting, or stopping: wait for its
                # socket, or for it to be gone (the lock is the process's) and start the next one then.
                if pid is None and not _daemon_alive(self.paths):
                    log.info("starting the mount server for %s", self.paths.root)
                    pid = _launch(lazypull_argv("daemon", "--root", str(self.paths.root)), self.paths.logfile)
                sock = self._try_connect()
                if sock is not None:
                    return sock
                if pid is not None and not _pid_alive(pid):
                    raise MountError(f"the mount server exited during startup; see {self.paths.logfile}: "
                                     f"{_log_tail(self.paths.logfile)}")
                time.sleep(START_POLL)
        raise MountError(f"the mount server did not start within {START_TIMEOUT:.0f}s; "
                         f"see {self.paths.logfile}: {_log_tail(self.paths.logfile)}")


def _launch(cmd: list[str], logfile: Path) -> int:
    """Start the server in its own session (a terminal's signals to the caller do not reach it); a
    thread reaps it should it exit while the caller lives (no zombie in a long-lived caller). Directly,
    not through an intermediate interpreter: that cost a Python start-up (~30 ms) per server start."""
    with open(logfile, "ab") as log_fh:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=log_fh,
                                start_new_session=True, close_fds=True)
    threading.Thread(target=proc.wait, name="mount-server-reaper", daemon=True).start()
    return proc.pid


def _daemon_alive(paths: RunPaths) -> bool:
    """Whether the pidfile names a live process still holding its lock (a server starting up)."""
    try:
        with open(paths.pidfile, "rb") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


def _pid_alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not: the daemon is reaped by init or a reaper thread)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (FileNotFoundError, IndexError):
        return False


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def daemon_pid(root: Path | str) -> int | None:
    """The pid in the server's pidfile, if any (for tests and ``lazypull stats``)."""
    try:
        return int(RunPaths(Path(root)).pidfile.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


__all__ = ["MountClient", "daemon_pid"]
