"""A killed (-9) mount server does not take running readers' lazy layers with it (issue 10 item 9): the
keeper (``lazypull.snapshot.keeper``) holds each mount's FUSE connection, the next server serves it
again, and what the dead server had read but not answered is resent (FUSE_NOTIFY_RESEND)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.fs.fuse.journal import MAX_REPLAYS
from lazypull.fs.mount import lazypull_mounts
from lazypull.snapshot import MountClient, daemon_pid
from lazypull.snapshot.keeper import keeper_pid
from lazypull.snapshot.paths import RunPaths
from tests.helpers.registry import Fault, FaultProxy
from tests.helpers.rootfs import busybox_specs
from tests.reliability.kit import REPO_ROOT, Gate, fuse_fds, gone, lazy_root, wait_until

# Reads every file of data/ in turn, each from the server (its page cache dropped after the read), by
# names the kernel resolved before the restarts (node ids of the old server) and through a file opened
# at the start; writes its progress and every wrong or failed read to the status file.
READER = textwrap.dedent("""
    import json, os, sys, time
    top, status, stop = sys.argv[1:4]
    kept = os.open(os.path.join(top, "data/0000.txt"), os.O_RDONLY)
    done, bad = 0, []
    while not os.path.exists(stop):
        i = done % 400
        want = ("file %d\\n" % i).encode() * 20
        try:
            fd = os.open(os.path.join(top, "data/%04d.txt" % i), os.O_RDONLY)
            try:
                got = os.pread(fd, 4096, 0)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            if got != want:
                bad.append("data/%04d.txt: wrong content" % i)
            old = os.pread(kept, 4096, 0)
            os.posix_fadvise(kept, 0, 0, os.POSIX_FADV_DONTNEED)
            if old != b"file 0\\n" * 20:
                bad.append("data/0000.txt (kept open): wrong content")
        except OSError as err:
            bad.append("data/%04d.txt: %s" % (i, err))
            time.sleep(0.05)
        done += 1
        with open(status + ".tmp", "w") as f:
            json.dump({"done": done, "bad": bad[:20], "nbad": len(bad)}, f)
        os.replace(status + ".tmp", status)
""")


def _status(path: Path) -> tuple[int, int, list[str]]:
    """The reader's (reads done, reads wrong or failed, the first of those)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return 0, 0, []
    return int(data["done"]), int(data["nbad"]), [str(b) for b in data["bad"]]


def _done(path: Path) -> int:
    return _status(path)[0]


def _went_on(path: Path, since: int) -> bool:
    return _done(path) > since + 50


def _journal_fds(pid: int) -> int:
    """How many request journal memfds (``lazypull.fs.fuse.journal``) process ``pid`` holds."""
    fd_dir = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fd_dir.iterdir() if os.readlink(fd).startswith("/memfd:lazypull-journal"))


def _kill_server(root: Path) -> int:
    pid = daemon_pid(root)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: gone(pid), "the killed server to be gone")
    return pid


def test_readers_survive_killed_servers(lazy_image: str, tmp_path: Path) -> None:
    """A reader hashing lazily served files the whole time while the server is killed (-9) and started
    again 5 times: every read returns the right bytes (through names looked up and a file opened before
    the kills), none fails with ENOTCONN, and the keeper holds one connection per mounted layer."""
    root = lazy_root(tmp_path / "root", lazy_image)
    mc = MountClient(root)
    layers = mc.mount_image(lazy_image, insecure=True, holder="reader", wait_prefetch=False)
    tops = [lm.path for lm in layers if lm.path is not None and (lm.path / "data").is_dir()]
    assert len(tops) == 1
    status, stop = tmp_path / "status.json", tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tops[0]), str(status), str(stop)],
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _done(status) > 50, "the reader to start")
        mounts = sorted(lazypull_mounts(root))
        servers = set()
        for _ in range(5):
            servers.add(_kill_server(root))
            before = _done(status)
            assert sorted(lazypull_mounts(root)) == mounts, "the mounts outlive their server"
            assert len(MountClient(root).list_mounts()) == 2     # a new server, the restore done
            wait_until(functools.partial(_went_on, status, before), "the reader to go on after the restart")
            keeper = keeper_pid(RunPaths(root))
            assert keeper is not None and fuse_fds(keeper) == 2, "one kept connection per mounted layer"
            assert _journal_fds(keeper) == 2, "one request journal per kept connection, none left behind"
        assert len(servers | {daemon_pid(root)}) == 6
        assert sorted(lazypull_mounts(root)) == mounts
    finally:
        stop.touch()
        reader.wait(timeout=120)
    _, nbad, bad = _status(status)
    assert nbad == 0, bad
    assert reader.returncode == 0, reader.stderr.read() if reader.stderr else ""
    keeper, server = keeper_pid(RunPaths(root)), daemon_pid(root)
    assert server is not None
    MountClient(root, autostart=False).shutdown()
    wait_until(lambda: gone(server), "the server to stop")
    assert lazypull_mounts(root) == []
    if keeper is not None:      # nothing left to keep: the keeper goes too
        wait_until(lambda: gone(keeper), "the keeper to exit")


def test_a_server_stopped_keeping_its_mounts_hands_them_to_the_next(lazy_image: str, tmp_path: Path) -> None:
    """``daemon stop --keep-mounts`` (an upgrade with running containers): the next server serves the
    same mounts, through a file opened before the stop and through new lookups (they failed with ENOTCONN:
    the stopped server's connections died with it). A file still open in passthrough mode opens again
    (the kernel refuses an open of it in cached mode or with another backing id: EIO)."""
    root = lazy_root(tmp_path / "root", lazy_image)
    try:
        layers = MountClient(root).mount_image(lazy_image, insecure=True, holder="c1", wait_prefetch=False)
        top = next(lm.path for lm in layers if lm.path is not None and (lm.path / "data").is_dir())
        kept = os.open(top / "data/0001.txt", os.O_RDONLY)
        # read once: its chunk is cached, so the next open passes through
        assert (top / "data/0003.txt").read_bytes() == b"file 3\n" * 20
        passing = os.open(top / "data/0003.txt", os.O_RDONLY)
        try:
            assert os.pread(kept, 4096, 0) == b"file 1\n" * 20
            stats = MountClient(root).stats()["layers"]
            assert sum(layer["passthrough_files"] for layer in stats.values()) == 1
            mounts = sorted(lazypull_mounts(root))
            pid = daemon_pid(root)
            assert pid is not None
            stop = subprocess.run([sys.executable, "-m", "lazypull", "--root", str(root), "daemon", "stop",
                                   "--keep-mounts"], capture_output=True, text=True, timeout=120)
            assert stop.returncode == 0, stop.stderr
            wait_until(lambda: gone(pid), "the stopped server to be gone")
            assert sorted(lazypull_mounts(root)) == mounts
            assert [m.holders for m in MountClient(root).list_mounts()] == [["c1"], ["c1"]]
            os.posix_fadvise(kept, 0, 0, os.POSIX_FADV_DONTNEED)
            assert os.pread(kept, 4096, 0) == b"file 1\n" * 20
            assert (top / "data/0002.txt").read_bytes() == b"file 2\n" * 20
            assert (top / "data/0003.txt").read_bytes() == b"file 3\n" * 20
            assert os.pread(passing, 4096, 0) == b"file 3\n" * 20
            # the kernel still holds 0003's backing file, registered by the stopped server: its chunk's
            # own file (a one-chunk file), kept pinned and counted once (not held as well)
            cache = MountClient(root).stats()["cache"]
            assert (cache["held"], cache["pinned"]) == (0, 1)
        finally:
            os.close(kept)
            os.close(passing)
    finally:
        MountClient(root, autostart=False).shutdown()


def test_read_pending_in_a_killed_server_is_resent(lazy_image: str, fault_proxy: FaultProxy,
                                                   tmp_path: Path) -> None:
    """A read the server took from the kernel and was fetching from the registry when it was killed
    (-9) is answered by the next server (FUSE_NOTIFY_RESEND) with the right bytes: it neither fails
    (ENOTCONN: the connection died with its server) nor waits for ever (read, never answered)."""
    image = lazy_image.replace(lazy_image.split("/")[0], fault_proxy.host, 1)
    root = lazy_root(tmp_path / "root", image, "read_deadline = 100.0\nprefetch = false\n")
    want = next(spec.content for spec in busybox_specs() if spec.name.lstrip("./") == "bin/busybox")
    gate = Gate()
    try:
        bottom = MountClient(root).mount_image(image, insecure=True, holder="c1", wait_prefetch=False)[0].path
        assert bottom is not None
        fault_proxy.add(Fault("hold", method="GET", path_contains="/blobs/", times=-1, release=gate))
        reader = subprocess.Popen(["cat", str(bottom / "bin/busybox")], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        wait_until(gate.waiting.is_set, "the read to reach the registry")
        old = _kill_server(root)
        assert reader.poll() is None, "the pending read waits for the next server"
        assert MountClient(root).ping()["pid"] != old
        gate.set()
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
        assert hashlib.sha256(out).hexdigest() == hashlib.sha256(want).hexdigest()
    finally:
        gate.set()
        MountClient(root, autostart=False).shutdown()


# No fetch but the reads' own: the registry request a test holds is a FUSE READ's.
QUIET = ("read_deadline = 100.0\nprefetch = false\nfetch_user_db = false\nfetch_elf_deps = false\n"
         "learn_window = 0.0\nwarm_connections = 0\n")


def _held_reads(fault_proxy: FaultProxy, image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                commands: list[list[str]]) -> tuple[Path, list[Gate], list[subprocess.Popen[bytes]], bytes]:
    """A root whose servers answer what a killed predecessor read from the request journal (no
    FUSE_NOTIFY_RESEND, as on kernels before 6.9), its image mounted, and readers of busybox
    (``commands``, BUSYBOX standing for its path) whose READs wait at a held registry request; the bytes
    of busybox."""
    monkeypatch.setenv("LAZYPULL_FUSE_RESEND", "0")       # inherited by the servers the client starts
    root = lazy_root(tmp_path / "root", image, QUIET)
    layers = MountClient(root).mount_image(image, insecure=True, holder="c1", wait_prefetch=False)
    busybox = layers[0].path / "bin/busybox" if layers[0].path is not None else None
    assert busybox is not None
    gates = [Gate()]
    fault_proxy.add(Fault("hold", method="GET", path_contains=layers[0].digest, times=-1, release=gates[0]))
    readers = [subprocess.Popen([arg.replace("BUSYBOX", str(busybox)) for arg in command],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for command in commands]
    _wait_held(gates, "the reads to reach the registry")
    want = next(spec.content for spec in busybox_specs() if spec.name.lstrip("./") == "bin/busybox")
    return root, gates, readers, want


def _wait_held(gates: list[Gate], what: str) -> None:
    wait_until(lambda: all(gate.waiting.is_set() for gate in gates), what)


def _release(gates: list[Gate], readers: list[subprocess.Popen[bytes]], root: Path) -> None:
    for gate in gates:
        gate.set()
    for r in readers:
        r.kill()
        r.wait()
    MountClient(root, autostart=False).shutdown()


def test_reads_pending_in_a_killed_server_are_answered_from_the_journal(
        lazy_image: str, fault_proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without FUSE_NOTIFY_RESEND (kernels before 6.9; forced here): READs the server had taken and
    was fetching when it was killed (-9) are answered by the next server from the request journal,
    with the right bytes (before: they waited for ever, their callers unkillable)."""
    image = lazy_image.replace(lazy_image.split("/")[0], fault_proxy.host, 1)
    root, gates, readers, want = _held_reads(fault_proxy, image, tmp_path, monkeypatch, [
        ["cat", "BUSYBOX"], ["dd", "if=BUSYBOX", "bs=64k", "skip=16", "status=none"]])
    try:
        old = _kill_server(root)
        assert all(r.poll() is None for r in readers), "the pending reads wait for the next server"
        assert MountClient(root).ping()["pid"] != old
        wait_until(lambda: "requests the previous server had read and not answered (from the journal)"
                   in RunPaths(root).logfile.read_text(errors="replace"), "the next server to take them up")
        for gate in gates:
            gate.set()
        outs = [r.communicate(timeout=120) for r in readers]
        assert [r.returncode for r in readers] == [0, 0], [err for _, err in outs]
        assert hashlib.sha256(outs[0][0]).hexdigest() == hashlib.sha256(want).hexdigest()
        assert hashlib.sha256(outs[1][0]).hexdigest() == hashlib.sha256(want[16 << 16:]).hexdigest()
    finally:
        _release(gates, readers, root)


def test_a_read_every_next_server_dies_on_is_answered_eio(
        lazy_image: str, fault_proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The floor: a journaled request that MAX_REPLAYS servers in a row took up again and died on
    (here: each killed while its fetch waits) is answered EIO by the next one, which names why; the
    caller gets a clear error, not a hang, and the mounts go on serving. (An O_DIRECT read: the EIO of
    a page cache readahead is retried by the kernel as a new read, which the next server serves.)"""
    image = lazy_image.replace(lazy_image.split("/")[0], fault_proxy.host, 1)
    root, gates, readers, _ = _held_reads(fault_proxy, image, tmp_path, monkeypatch, [
        ["dd", "if=BUSYBOX", "iflag=direct", "bs=64k", "skip=16", "status=none"]])
    try:
        for _ in range(MAX_REPLAYS):
            for gate in gates:
                gate.waiting.clear()
            old = _kill_server(root)
            assert MountClient(root).ping()["pid"] != old
            _wait_held(gates, "the next server's replayed reads to reach the registry")
            assert all(r.poll() is None for r in readers)
        _kill_server(root)
        MountClient(root).ping()
        outs = [r.communicate(timeout=120) for r in readers]
        assert [r.returncode for r in readers] == [1], outs
        assert all(b"Input/output error" in err for _, err in outs), outs
        log = RunPaths(root).logfile.read_text(errors="replace")
        assert f"answered EIO: read by a server and taken up again by {MAX_REPLAYS} more" in log
        top = next(m.path for m in MountClient(root).list_mounts() if (m.path / "data").is_dir())
        assert len(os.listdir(top / "data")) == 400      # the same connections go on serving
    finally:
        _release(gates, readers, root)


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)


@pytest.fixture(autouse=True)
def _kept_connections_end(tmp_path: Path) -> Iterator[None]:
    """After a test that failed with its server killed: the keeper's connections are ended (the keeper
    killed), else the clean-up's walk (``_no_leftovers``) waits for ever on mounts nobody serves."""
    yield
    for run_dir in tmp_path.glob("*/run"):
        keeper, server = keeper_pid(RunPaths(run_dir.parent)), daemon_pid(run_dir.parent)
        if keeper is not None and (server is None or gone(server)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(keeper, signal.SIGKILL)
            wait_until(functools.partial(gone, keeper), "the keeper of a root without a server to go")
