"""The keeper of live FUSE connections: a small process per store root that holds a copy of each lazy
layer mount's ``/dev/fuse`` fd, so that a killed, restarted or upgraded mount server does not end them.

The kernel ends a FUSE connection when the last fd of it closes; its mounts then answer ENOTCONN, and
running containers lose their lower layers. The server hands each mount's fd here right after the
mount (SCM_RIGHTS over ``run/keeper.sock``) with what INIT negotiated, and the memfd of the mount's
request journal (``lazypull.fs.fuse.journal``); while no server runs, reads on the mounts wait. The
next server takes the fds back (:meth:`KeeperClient.take`), serves each connection again
(``FuseMount.resume``) and answers what its predecessor read but never answered (the kernel resends
it, 6.9+, or the journal holds it).

The keeper holds fds and small JSON records only (no layer state), so it never needs upgrading with
the server. It drops an fd whose connection the kernel ended (the mount went: the fd's EPOLLERR wakes
it, so nothing is polled per message), and exits when it holds none and no server is connected. Only
root (or its own user) may talk to it. It keeps at most MAX_KEPT connections: a put past them is refused
(that layer is not kept, the server goes on).

Passthrough ids are filed per connection (``conn``, a token the server makes at mount and keeps across
take-overs), not per layer: a note that arrives after its mount was dropped (a cold open while the layer
is being unmounted) is never handed with a later connection of the same layer, whose ids are its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import selectors
import socket
import stat
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lazypull.errors import MountError
from lazypull.fdlimit import raise_fd_limit
from lazypull.lockfile import flocked
from lazypull.snapshot.paths import RunPaths

if TYPE_CHECKING:
    # The keeper's own process never builds one (it keeps INIT's outcome as JSON): only the server,
    # which has it loaded anyway, and the keeper starts beside every fresh server (issue 14).
    from lazypull.fs import Negotiated

log = logging.getLogger(__name__)

#: What a record means (inode numbering in TOC order, node-id served reads): a server that does not
#: know the version found does not take the connection over (it lets it go, as before keepers).
VERSION = 1
MAX_MESSAGE = 64 << 10
#: a record from a keeper before IDS_PER_MESSAGE came whole, up to its socket's send buffer (~200 KiB)
MAX_RECORD = 1 << 20
IDS_PER_MESSAGE = 1024  # passthrough ids per message of a take (at most ~37 KiB of JSON)
MAX_IDS = 1 << 18       # passthrough ids kept per connection (a note past it is refused)
MAX_KEPT = 4096         # connections kept; a put past it is refused (that layer is not kept)
IDLE_EXIT = 2.0         # s with no fd kept and no server connected before the keeper exits
START_WAIT = 10.0       # s a server waits for the keeper it started (or found starting) to listen
START_POLL = 0.005      # s between looks for the socket while a start is under way
MAX_LAUNCHES = 3        # keepers started in one start (one that found an older keeper's lock held: again)
REPLY_WAIT = 10.0       # s a server waits for a keeper's answer
LISTEN_BACKLOG = 16


def _step(name: str) -> None:
    """Called at each step of an idle exit and of a start's wait (tests replace it to act there)."""


@dataclass
class Kept:
    """One connection the keeper holds: the layer, its mountpoint, a ``/dev/fuse`` fd, INIT's outcome."""

    digest: str
    mountpoint: str
    fd: int
    state: Negotiated
    backing: dict[int, int]         # passthrough ids registered on the connection: ino -> id
    journal: int | None = None      # the request journal's memfd (None: kept by a server without one)
    conn: str = ""                  # the connection's token ("": kept by a server without them)

    def close(self) -> None:
        """Close this copy of the connection (and of its journal): the keeper keeps its own."""
        _close_all([self.fd] if self.journal is None else [self.fd, self.journal])


# -- the keeper process ---------------------------------------------------------------------------


class _Keeper:
    def __init__(self, sock: socket.socket, max_kept: int = MAX_KEPT) -> None:
        self.sock = sock
        self.max_kept = max_kept
        self.sel = selectors.DefaultSelector()
        self.sel.register(sock, selectors.EVENT_READ)
        #: the kept FUSE fds with no event asked: epoll still reports EPOLLERR, which /dev/fuse raises
        #: when the kernel ends the connection, so only an ending costs the keeper any work
        self.ended = select.epoll()
        self.sel.register(self.ended, selectors.EVENT_READ)
        self.clients: set[socket.socket] = set()
        self.kept: dict[str, tuple[list[int], dict[str, object]]] = {}   # [fuse fd, journal fd?]
        self.by_fd: dict[int, str] = {}                 # kept FUSE fd -> digest
        self.backing: dict[str, dict[str, dict[str, int]]] = {}    # digest -> conn -> {ino: id}
        self.idle_since = time.monotonic()

    def run(self) -> None:
        while True:
            for key, _ in self.sel.select(1.0):
                if key.fileobj is self.sock:
                    self._accept()
                elif key.fileobj is self.ended:
                    self._release_ended()
                else:
                    assert isinstance(key.fileobj, socket.socket)
                    self._serve(key.fileobj)
            if self.kept or self.clients:
                self.idle_since = time.monotonic()
            elif time.monotonic() - self.idle_since > IDLE_EXIT:
                return

    def accept_waiting(self) -> bool:
        """Accept the connections waiting (made before the socket was unlinked); whether one is open."""
        for _ in range(LISTEN_BACKLOG + 1):     # bounded: an accept that fails leaves its connection
            if not select.select([self.sock], [], [], 0)[0]:
                break
            self._accept()
        return bool(self.clients)

    def listen_on(self, sock: socket.socket) -> None:
        """Serve ``sock`` (bound again at the socket's path) instead of the unlinked one."""
        self.sel.unregister(self.sock)
        self.sock.close()
        self.sock = sock
        self.sel.register(sock, selectors.EVENT_READ)
        self.idle_since = time.monotonic()

    def close(self) -> None:
        """Let go of everything (the keeper exits; in a test, its process goes on)."""
        for digest in list(self.kept):
            self._forget(digest)
        for conn in list(self.clients):
            self._drop_client(conn)
        self.sel.close()
        self.ended.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            uid = struct.unpack("3i", creds)[1]
            if uid not in (0, os.getuid()):
                log.warning("keeper: refused a connection from uid %d", uid)
                conn.close()
                return
            self.clients.add(conn)
            self.sel.register(conn, selectors.EVENT_READ)

    def _drop_client(self, conn: socket.socket) -> None:
        self.sel.unregister(conn)
        self.clients.discard(conn)
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 2)
        except OSError:
            self._drop_client(conn)
            return
        if not data:
            for fd in fds:
                os.close(fd)
            self._drop_client(conn)
            return
        try:
            reply = self._handle(data, fds)
            for message, passed in reply:
                if not passed:
                    conn.sendall(message)
                else:
                    socket.send_fds(conn, [message], passed)
        except (OSError, ValueError) as err:
            log.warning("keeper: bad request: %s", err)
            self._drop_client(conn)

    def _handle(self, data: bytes, fds: list[int]) -> list[tuple[bytes, list[int]]]:
        try:
            request = json.loads(data)
            if not isinstance(request, dict):
                raise ValueError("not an object")
            op = request.get("op")
            conn = request.get("conn", "")
            if not isinstance(conn, str):
                raise ValueError("conn is not a string")
            if op == "put":
                digest = request.get("digest")
                if len(fds) not in (1, 2) or not isinstance(digest, str) or not _is_fuse_device(fds[0]):
                    raise ValueError("put needs a /dev/fuse fd (and a journal fd) and a digest")
                if digest not in self.kept and len(self.kept) >= self.max_kept:
                    # a refusal, not a bad request: the server keeps its connection here for the others
                    return [(json.dumps({"ok": False, "error": f"it keeps {len(self.kept)} connections "
                                         f"already, its most"}).encode(), [])]
                ids = self.backing.get(digest, {}).get(conn, {})    # noted before the put, or kept
                self._forget(digest)
                self.ended.register(fds[0], 0)
                self.kept[digest] = (fds[:], {k: request.get(k) for k in
                                              ("digest", "mountpoint", "state", "version", "conn")})
                self.by_fd[fds[0]] = digest
                self.backing[digest] = {conn: ids}
                fds.clear()
                return [(b'{"ok": true}', [])]
            if op == "backing":     # ids noted before the put (registered meanwhile) are kept too
                digest, ino, backing_id = request.get("digest"), request.get("ino"), request.get("id")
                if not isinstance(digest, str) or type(ino) is not int or type(backing_id) is not int:
                    raise ValueError("backing needs a digest, an inode and an id")
                ids = self.backing.setdefault(digest, {}).setdefault(conn, {})
                if backing_id and str(ino) not in ids and len(ids) >= MAX_IDS:
                    return [(json.dumps({"ok": False, "error": f"it keeps {MAX_IDS} passthrough ids of "
                                         f"layer {digest} already, its most"}).encode(), [])]
                if backing_id:
                    ids[str(ino)] = backing_id
                else:
                    ids.pop(str(ino), None)
                return [(b'{"ok": true}', [])]
            if op == "drop":
                self._forget(str(request.get("digest")))
                return [(b'{"ok": true}', [])]
            if op == "take":    # per connection: its record and fds, then ``more`` messages of its ids
                self._release_ended()
                out: list[tuple[bytes, list[int]]] = []
                for digest, (held, meta) in self.kept.items():
                    pairs = list(self.backing.get(digest, {}).get(str(meta["conn"] or ""), {}).items())
                    step = IDS_PER_MESSAGE
                    parts = [dict(pairs[i:i + step]) for i in range(0, len(pairs), step)] or [{}]
                    out.append((json.dumps({**meta, "backing": parts[0], "more": len(parts) - 1}).encode(),
                                held))
                    out += [(json.dumps({"backing": part}).encode(), []) for part in parts[1:]]
                return [*out, (json.dumps({"end": len(self.kept)}).encode(), [])]
            raise ValueError(f"unknown op {op!r}")
        finally:
            for fd in fds:
                os.close(fd)

    def _forget(self, digest: str) -> None:
        """Close what is kept for ``digest`` and forget its passthrough ids (of every connection)."""
        self.backing.pop(digest, None)
        gone = self.kept.pop(digest, None)
        if gone is not None:
            self.by_fd.pop(gone[0][0], None)
            with contextlib.suppress(OSError, ValueError):
                self.ended.unregister(gone[0][0])
            _close_all(gone[0])

    def _release_ended(self) -> None:
        """Close the fds of connections the kernel ended (their mount went)."""
        for fd, _ in self.ended.poll(0):
            digest = self.by_fd.get(fd)
            if digest is not None:
                self._forget(digest)
                log.info("keeper: the connection of %s ended", digest)


def _is_fuse_device(fd: int) -> bool:
    """Whether ``fd`` is open on the FUSE device (misc 10:229), the only fd a put may hand."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(10, 229)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def serve(root: Path, *, max_kept: int = MAX_KEPT) -> None:
    """Run the keeper of ``root`` until it holds nothing and nobody is connected; one per root (lock).
    ``max_kept``: connections kept at most (tests)."""
    paths = RunPaths(root)
    with open(paths.keeper_lock, "a") as lock:      # held while this keeper runs
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("keeper: another keeper serves %s", root)
            return
        log.info("keeper: serving %s", root)
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")          # for operators and tests: who holds the connections
        lock.flush()
        raise_fd_limit()        # two fds per kept connection (FUSE device, journal), up to MAX_KEPT
        with contextlib.suppress(FileNotFoundError):
            paths.keeper_socket.unlink()
        keeper = _Keeper(_listen(paths.keeper_socket), max_kept)
        try:
            while True:
                keeper.run()
                if _exit_idle(paths, keeper, lock.fileno()):
                    return
        except BaseException:
            with contextlib.suppress(FileNotFoundError):    # still ours: this keeper holds its lock
                paths.keeper_socket.unlink()
            keeper.close()
            keeper.sock.close()
            raise


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o077)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(LISTEN_BACKLOG)
    return sock


def _exit_idle(paths: RunPaths, keeper: _Keeper, lock_fd: int) -> bool:
    """Exit idle, unless someone asked meanwhile; whether this keeper is gone (its socket and lock).

    All of it under ``keeper_start_lock``, so it is never seen half done: a start finds either this
    keeper listening or none, never the lock held with no socket (the keeper it started found the lock
    and exited, c43fc37). A start under way (the lock taken) connects here: this keeper stays. A client
    connecting before the unlink (that one takes no lock) is accepted and served, on the path bound
    again."""
    _step("idle")
    with contextlib.ExitStack() as stack:
        try:
            held = stack.enter_context(flocked(paths.keeper_start_lock, fcntl.LOCK_EX | fcntl.LOCK_NB))
        except OSError as err:      # BlockingIOError is a held lock (False), not this: exit unlocked
            log.warning("keeper: cannot lock %s: %s", paths.keeper_start_lock, err.strerror or err)
            held = True
        if not held:
            keeper.idle_since = time.monotonic()
            return False
        _step("start locked")
        with contextlib.suppress(FileNotFoundError):
            paths.keeper_socket.unlink()
        _step("unlinked")
        if keeper.accept_waiting():
            keeper.listen_on(_listen(paths.keeper_socket))
            return False
        keeper.close()
        keeper.sock.close()     # what connects now is refused: its client starts a keeper
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        _step("unlocked")
    log.info("keeper: exits idle")
    return True


# -- the server's side ----------------------------------------------------------------------------


class KeeperClient:
    """The mount server's connection to its root's keeper (started on first use); thread-safe."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        #: set at the first failed exchange (the keeper died or hangs): later calls fail at once, so a
        #: FUSE open never waits on it again (the connections it held died with it anyway)
        self.broken = False

    @classmethod
    def connect(cls, paths: RunPaths, *, start: bool = True) -> KeeperClient:
        """Connect to the keeper of the root, starting one (a separate session) if none listens; a start
        under way (another thread's, another process's) is waited for, not doubled."""
        try:
            return cls(_connect(paths.keeper_socket))
        except OSError:
            if not start:
                raise
        return cls(_start(paths))

    def put(self, digest: str, mountpoint: str, fd: int, state: Negotiated, journal: int = -1,
            conn: str = "") -> None:
        """Keep a copy of ``fd`` and of the request journal's memfd ``journal`` (-1: none; the caller
        keeps its own) with what a later server needs; replaces what was kept for ``digest``. ``conn``:
        the connection's token (:func:`new_conn`; a take-over puts the one it took). A keeper that keeps
        its most refuses (``MountError``), and this client stays usable."""
        self._exchange({"op": "put", "digest": digest, "mountpoint": mountpoint, "state": state.to_json(),
                        "version": VERSION, "conn": conn}, [fd] if journal < 0 else [fd, journal])

    def note_backing(self, digest: str, conn: str, ino: int, backing_id: int) -> None:
        """Connection ``conn`` of the layer ``digest`` registered passthrough id ``backing_id`` for
        ``ino`` (0: unregisters); a keeper gone is not an error here (the FUSE open goes on)."""
        with contextlib.suppress(MountError):
            self._exchange({"op": "backing", "digest": digest, "conn": conn, "ino": ino, "id": backing_id})

    def drop(self, digest: str) -> None:
        """Let the keeper close its copy (the layer is being unmounted)."""
        self._exchange({"op": "drop", "digest": digest})

    def _exchange(self, request: dict[str, object], fds: list[int] | None = None) -> None:
        message = json.dumps(request).encode()
        with self._lock:
            if self.broken:
                raise MountError("the FUSE connection keeper is gone")
            try:
                if not fds:
                    self._sock.sendall(message)
                else:
                    socket.send_fds(self._sock, [message], fds)
                reply = self._sock.recv(MAX_MESSAGE)
            except OSError as err:
                self.broken = True
                log.error("the FUSE connection keeper is gone (%s): the layers' connections end with this "
                          "server", err.strerror or err)
                raise MountError(f"the FUSE connection keeper is gone: {err.strerror or err}") from err
        if not reply:
            self.broken = True
            raise MountError("the FUSE connection keeper closed the connection")
        if not reply.startswith(b'{"ok": true'):
            try:
                why = str(json.loads(reply)["error"])
            except (ValueError, KeyError, TypeError):
                why = repr(reply[:200])
            raise MountError(f"the FUSE connection keeper refused: {why[:300]}")

    def take(self) -> list[Kept]:
        """Copies of every fd kept (the keeper keeps its own until :meth:`drop` or a new ``put``)."""
        out: list[Kept] = []
        try:
            return self._take(out)
        except BaseException:   # what came before the failure is closed; the exchange is out of step
            for item in out:
                item.close()
            self.broken = True
            raise

    def _take(self, out: list[Kept]) -> list[Kept]:
        with self._lock:
            self._sock.sendall(b'{"op": "take"}')
            while True:
                data, fds, _, _ = socket.recv_fds(self._sock, MAX_RECORD, 2)
                try:
                    meta = json.loads(data)
                except ValueError:
                    meta = None
                if not isinstance(meta, dict) or (not fds and "end" not in meta) or ("end" in meta and fds):
                    _close_all(fds)
                    raise MountError("the FUSE connection keeper answered nonsense")
                if "end" in meta:
                    return out
                try:
                    backing = self._more_ids(meta)
                except BaseException:
                    _close_all(fds)
                    raise
                from lazypull.fs import Negotiated

                try:
                    if meta.get("version") != VERSION:
                        raise ValueError(f"record version {meta.get('version')!r}")
                    if backing is None:
                        raise ValueError("malformed passthrough ids")
                    out.append(Kept(str(meta["digest"]), str(meta["mountpoint"]), fds[0],
                                    Negotiated.from_json(meta.get("state")),
                                    backing,
                                    fds[1] if len(fds) > 1 else None, str(meta.get("conn") or "")))
                except (KeyError, ValueError) as err:
                    log.warning("not taking over the FUSE connection of %s: %s", meta.get("digest"), err)
                    _close_all(fds)

    def _more_ids(self, meta: dict[str, object]) -> dict[int, int] | None:
        """The passthrough ids (``ino -> id``) of the record ``meta``: its own, and those of the ``more``
        messages after it (read here, so the exchange stays in step); None when they are malformed."""
        more = meta.get("more", 0)
        if type(more) is not int or not 0 <= more <= MAX_IDS // IDS_PER_MESSAGE:
            raise MountError("the FUSE connection keeper answered nonsense")
        parts = [meta.get("backing") or {}]
        for _ in range(more):
            data, fds, _, _ = socket.recv_fds(self._sock, MAX_MESSAGE, 2)
            try:
                part = json.loads(data)
            except ValueError:
                part = None
            if fds or not isinstance(part, dict) or "backing" not in part:
                _close_all(fds)
                raise MountError("the FUSE connection keeper answered nonsense")
            parts.append(part["backing"])
        ids: dict[int, int] = {}
        for part in parts:
            if not isinstance(part, dict):
                return None
            try:
                ids.update((int(str(k)), int(str(v))) for k, v in part.items())
            except ValueError:
                return None
        return ids

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


def new_conn() -> str:
    """A token naming one FUSE connection for the keeper (its passthrough ids are filed under it)."""
    return os.urandom(8).hex()


def keeper_pid(paths: RunPaths) -> int | None:
    """The pid of the root's keeper, if one runs (its lock is held)."""
    try:
        with open(paths.keeper_lock) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = fh.read().strip()
                return int(text) if text.isdigit() else None
            return None
    except FileNotFoundError:
        return None


def _start(paths: RunPaths) -> socket.socket:
    """A connection to the root's keeper, started here unless a start is under way: one start at a time
    per root (the threads of a process queue on a lock, processes on ``keeper_start_lock``), so two
    callers racing never start two keepers, and a start that fails or whose starter was killed leaves
    nothing that blocks the next one (an exception releases both, the kernel a dead holder's flock)."""
    deadline = time.monotonic() + START_WAIT
    in_process = _start_lock(paths.root)
    # Twice START_WAIT: the thread starting it may wait that long (behind another process, then its own).
    if not in_process.acquire(timeout=2 * START_WAIT):
        raise MountError(f"the FUSE connection keeper of {paths.root} did not start within "
                         f"{2 * START_WAIT:.0f}s (another thread's start of it)")
    try:
        while True:
            with contextlib.suppress(OSError):
                return _connect(paths.keeper_socket)    # the start this caller waited for ended
            with contextlib.ExitStack() as stack:
                try:
                    held = stack.enter_context(
                        flocked(paths.keeper_start_lock, fcntl.LOCK_EX | fcntl.LOCK_NB))
                except OSError as err:      # BlockingIOError is a held lock (False), not this
                    raise MountError(f"cannot lock {paths.keeper_start_lock}: {err.strerror or err}") from err
                if held:
                    with contextlib.suppress(OSError):
                        return _connect(paths.keeper_socket)    # a start that ended since the look above
                    # Its own START_WAIT: the wait behind someone else's start may have used this one up.
                    return _launch(paths, time.monotonic() + START_WAIT)
            if time.monotonic() > deadline:
                raise MountError(f"the FUSE connection keeper of {paths.root} did not start within "
                                 f"{START_WAIT:.0f}s (another process's start of it)")
            _step("start waits")
            time.sleep(START_POLL)
    finally:
        in_process.release()


_start_locks_guard = threading.Lock()
_start_locks: dict[Path, threading.Lock] = {}


def _start_lock(root: Path) -> threading.Lock:
    """The lock this process's starts of ``root``'s keeper queue on (one per root for the process)."""
    with _start_locks_guard:
        return _start_locks.setdefault(root, threading.Lock())


def _launch(paths: RunPaths, deadline: float) -> socket.socket:
    """Start the keeper (the caller holds both start locks) and connect to it once it listens. A keeper
    that exits with status 0 found another's lock held and is started again, at most MAX_LAUNCHES times;
    one that fails is reported at once. A keeper exits idle under the start lock (``_exit_idle``), so
    this happens only with one that does not: a keeper outlives server upgrades, and one from before
    that exits in the old order (its socket gone, its lock still held for a moment)."""
    import subprocess

    from lazypull.selfexec import python_argv

    def launch() -> subprocess.Popen[bytes]:
        try:
            with open(paths.logfile, "ab") as log_fh:
                return subprocess.Popen(python_argv("-m", "lazypull.snapshot.keeper", str(paths.root)),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_fh,
                                        start_new_session=True, cwd="/")
        except OSError as err:      # the log not openable, no process to be had (EAGAIN, EMFILE)
            raise MountError(f"cannot start the FUSE connection keeper of {paths.root}: "
                             f"{err.strerror or err} (log {paths.logfile})") from err

    def reap(proc: subprocess.Popen[bytes]) -> None:
        """No zombie when the keeper exits while this (long-lived) caller runs."""
        threading.Thread(target=proc.wait, name="keeper-reaper", daemon=True).start()

    proc = launch()
    launches = 1
    while True:
        try:
            sock = _connect(paths.keeper_socket)
        except OSError as err:
            why = err.strerror or str(err)
        else:
            reap(proc)
            return sock
        status = proc.poll()
        if status:
            raise MountError(f"the FUSE connection keeper of {paths.root} exited as it started "
                             f"(status {status}); see {paths.logfile}")
        if status == 0 and launches < MAX_LAUNCHES:
            proc = launch()
            launches += 1
        elif time.monotonic() > deadline or status == 0:
            reap(proc)
            raise MountError(f"the FUSE connection keeper of {paths.root} did not start: {why}")
        time.sleep(START_POLL)


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(REPLY_WAIT)
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m lazypull.snapshot.keeper ROOT", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s keeper[%(process)d] %(message)s")
    serve(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

__all__ = ["KeeperClient", "Kept", "keeper_pid", "new_conn", "serve"]
