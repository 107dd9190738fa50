"""The keeper of live FUSE connections (``lazypull.snapshot.keeper``) on its own: which passthrough ids
it hands a taking-over server, what it does at its limit, how it lets ended connections go, its open
files limit. Real FUSE mounts (tests/fs/memtree.py trees), the real keeper over its real socket."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import resource
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.errors import MountError
from lazypull.fs.fuse import FuseMount
from lazypull.selfexec import python_argv
from lazypull.snapshot import keeper as keeper_mod
from lazypull.snapshot.keeper import KeeperClient, keeper_pid, new_conn
from lazypull.snapshot.paths import RunPaths
from tests.fs.fusepath import kernel_offers_passthrough
from tests.fs.memtree import MemTree
from tests.reliability.kit import REPO_ROOT, gone, wait_until

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def _tree(tmp_path: Path, names: tuple[str, ...] = ("f",)) -> MemTree:
    backing = tmp_path / "backing"
    backing.mkdir(exist_ok=True)
    tree = MemTree()
    for name in names:
        (backing / name).write_bytes(b"bytes of " + name.encode())
        tree.add_file(name, b"bytes of " + name.encode(), backing=str(backing / name))
    return tree


def _mount(tree: MemTree, mnt: Path, on_backing: object = None) -> FuseMount:
    mnt.mkdir(exist_ok=True)
    mount = FuseMount(tree, mnt, passthrough=True)
    mount.on_backing = on_backing  # type: ignore[assignment]
    return mount.start()


def _put(client: KeeperClient, digest: str, mount: FuseMount, conn: str) -> None:
    state = mount.negotiated
    assert state is not None
    client.put(digest, mount.mountpoint, mount.dev_fd, state, mount.journal_fd, conn)


def _kept(client: KeeperClient) -> list[str]:
    """The digests the keeper keeps (the copies it hands are closed again)."""
    kept = client.take()
    for item in kept:
        item.close()
    return [item.digest for item in kept]


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[RunPaths]:
    paths = RunPaths(tmp_path / "root")
    paths.run_dir.mkdir(parents=True)
    yield paths
    pid = keeper_pid(paths)
    if pid is not None and pid != os.getpid():   # nothing kept, nobody connected: it exits on its own
        wait_until(lambda: gone(pid), "the keeper to exit")


@pytest.fixture
def small_keeper(paths: RunPaths) -> Iterator[RunPaths]:
    """A keeper of at most 1 connection, run in this process (``serve``) so its limit can be small."""
    thread = threading.Thread(target=functools.partial(keeper_mod.serve, paths.root, max_kept=1))
    thread.start()
    wait_until(paths.keeper_socket.exists, "the keeper to listen")
    yield paths
    thread.join(60)
    assert not thread.is_alive(), "the keeper did not exit once idle"


def test_ids_noted_after_a_drop_are_not_handed_with_the_next_connection(tmp_path: Path,
                                                                        paths: RunPaths) -> None:
    """The unmount's window: the keeper dropped the layer, then a cold open registers an id (and tells
    the keeper) before the FUSE session stops. The next mount of that layer (a new connection, whose
    ids start again at 1) is taken over by a restarted server without that id: it belonged to the
    connection that ended (before, ids were filed per layer and the next server passed opens of that
    inode through with it: EIO, or another file's id)."""
    if not kernel_offers_passthrough():
        pytest.skip("the kernel registers no backing ids (no FUSE passthrough)")
    tree = _tree(tmp_path, ("cold", "warm"))
    client = KeeperClient.connect(paths)
    try:
        first = new_conn()
        mount = _mount(tree, tmp_path / "mnt", functools.partial(client.note_backing, DIGEST, first))
        try:
            assert mount.passthrough_active
            _put(client, DIGEST, mount, first)
            client.drop(DIGEST)                 # LayerManager._unmount: the keeper first ...
            assert (Path(mount.mountpoint) / "cold").read_bytes() == b"bytes of cold"  # the window
        finally:
            mount.stop()                        # ... then the session
        second = new_conn()
        mount = _mount(tree, tmp_path / "mnt", functools.partial(client.note_backing, DIGEST, second))
        try:
            _put(client, DIGEST, mount, second)
            assert (Path(mount.mountpoint) / "warm").read_bytes() == b"bytes of warm"
            assert mount._ops is not None
            warm_id = mount._ops.backing._by_inode[tree.ino("warm")].backing_id
            restarted = KeeperClient.connect(paths, start=False)     # a server taking over
            try:
                kept = restarted.take()
                try:
                    assert [(k.digest, k.conn) for k in kept] == [(DIGEST, second)]
                    assert kept[0].backing == {tree.ino("warm"): warm_id}, "another connection's ids"
                finally:
                    for item in kept:
                        item.close()
            finally:
                restarted.close()
            client.drop(DIGEST)
        finally:
            mount.stop()
    finally:
        client.close()


def test_a_put_past_the_limit_is_refused_and_the_client_goes_on(tmp_path: Path,
                                                                small_keeper: RunPaths) -> None:
    """At its limit the keeper refuses that one layer with a one-line reason and keeps serving the
    client (before: it hung up, and every later put, note and drop of that server failed)."""
    client = KeeperClient.connect(small_keeper, start=False)
    a = _mount(MemTree(), tmp_path / "ma")
    b = _mount(MemTree(), tmp_path / "mb")
    try:
        _put(client, DIGEST, a, "a")
        _put(client, DIGEST, a, "a")        # a layer kept already may be put again (a take-over)
        with pytest.raises(MountError) as refused:
            _put(client, OTHER, b, "b")
        assert str(refused.value) == ("the FUSE connection keeper refused: "
                                      "it keeps 1 connections already, its most")
        assert not client.broken
        client.note_backing(DIGEST, "a", 2, 7)
        client.drop(DIGEST)
        _put(client, OTHER, b, "b")         # room again
        kept = client.take()
        assert [(k.digest, k.conn, k.backing) for k in kept] == [(OTHER, "b", {})]
        for item in kept:
            item.close()
        client.drop(OTHER)
    finally:
        client.close()
        a.stop()
        b.stop()


def test_a_connection_with_thousands_of_ids_is_taken_over_whole(tmp_path: Path,
                                                                 small_keeper: RunPaths) -> None:
    """A mount keeps up to 16384 idle passthrough ids: they come in several messages of the take
    (before, one record past ~64 KiB of JSON was cut short and the whole take-over failed, every kept
    connection with it: "answered nonsense")."""
    client = KeeperClient.connect(small_keeper, start=False)
    mount = _mount(MemTree(), tmp_path / "mnt")
    try:
        _put(client, DIGEST, mount, "c")
        ids = {ino: ino + 7 for ino in range(1_000_000, 1_005_000)}
        for ino, backing_id in ids.items():
            client.note_backing(DIGEST, "c", ino, backing_id)
        kept = client.take()
        try:
            assert [(k.digest, k.conn) for k in kept] == [(DIGEST, "c")]
            assert kept[0].backing == ids
        finally:
            for item in kept:
                item.close()
        assert _kept(client) == [DIGEST], "the exchange is still in step"
        client.drop(DIGEST)
    finally:
        client.close()
        mount.stop()


def test_an_ended_connection_is_let_go_without_polling_every_fd_per_message(
        tmp_path: Path, small_keeper: RunPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keeper learns that a connection ended from the kernel (EPOLLERR on its fd) instead of
    polling every kept fd after every message (before: one poll of all of them per note)."""
    polls = []
    real_poll = select.poll

    def counted() -> select.poll:
        polls.append(1)
        return real_poll()

    monkeypatch.setattr(select, "poll", counted)
    client = KeeperClient.connect(small_keeper, start=False)
    before = _fuse_fds()
    mount = _mount(MemTree(), tmp_path / "mnt")
    try:
        _put(client, DIGEST, mount, "c")
        assert _fuse_fds() == before + 2        # the mount's and the keeper's copy (this process)
        for ino in range(2, 202):
            client.note_backing(DIGEST, "c", ino, ino)
        assert len(polls) < 10, f"{len(polls)} polls of the kept fds for 201 messages"
    finally:
        mount.stop()        # the connection ends: the keeper closes its copy and forgets the layer
    try:
        # by itself (no take, which looks again): the kernel's end of the connection woke the keeper
        wait_until(lambda: _fuse_fds() == before, "the keeper to close the ended connection's fd")
        assert _kept(client) == []
    finally:
        client.close()


def _fuse_fds() -> int:
    """The /dev/fuse fds of this process (the in-process keeper's copies among them)."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd) == "/dev/fuse"
    return count


def test_the_keeper_raises_its_open_files_limit_as_the_server_does(tmp_path: Path, paths: RunPaths) -> None:
    """Started from a shell's low soft limit, the keeper raises it to the hard one
    (``lazypull.fdlimit``, the server's too; before, the keeper had its own lower target)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        hard = int(Path("/proc/sys/fs/nr_open").read_text())

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    proc = subprocess.Popen(python_argv("-m", "lazypull.snapshot.keeper", str(paths.root)),
                            stdin=subprocess.DEVNULL, cwd=REPO_ROOT, start_new_session=True, preexec_fn=low)
    try:
        wait_until(lambda: keeper_pid(paths) == proc.pid, "the keeper to listen")
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
        assert int(line.split()[3]) == hard, line
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_put_of_anything_but_a_fuse_device_is_refused(tmp_path: Path, small_keeper: RunPaths) -> None:
    """Only a /dev/fuse fd is kept (the keeper waits for the kernel's end of it): another fd is a bad
    request, and the keeper hangs up on it."""
    client = KeeperClient.connect(small_keeper, start=False)
    mount = _mount(MemTree(), tmp_path / "mnt")
    state = mount.negotiated
    assert state is not None
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        with pytest.raises(MountError, match="closed the connection"):
            client.put(DIGEST, mount.mountpoint, fd, state)
        assert client.broken
    finally:
        os.close(fd)
        client.close()
        mount.stop()


# -- one keeper start at a time -------------------------------------------------------------------


def _keepers_started(paths: RunPaths) -> int:
    """How many keeper processes ran for the root: each logs that it serves it, or that another does."""
    if not paths.logfile.exists():
        return 0
    text = paths.logfile.read_text(errors="replace")
    return text.count("keeper: serving ") + text.count("keeper: another keeper serves ")


def test_two_threads_asking_at_once_start_one_keeper(paths: RunPaths) -> None:
    """Threads of one server asking for the keeper at once (none listens yet): one starts it, the other
    waits for that start and connects to the same keeper (before, each started one)."""
    barrier = threading.Barrier(3)
    clients: list[KeeperClient] = []
    errors: list[BaseException] = []

    def ask() -> None:
        barrier.wait()
        try:
            clients.append(KeeperClient.connect(paths))
        except BaseException as err:   # reported by the test
            errors.append(err)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert not errors
        assert len(clients) == 3
        pid = keeper_pid(paths)
        assert pid is not None
        assert all(_kept(client) == [] for client in clients)
    finally:
        for client in clients:
            client.close()
    _assert_one_keeper_ran(paths, pid)


def _assert_one_keeper_ran(paths: RunPaths, pid: int) -> None:
    """Once keeper ``pid`` has exited (IDLE_EXIT after its last client), any other keeper started with it
    has logged too (it exits as soon as it finds the lock held): exactly one keeper ran."""
    wait_until(lambda: gone(pid), "the keeper to exit")
    assert _keepers_started(paths) == 1, paths.logfile.read_text()


_ASK = """
import sys
from pathlib import Path
from lazypull.snapshot.keeper import KeeperClient, keeper_pid
from lazypull.snapshot.paths import RunPaths
paths = RunPaths(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
client = KeeperClient.connect(paths)
print(keeper_pid(paths), flush=True)
sys.stdin.readline()
client.close()
"""


def test_two_processes_asking_at_once_start_one_keeper(paths: RunPaths) -> None:
    """Two processes (a server and a CLI-started one racing at start) asking at once: one keeper starts,
    both connect to it (the other waited on the root's keeper start lock)."""
    procs = [subprocess.Popen(python_argv("-c", _ASK, str(paths.root)), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, cwd=REPO_ROOT, text=True) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        pids = {proc.stdout.readline().strip() for proc in procs if proc.stdout is not None}
        pid = keeper_pid(paths)
        assert pid is not None and pids == {str(pid)}
    finally:
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.communicate("bye\n", timeout=60)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    _assert_one_keeper_ran(paths, pid)


def test_a_start_that_fails_is_reported_and_lets_the_next_start_work(paths: RunPaths) -> None:
    """A keeper that dies as it starts (its socket's path is taken by a directory) is reported at once
    with its status and log, not after START_WAIT as a missing socket; the start lock goes with the
    failure, so the next caller's start (in another thread) works."""
    paths.keeper_socket.mkdir()
    with pytest.raises(MountError, match=r"exited as it started \(status 1\); see .*daemon\.log"):
        KeeperClient.connect(paths)
    assert "IsADirectoryError" in paths.logfile.read_text()
    paths.keeper_socket.rmdir()
    clients: list[KeeperClient] = []
    thread = threading.Thread(target=lambda: clients.append(KeeperClient.connect(paths)))
    thread.start()
    thread.join()
    assert len(clients) == 1
    try:
        assert keeper_pid(paths) is not None
        assert _kept(clients[0]) == []
        assert _keepers_started(paths) == 2     # the one that failed, then this one
    finally:
        clients[0].close()


def test_a_start_lock_left_by_a_killed_starter_does_not_block(paths: RunPaths) -> None:
    """A starter killed while it held the start lock leaves the lock file, not the lock (flock: the
    kernel lets go with the holder's fds): the next caller starts the keeper."""
    holder = subprocess.Popen(python_argv("-c", "import fcntl, sys, time\n"
                                          "fh = open(sys.argv[1], 'a')\n"
                                          "fcntl.flock(fh, fcntl.LOCK_EX)\n"
                                          "print('held', flush=True)\n"
                                          "time.sleep(600)\n", str(paths.keeper_start_lock)),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    finally:
        holder.kill()
        holder.wait()
    assert paths.keeper_start_lock.exists()
    client = KeeperClient.connect(paths)
    try:
        assert keeper_pid(paths) is not None
        assert _kept(client) == []
        assert _keepers_started(paths) == 1
    finally:
        client.close()


def test_a_keeper_started_as_the_last_one_exits_is_started_again(paths: RunPaths) -> None:
    """A keeper started while the last one is exiting idle (its socket gone, its lock still held) finds
    the lock held and exits (status 0): the start starts another rather than waiting START_WAIT for a
    socket nobody will make (before: 'did not start' after 10 s). The test holds the lock as the exiting
    keeper would, and lets go once the first keeper started found it held."""
    clients: list[KeeperClient] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            clients.append(KeeperClient.connect(paths))
        except BaseException as err:   # reported by the test
            errors.append(err)

    with open(paths.keeper_lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        thread = threading.Thread(target=ask)
        thread.start()
        while "keeper: another keeper serves" not in (paths.logfile.read_text(errors="replace")
                                                        if paths.logfile.exists() else ""):
            assert thread.is_alive(), errors
            time.sleep(0.005)
    thread.join()
    assert not errors
    try:
        assert keeper_pid(paths) is not None
        assert _kept(clients[0]) == []
    finally:
        clients[0].close()


class _Clock:
    """The keeper module's ``time`` with a monotonic clock a test moves on (``skip``): the wait for a
    start is then a matter of steps, not seconds."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.sleep = time.sleep

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


def test_a_start_after_a_long_wait_behind_another_gets_its_own_start_wait(
        paths: RunPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller waits behind another process's start (its start lock held) for most of START_WAIT; that
    starter dies (the kernel lets go of its lock), and this caller starts the keeper: it gets a whole
    START_WAIT for it (before: the rest of its wait, none, and 'did not start' while its keeper came up)."""
    clock = _Clock()
    monkeypatch.setattr(keeper_mod, "time", clock)
    waits: list[str] = []
    with open(paths.keeper_start_lock, "a") as lock:    # the other starter's (flock: per open file)
        fcntl.flock(lock, fcntl.LOCK_EX)

        def at(name: str) -> None:
            if name == "start waits" and not waits:
                waits.append(name)
                clock.offset += keeper_mod.START_WAIT   # the wait used up, then the starter dies
                lock.close()

        monkeypatch.setattr(keeper_mod, "_step", at)
        client = KeeperClient.connect(paths)
    try:
        assert waits == ["start waits"]
        assert _kept(client) == []
        assert _keepers_started(paths) == 1
    finally:
        client.close()


def test_a_start_that_ended_before_the_start_lock_was_taken_is_connected_to(
        paths: RunPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller finds no keeper listening, and before it takes the start lock another process's start
    ends (its keeper listens, the lock is free): the caller connects to that keeper, it starts no second
    one (before: it launched one, which found the keeper lock held and exited)."""
    real_connect = keeper_mod._connect
    others: list[subprocess.Popen[bytes]] = []
    looks: list[Path] = []

    def connect(path: Path) -> socket.socket:
        looks.append(path)
        if len(looks) == 1:     # KeeperClient.connect's look: none listens
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        if len(looks) == 2:     # _start's look finds none; meanwhile another start runs to its end
            with open(paths.logfile, "ab") as log_fh:
                others.append(subprocess.Popen(python_argv("-m", "lazypull.snapshot.keeper",
                                                           str(paths.root)),
                                               stdin=subprocess.DEVNULL, stderr=log_fh, cwd=REPO_ROOT))
            wait_until(paths.keeper_socket.exists, "the other start's keeper to listen")
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        return real_connect(path)

    real_launch = keeper_mod._launch
    launched: list[float] = []

    def launch(paths: RunPaths, deadline: float) -> socket.socket:
        launched.append(deadline)
        return real_launch(paths, deadline)

    monkeypatch.setattr(keeper_mod, "_connect", connect)
    monkeypatch.setattr(keeper_mod, "_launch", launch)
    client = KeeperClient.connect(paths)
    try:
        assert launched == [], "a second keeper was launched"
        assert keeper_pid(paths) == others[0].pid
        assert _kept(client) == []
        assert _keepers_started(paths) == 1, paths.logfile.read_text()
    finally:
        client.close()
        assert others[0].wait(60) == 0      # it exits idle once the client has gone


def test_a_keeper_that_cannot_be_launched_is_reported_as_such(paths: RunPaths) -> None:
    """The keeper's log cannot be opened (a directory there): the error says the keeper could not be
    started and names the log (before: 'cannot lock .../keeper-start.lock: Is a directory')."""
    paths.logfile.mkdir()
    with pytest.raises(MountError) as err:
        KeeperClient.connect(paths)
    assert str(err.value) == (f"cannot start the FUSE connection keeper of {paths.root}: "
                              f"Is a directory (log {paths.logfile})")
    assert keeper_pid(paths) is None
    paths.logfile.rmdir()
    client = KeeperClient.connect(paths)    # the start lock went with the failure
    client.close()


# -- an idle exit is never seen half done ---------------------------------------------------------


@pytest.mark.parametrize("step", ["idle", "start locked", "unlinked", "unlocked"])
def test_a_client_asking_during_an_idle_exit_connects_to_one_keeper(paths: RunPaths, step: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A client asks for the keeper while it exits idle, at each step of that exit: it connects to
    exactly one keeper, started at most once. Before the socket goes it gets the exiting keeper, which
    stays; after, it waits for the exit (under the start lock) and starts one keeper, which finds the
    keeper lock free (before: the exit unlinked the socket, then let go of the lock with no start lock
    held, and a keeper started in between found the lock held and exited: two started)."""
    monkeypatch.setattr(keeper_mod, "IDLE_EXIT", 0.0)
    clients: list[KeeperClient] = []
    errors: list[BaseException] = []
    asking: list[threading.Thread] = []
    answered = threading.Event()     # the client connected, or waits for the exit to end

    def ask() -> None:
        try:
            clients.append(KeeperClient.connect(paths))
        except BaseException as err:   # reported by the test
            errors.append(err)
        finally:
            answered.set()

    def at(name: str) -> None:
        if name == "start waits":
            answered.set()
        elif name == step and not asking:
            thread = threading.Thread(target=ask)
            thread.start()
            asking.append(thread)       # started: the test joins it
            assert answered.wait(60)

    monkeypatch.setattr(keeper_mod, "_step", at)
    exiting = threading.Thread(target=keeper_mod.serve, args=(paths.root,))
    exiting.start()
    try:
        while not asking:           # the keeper thread starts the client at the step
            exiting.join(0.05)
            assert exiting.is_alive() or asking, "the keeper exited without the step"
        asking[0].join()
        assert not errors, errors
        assert len(clients) == 1
        assert _kept(clients[0]) == []
        pid = keeper_pid(paths)
        if step in ("idle", "start locked"):   # connected before the unlink: served by the exiting one
            assert pid == os.getpid()
            assert exiting.is_alive()
            assert _keepers_started(paths) == 0
        else:
            exiting.join()
            assert pid is not None and pid != os.getpid()
            assert paths.logfile.read_text().count("keeper: serving ") == 1
            assert "another keeper serves" not in paths.logfile.read_text()
    finally:
        for client in clients:
            client.close()
    exiting.join()      # it exits idle once the client has gone
    if step not in ("idle", "start locked"):
        assert pid is not None
        _assert_one_keeper_ran(paths, pid)


def test_a_closed_keeper_lets_go_of_its_selector_and_its_epoll() -> None:
    """``_Keeper.close`` (an idle exit; a keeper run in a test's process goes on) closes the selector
    and the epoll of kept connections, not only what they watch: two fds each exit otherwise."""
    listening, other = socket.socketpair()
    with listening, other:
        keeper = keeper_mod._Keeper(listening)
        keeper.close()
        assert keeper.ended.closed
        assert keeper.sel.get_map() is None


def test_a_note_past_the_ids_limit_of_a_connection_is_refused(tmp_path: Path, small_keeper: RunPaths,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection's passthrough ids are bounded (MAX_IDS): a new inode past it is refused (the client
    leaves the open alone and stays usable), an inode already kept may still change its id."""
    monkeypatch.setattr(keeper_mod, "MAX_IDS", 2)
    client = KeeperClient.connect(small_keeper, start=False)
    mount = _mount(MemTree(), tmp_path / "mnt")
    try:
        _put(client, DIGEST, mount, "c")
        client.note_backing(DIGEST, "c", 10, 1)
        client.note_backing(DIGEST, "c", 11, 2)
        client.note_backing(DIGEST, "c", 12, 3)     # past the limit: refused
        client.note_backing(DIGEST, "c", 11, 4)     # a kept inode's new id
        assert not client.broken
        kept = client.take()
        assert [(k.digest, k.backing) for k in kept] == [(DIGEST, {10: 1, 11: 4})]
        for item in kept:
            item.close()
        client.drop(DIGEST)
    finally:
        client.close()
        mount.stop()
