"""Driving Debian's ``runc`` for one foreground container.

Without a terminal, ``runc run`` runs in the foreground with our stdio (stdin only with ``-i``); its
exit status is the container's (128+N when killed by signal N) and it forwards signals we pass on.

With ``-t``, runc must hand the pseudo-terminal master to someone: we start ``runc run --detach
--console-socket S``, receive the master over the unix socket, become the child subreaper so the
container's init is re-parented to us when runc exits, copy bytes between our stdio and the master,
and reap the init for its exit status (what containerd's shim does).
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from lazypull.errors import ContainerError

log = logging.getLogger(__name__)

RUNC_BINARY = "runc"
LIST_ATTEMPTS = 20  # a `runc list` racing container deletions is repeated (each one can only lose one race)
STOP_GRACE = 5.0  # seconds between forwarding a stop signal and killing the container
_PR_SET_CHILD_SUBREAPER = 36
_FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


@dataclass(frozen=True)
class Stdio:
    """Where the container's standard streams go (file objects with real file descriptors)."""

    stdin: IO[Any] | None = None     # None: /dev/null
    stdout: IO[Any] | None = None    # None: ours
    stderr: IO[Any] | None = None    # None: ours


def exit_code(status: int) -> int:
    """A ``waitpid`` status as a shell would report it (128+N for signal N)."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Runc:
    """``runc --root <state>`` calls for containers whose bundles we made."""

    def __init__(self, state_root: Path, binary: str = RUNC_BINARY) -> None:
        self.state_root = state_root
        self.binary = binary

    def _base(self, log_file: Path | None = None) -> list[str]:
        cmd = [self.binary, "--root", str(self.state_root)]
        if log_file is not None:
            cmd += ["--log", str(log_file), "--log-format", "json"]
        return cmd

    def _missing(self) -> str:
        return f"{self.binary} is not installed (scripts/install-deps.sh installs it)"

    def _call(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run([*self._base(), *args], capture_output=True, text=True)
        except FileNotFoundError as err:
            raise ContainerError(self._missing()) from err
        if check and result.returncode != 0:
            raise ContainerError(f"runc {' '.join(args)} failed: "
                                 f"{result.stderr.strip() or result.returncode}")
        return result

    def _runc_error(self, log_file: Path) -> str | None:
        """The last error runc itself logged (not the container's), if any."""
        try:
            lines = log_file.read_text().splitlines()
        except OSError:
            return None
        errors = []
        for line in lines:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                    errors.append(str(entry.get("msg")))
        return errors[-1] if errors else None

    # -- queries and cleanup ---------------------------------------------------------------------

    def state(self, container_id: str) -> dict[str, Any] | None:
        """runc's state of the container, or None if runc does not know it."""
        result = self._call("state", container_id, check=False)
        if result.returncode != 0:
            return None
        state: dict[str, Any] = json.loads(result.stdout)
        return state

    def status(self, container_id: str) -> str | None:
        """The container's runc status (created, running, paused, stopped), None if runc does not know
        it. Asks about this container only: a ``runc list`` fails when any other container of the
        root is deleted while it reads their states."""
        state = self.state(container_id)
        return None if state is None else str(state.get("status"))

    def list(self) -> dict[str, str]:
        """container id -> status (created, running, paused, stopped) for everything runc knows."""
        for attempt in range(LIST_ATTEMPTS):
            if not self.state_root.exists():
                return {}
            result = self._call("list", "--format", "json", check=False)
            if result.returncode == 0:
                entries = json.loads(result.stdout or "null") or []
                return {entry["id"]: entry["status"] for entry in entries}
            # runc lists the state directories, then reads each: one deleted meanwhile (another
            # container exiting) fails the whole listing with ENOENT. Listing again sees it gone.
            if "no such file or directory" not in result.stderr or attempt == LIST_ATTEMPTS - 1:
                break
        raise ContainerError(f"runc list --format json failed: {result.stderr.strip() or result.returncode}")

    def kill(self, container_id: str, sig: str = "KILL", *, all_processes: bool = True) -> None:
        """Send ``sig`` to the container (every process with ``all_processes``)."""
        self._call("kill", *(["--all"] if all_processes else []), container_id, sig, check=False)

    def delete(self, container_id: str, *, force: bool = False) -> None:
        """Forget the container (kills it first with ``force``); no error if runc does not know it."""
        if not (self.state_root / container_id).exists():
            # runc knows a container by its state directory <root>/<id>; a foreground `runc run`
            # removes it when the container exits, so after every attached run this saves two runc
            # processes (delete, then state), ~5 ms of `start --attach`.
            return
        result = self._call("delete", *(["--force"] if force else []), container_id, check=False)
        if result.returncode != 0 and self.state(container_id) is not None:
            raise ContainerError(f"runc delete {container_id} failed: {result.stderr.strip()}")

    # -- running ---------------------------------------------------------------------------------

    def run(self, container_id: str, bundle: Path, *, tty_mode: bool, stdio: Stdio = Stdio()) -> int:
        """Run the container in the foreground until it exits; returns its exit status."""
        self.state_root.mkdir(parents=True, exist_ok=True)
        log_file = bundle / "runc.log"
        with contextlib.suppress(FileNotFoundError):
            log_file.unlink()
        try:
            if tty_mode:
                return self._run_tty(container_id, bundle, log_file, stdio)
            return self._run_plain(container_id, bundle, log_file, stdio)
        except FileNotFoundError as err:
            if err.filename == self.binary:
                raise ContainerError(self._missing()) from err
            raise

    def _run_plain(self, container_id: str, bundle: Path, log_file: Path, stdio: Stdio) -> int:
        cmd = [*self._base(log_file), "run", "--bundle", str(bundle), container_id]
        stdin: IO[Any] | int = stdio.stdin if stdio.stdin is not None else subprocess.DEVNULL
        # runc gets a process group of its own, so a SIGINT reaches the container once, through us,
        # whether it came from the terminal (Ctrl-C) or from kill: docker forwards it the same way.
        # Not when the container reads our terminal: a background group reading it would be stopped.
        own_group = not _is_terminal(stdin)
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=stdio.stdout, stderr=stdio.stderr,
                                process_group=0 if own_group else None)
        stop_requested: list[float] = []

        def forward(sig: signal.Signals) -> None:
            stop_requested.append(time.monotonic())
            if own_group or sig != signal.SIGINT:  # else Ctrl-C reaches runc through the terminal
                proc.send_signal(sig)

        with _forwarding_signals(forward), _exit_waiter(proc) as exited:
            while True:
                if exited(0.2):
                    code = proc.wait()
                    break
                # A container's pid 1 ignores signals it has no handler for: after asking, insist.
                if stop_requested and time.monotonic() - stop_requested[0] > STOP_GRACE:
                    self.kill(container_id, "KILL")
                    stop_requested.clear()
        error = self._runc_error(log_file)
        if error is not None:
            raise ContainerError(f"runc could not run container {container_id}: {error}")
        return 128 - code if code < 0 else code

    def _run_tty(self, container_id: str, bundle: Path, log_file: Path, stdio: Stdio) -> int:
        """Run with a console, as the child subreaper only while the container runs: a long-lived
        caller (the mount server, a test runner) must not inherit unrelated orphans afterwards."""
        if _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise ContainerError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
        try:
            return self._run_tty_reaping(container_id, bundle, log_file, stdio)
        finally:
            _libc().prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

    def _run_tty_reaping(self, container_id: str, bundle: Path, log_file: Path, stdio: Stdio) -> int:
        # Signals are ours to forward from before runc starts: the container is listed (and can be
        # signalled by a user who sees it) before runc returns; one arriving meanwhile waits for it.
        stop_requested: list[float] = []
        pending: list[signal.Signals] = []
        started: list[bool] = []

        def forward(sig: signal.Signals) -> None:
            stop_requested.append(time.monotonic())
            if not started:
                pending.append(sig)
                return
            self.kill(container_id, str(int(sig)), all_processes=False)

        def insist() -> None:
            if stop_requested and time.monotonic() - stop_requested[0] > STOP_GRACE:
                self.kill(container_id, "KILL")
                stop_requested.clear()

        with _forwarding_signals(forward):
            master, pid = self._start_tty(container_id, bundle, log_file)
            try:
                started.append(True)
                for sig in pending:
                    self.kill(container_id, str(int(sig)), all_processes=False)
                _copy_console(master, pid, stdio, tick=insist)
            finally:
                os.close(master)
        status = _reap(pid)
        return exit_code(status)

    def _start_tty(self, container_id: str, bundle: Path, log_file: Path) -> tuple[int, int]:
        """``runc run --detach`` with a console socket: the pty master and the container's pid."""
        with tempfile.TemporaryDirectory(prefix="lazypull-console-") as tmp:
            sock_path = os.path.join(tmp, "console.sock")
            pid_file = Path(tmp) / "init.pid"
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(sock_path)
            listener.listen(1)
            cmd = [*self._base(log_file), "run", "--detach", "--console-socket", sock_path,
                   "--pid-file", str(pid_file), "--bundle", str(bundle), container_id]
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            try:
                master = _receive_console(listener, proc)
            finally:
                listener.close()
            _, runc_stderr = proc.communicate()
            if proc.returncode != 0:
                if master is not None:
                    os.close(master)
                error = self._runc_error(log_file) or runc_stderr.decode(errors="replace").strip()
                raise ContainerError(f"runc could not run container {container_id}: {error}")
            if master is None:
                raise ContainerError(f"runc did not send the console of container {container_id}")
            return master, int(pid_file.read_text().strip())


def exec_process(runc: Runc, container_id: str, argv: Sequence[str], *, tty: bool, stdin: bool,
                 detach: bool, env: Sequence[str] = (), cwd: str | None = None,
                 user: tuple[int, int] | None = None) -> int:
    """``runc exec`` of ``argv`` in a running container (``lazypull exec``); returns its exit status.

    Attached, runc itself proxies our terminal (``tty``) or our streams and forwards signals to the
    process; ``detach`` returns once it started. ``env`` is ``KEY=VALUE`` lines, ``user`` (uid, gid).
    """
    cmd = [*runc._base(), "exec"]
    if tty:
        cmd.append("--tty")
    if detach:
        cmd.append("--detach")
    for line in env:
        cmd += ["--env", line]
    if cwd:
        cmd += ["--cwd", cwd]
    if user is not None:
        cmd += ["--user", f"{user[0]}:{user[1]}"]
    cmd += [container_id, *argv]
    try:
        proc = subprocess.run(cmd, stdin=None if stdin or tty else subprocess.DEVNULL)
    except FileNotFoundError as err:
        raise ContainerError(runc._missing()) from err
    return 128 - proc.returncode if proc.returncode < 0 else proc.returncode


def _is_terminal(stream: IO[Any] | int) -> bool:
    """Whether the container's stdin would be a terminal."""
    if isinstance(stream, int):
        return stream >= 0 and os.isatty(stream)
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def _libc() -> Any:
    # the symbols this process already has, libc's among them (find_library("c") runs ldconfig)
    return ctypes.CDLL(None, use_errno=True)


def _receive_console(listener: socket.socket, proc: subprocess.Popen[bytes]) -> int | None:
    """Accept runc's connection and take the pty master fd from it (None if runc exits first)."""
    while True:
        ready, _, _ = select.select([listener], [], [], 0.1)
        if ready:
            conn, _ = listener.accept()
            with conn:
                _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
            return fds[0] if fds else None
        if proc.poll() is not None:
            return None


@contextlib.contextmanager
def _exit_waiter(proc: subprocess.Popen[Any]) -> Iterator[Callable[[float], bool]]:
    """``exited(timeout)``: whether ``proc`` has exited, waiting at most ``timeout`` s. Wakes as the
    process exits (a pidfd), where ``Popen.wait(timeout)`` polls with sleeps of up to 50 ms."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):      # no pidfd (old kernel): Popen's polling wait
        def polled(timeout: float) -> bool:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            return True

        yield polled
        return
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    try:
        yield lambda timeout: bool(poller.poll(timeout * 1000))
    finally:
        os.close(pidfd)


@contextlib.contextmanager
def _forwarding_signals(forward: Any) -> Iterator[None]:
    """While the container runs, signals to us go to ``forward`` (never interrupting our own cleanup)."""
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(Exception):
            forward(signal.Signals(signum))

    try:
        for sig in (signal.SIGINT, *_FORWARDED_SIGNALS):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        for sig, old in previous.items():
            signal.signal(sig, old)
        previous.clear()
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGINT wait (blocked) until the block is done, then arrive: a clean-up
    they would cut short (a container's rootfs unmount, a ``--rm`` removal) finishes first."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _terminal_size(fd: int) -> bytes | None:
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None


def console_size() -> tuple[int, int] | None:
    """(rows, columns) of our terminal, if stdout is one."""
    size = _terminal_size(sys.stdout.fileno()) if sys.stdout.isatty() else None
    if size is None:
        return None
    rows, cols = array.array("H", size[:4])
    return (rows, cols) if rows and cols else None


def _copy_console(master: int, pid: int, stdio: Stdio, tick: Callable[[], None] | None = None) -> None:
    """Copy stdin -> master and master -> stdout until the pty hangs up (the container exited).

    ``tick`` is called about twice a second (the caller's chance to escalate a stop)."""
    out_fd = stdio.stdout.fileno() if stdio.stdout is not None else sys.stdout.fileno()
    in_fd = stdio.stdin.fileno() if stdio.stdin is not None else None
    raw_saved = None
    if in_fd is not None and os.isatty(in_fd):
        raw_saved = termios.tcgetattr(in_fd)
        tty.setraw(in_fd, termios.TCSANOW)  # not TCSAFLUSH: keep what was typed ahead
    if os.isatty(out_fd):
        size = _terminal_size(out_fd)
        if size is not None:
            with contextlib.suppress(OSError):
                fcntl.ioctl(master, termios.TIOCSWINSZ, size)

    def resize(_signum: int, _frame: FrameType | None) -> None:
        size = _terminal_size(out_fd)
        if size is not None:
            with contextlib.suppress(OSError):
                fcntl.ioctl(master, termios.TIOCSWINSZ, size)

    old_winch = None
    with contextlib.suppress(ValueError):
        old_winch = signal.signal(signal.SIGWINCH, resize)
    try:
        readers = [master] + ([in_fd] if in_fd is not None else [])
        while True:
            try:
                ready, _, _ = select.select(readers, [], [], 0.5)
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave end closed
                    data = b""
                if not data:
                    break
                _write_all(out_fd, data)
            if in_fd is not None and in_fd in ready:
                data = os.read(in_fd, 65536)
                if data:
                    _write_all(master, data)
                else:  # our stdin ended: send EOF (^D) to the terminal, stop reading
                    with contextlib.suppress(OSError):
                        os.write(master, b"\x04")
                    readers.remove(in_fd)
            if tick is not None:
                tick()
            if not ready and _exited(pid):
                # drain what is left, then stop
                with contextlib.suppress(OSError):
                    while select.select([master], [], [], 0.05)[0]:
                        data = os.read(master, 65536)
                        if not data:
                            break
                        _write_all(out_fd, data)
                break
    finally:
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)
        if raw_saved is not None and in_fd is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, raw_saved)


_exit_statuses: dict[int, int] = {}


def _exited(pid: int) -> bool:
    """Whether ``pid`` (our child, as subreaper) has exited; reaps it and keeps its status."""
    if pid in _exit_statuses:
        return True
    try:
        child, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    if child == 0:
        return False
    _exit_statuses[pid] = status
    return True


def _reap(pid: int) -> int:
    if pid in _exit_statuses:
        return _exit_statuses.pop(pid)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError as err:
        raise ContainerError(f"lost track of container process {pid}") from err
    return status


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]
