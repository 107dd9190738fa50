"""A MemTree served through a real kernel FUSE mount: what programs see, errno values, concurrency, errors."""

from __future__ import annotations

import errno
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.errors import MountError
from lazypull.fs.fuse import FuseMount, is_mounted, unmount, workers
from lazypull.fs.fuse.mount import mount_entry
from tests.fs.memtree import MemTree


def _until(cond, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``cond`` (events that arrive asynchronously); the timeout only bounds a hang, never a speed."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True

ROOT = Path(__file__).resolve().parents[2]
BIG = random.Random(7).randbytes(3 * 1024 * 1024 + 123)


def _tree() -> MemTree:
    t = MemTree()
    t.add_file("etc/hostname", b"lazypull\n", mode=0o644, xattrs={b"user.note": b"hello", b"user.empty": b""})
    t.add_file("bin/su", b"#!/bin/sh\n", mode=0o4755)
    t.add_symlink("bin/sh", b"busybox")
    t.add_node("dev/null", stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3))
    t.add_node("dev/sda", stat.S_IFBLK | 0o660, rdev=os.makedev(8, 0))
    t.add_node("run/fifo", stat.S_IFIFO | 0o644)
    t.add_file("big", BIG)
    t.add_file("boom", b"never")
    t.add_dir("slow")
    for i in range(300):
        t.add_file(f"many/entry-with-a-long-name-{i:04d}", b"")
    return t


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MemTree, FuseMount, Path]]:
    tree = _tree()
    mnt = tmp_path_factory.mktemp("fuse") / "mnt"
    mnt.mkdir()
    with FuseMount(tree, mnt, fsname="lazypull-test", workers=(1, 16)) as m:
        yield tree, m, mnt
    assert not is_mounted(str(mnt))


def test_mount_shows_in_mountinfo(served: tuple[MemTree, FuseMount, Path]) -> None:
    _, _, mnt = served
    assert mount_entry(str(mnt))[:2] == ("fuse.lazypull", "lazypull-test")  # type: ignore[index]
    with open("/proc/self/mountinfo") as f:
        line = next(ln for ln in f if f" {mnt} " in ln)
    opts = line.split(" - ")[1].split()[2]
    assert "ro" in opts.split(",") and "default_permissions" in opts and "allow_other" in opts
    per_mount = line.split()[5].split(",")
    # nosuid,nodev on the layer mount itself: an overlay on top still honours setuid and devices
    # (tests/security/test_store_permissions.py)
    assert "ro" in per_mount and "nosuid" in per_mount and "nodev" in per_mount


def test_stat_readdir_readlink(served: tuple[MemTree, FuseMount, Path]) -> None:
    tree, _, mnt = served
    assert sorted(os.listdir(mnt)) == ["big", "bin", "boom", "dev", "etc", "many", "run", "slow"]
    assert sorted(os.listdir(mnt / "bin")) == ["sh", "su"]
    st = os.stat(mnt / "bin" / "su")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and stat.S_ISREG(st.st_mode) and st.st_size == 10
    assert st.st_mtime_ns == tree.mtime_ns and st.st_ino == tree.ino("bin/su")
    assert os.readlink(mnt / "bin" / "sh") == "busybox"
    assert stat.S_ISLNK(os.lstat(mnt / "bin" / "sh").st_mode)
    null = os.stat(mnt / "dev" / "null")
    assert stat.S_ISCHR(null.st_mode) and (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    sda = os.stat(mnt / "dev" / "sda")
    assert stat.S_ISBLK(sda.st_mode) and (os.major(sda.st_rdev), os.minor(sda.st_rdev)) == (8, 0)
    assert stat.S_ISFIFO(os.stat(mnt / "run" / "fifo").st_mode)
    assert stat.S_ISDIR(os.stat(mnt).st_mode)
    with os.scandir(mnt / "many") as it:
        names = sorted(e.name for e in it)
    assert names == [f"entry-with-a-long-name-{i:04d}" for i in range(300)]
    assert (mnt / "etc" / "hostname").read_bytes() == b"lazypull\n"


def test_xattrs(served: tuple[MemTree, FuseMount, Path]) -> None:
    _, _, mnt = served
    path = mnt / "etc" / "hostname"
    assert os.getxattr(path, "user.note") == b"hello"
    assert os.getxattr(path, "user.empty") == b""
    assert sorted(os.listxattr(path)) == ["user.empty", "user.note"]
    with pytest.raises(OSError) as exc:
        os.getxattr(path, "user.missing")
    assert exc.value.errno == errno.ENODATA
    assert os.listxattr(mnt / "bin") == []


def test_statfs(served: tuple[MemTree, FuseMount, Path]) -> None:
    tree, _, mnt = served
    st = os.statvfs(mnt)
    assert st.f_bsize == 4096 and st.f_files == len(tree.nodes) and st.f_bfree == 0
    assert st.f_blocks == tree.statfs().blocks and st.f_namemax == 255
    assert st.f_flag & os.ST_RDONLY


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        pytest.param(lambda m: os.stat(m / "nope"), errno.ENOENT, id="stat-missing"),
        pytest.param(lambda m: os.stat(m / "etc" / "nope" / "x"), errno.ENOENT, id="missing-parent"),
        pytest.param(lambda m: os.listdir(m / "etc" / "hostname"), errno.ENOTDIR, id="listdir-file"),
        pytest.param(lambda m: os.open(m / "etc" / "hostname", os.O_RDWR), errno.EROFS, id="open-rw"),
        pytest.param(lambda m: os.open(m / "newfile", os.O_WRONLY | os.O_CREAT), errno.EROFS, id="create"),
        pytest.param(lambda m: os.mkdir(m / "d"), errno.EROFS, id="mkdir"),
        pytest.param(lambda m: os.unlink(m / "boom"), errno.EROFS, id="unlink"),
        pytest.param(lambda m: os.rename(m / "boom", m / "b2"), errno.EROFS, id="rename"),
        pytest.param(lambda m: os.chmod(m / "boom", 0o600), errno.EROFS, id="chmod"),
        pytest.param(lambda m: os.setxattr(m / "boom", "user.x", b"1"), errno.EROFS, id="setxattr"),
        pytest.param(lambda m: os.readlink(m / "boom"), errno.EINVAL, id="readlink-file"),
    ],
)
def test_errno_values(served: tuple[MemTree, FuseMount, Path], action, expected: int) -> None:  # type: ignore[no-untyped-def]
    _, _, mnt = served
    with pytest.raises(OSError) as exc:
        action(mnt)
    assert exc.value.errno == expected


def test_large_file_reads_at_odd_offsets(served: tuple[MemTree, FuseMount, Path]) -> None:
    _, _, mnt = served
    rng = random.Random(3)
    fd = os.open(mnt / "big", os.O_RDONLY)
    try:
        for offset, size in [(0, 1), (1, 4095), (4095, 2), (65535, 200_001), (len(BIG) - 5, 100)] + [
            (rng.randrange(len(BIG)), rng.randrange(1, 300_000)) for _ in range(20)
        ]:
            assert os.pread(fd, size, offset) == BIG[offset : offset + size], (offset, size)
        assert os.pread(fd, 10, len(BIG)) == b""
    finally:
        os.close(fd)
    assert (mnt / "big").read_bytes() == BIG


def test_concurrent_uncached_reads_get_their_own_bytes(served: tuple[MemTree, FuseMount, Path]) -> None:
    tree, _, mnt = served
    before = tree.calls["read"]
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        fd = os.open(mnt / "big", os.O_RDONLY)
        try:
            for _ in range(40):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # drop the page cache: READs go out
                offset, size = rng.randrange(len(BIG)), rng.randrange(1, 400_000)
                if os.pread(fd, size, offset) != BIG[offset : offset + size]:
                    errors.append(f"seed {seed}: wrong bytes at {offset}+{size}")
        finally:
            os.close(fd)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert tree.calls["read"] - before >= 100  # the reads really reached the server


@pytest.mark.parametrize("in_memory", [True, False], ids=["metadata-inline", "metadata-handed-over"])
def test_reads_overlap_and_do_not_block_metadata(
    served: tuple[MemTree, FuseMount, Path], in_memory: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behaviour, not timing: all 8 READs are inside the tree at once, and a LOOKUP is answered while
    they are all still held there: by the reading thread itself when the tree's metadata is in memory,
    else by one more thread; afterwards the idle threads end."""
    tree, m, mnt = served
    monkeypatch.setattr(workers, "IDLE_SECONDS", 0.05)
    held = f"slow/held-{in_memory}"  # fresh names and pages for each case
    for i in range(8):
        tree.add_file(f"{held}/{i}", bytes([i]) * 100)
    tree.add_file(f"{held}/other", b"o")
    tree.in_memory = in_memory
    m._ops._metadata_inline = in_memory  # type: ignore[union-attr]  # (a tree's answer is read at mount)
    gate = threading.Event()
    tree.read_gate = gate
    results: dict[int, bytes] = {}
    stats: list[os.stat_result] = []
    try:

        def read(i: int) -> None:
            results[i] = (mnt / held / str(i)).read_bytes()

        threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        assert _until(lambda: tree.reads_waiting == 8), f"only {tree.reads_waiting} of 8 READs overlap"
        inline, handed, peak = m.inline_requests, m.handed_over, m.peak_workers
        meta = threading.Thread(target=lambda: stats.append(os.stat(mnt / held / "other")))
        meta.start()  # a fresh LOOKUP while 8 READs are held in the tree
        meta.join(60)
        assert stats and not results, "the stat waited for the held reads"
        assert m.inline_requests - inline == (1 if in_memory else 0)
        assert m.handed_over - handed == (0 if in_memory else 1)
    finally:
        gate.set()
        tree.read_gate = None
        tree.in_memory = True
        m._ops._metadata_inline = True  # type: ignore[union-attr]
    for t in threads:
        t.join(60)
    assert results == {i: bytes([i]) * 100 for i in range(8)}
    assert stats[0].st_size == 1
    assert peak >= 9  # 8 held READs and the reading thread
    assert _until(lambda: m.workers == 1)  # idle followers end; the reading thread stays


def test_tree_exception_gives_eio_and_mount_keeps_working(served: tuple[MemTree, FuseMount, Path]) -> None:
    tree, m, mnt = served
    tree.fail["read"] = KeyError("chunk 3 vanished")
    try:
        with pytest.raises(OSError) as exc:
            (mnt / "boom").read_bytes()
        assert exc.value.errno == errno.EIO
    finally:
        del tree.fail["read"]
    assert any("READ on inode" in e and "chunk 3 vanished" in e for e in m.last_errors)
    tree.fail["lookup"] = RuntimeError("metadata store broken")
    try:
        with pytest.raises(OSError) as exc:
            os.stat(mnt / "etc" / "not-looked-up-yet")
        assert exc.value.errno == errno.EIO
    finally:
        del tree.fail["lookup"]
    assert "LOOKUP" in m.last_errors[-1]
    assert (mnt / "boom").read_bytes() == b"never"  # the failed read was not cached; now it works
    assert os.listdir(mnt / "etc") == ["hostname"]


def test_reply_the_kernel_refuses_becomes_eio(tmp_path: Path) -> None:
    tree = MemTree()
    tree.add_symlink("long", b"x" * 5000)  # more than the page the kernel offers for a link target
    tree.add_file("f", b"fine")
    mnt = tmp_path / "m"
    mnt.mkdir()
    with FuseMount(tree, mnt):
        with pytest.raises(OSError) as exc:
            os.readlink(mnt / "long")
        assert exc.value.errno == errno.EIO
        assert (mnt / "f").read_bytes() == b"fine"


@pytest.mark.parametrize("negative_timeout", [None, 0.0], ids=["cached", "not-cached"])
def test_missing_names_are_cached_unless_told(tmp_path: Path, negative_timeout: float | None) -> None:
    tree = MemTree()
    mnt = tmp_path / "m"
    mnt.mkdir()
    with FuseMount(tree, mnt, negative_timeout=negative_timeout):
        for _ in range(3):
            assert not (mnt / "later").exists()
        assert tree.calls["lookup"] == (1 if negative_timeout is None else 3)
        tree.add_file("later", b"appeared")
        assert (mnt / "later").exists() == (negative_timeout == 0)


def test_short_read_before_the_end_is_eio(tmp_path: Path) -> None:
    class Short(MemTree):
        def read(self, ino: int, offset: int, size: int) -> bytes:
            return super().read(ino, offset, size)[:100]

    tree = Short()
    tree.add_file("f", b"y" * 10_000)
    tree.add_file("small", b"z" * 50)
    mnt = tmp_path / "m"
    mnt.mkdir()
    with FuseMount(tree, mnt) as m:
        with pytest.raises(OSError) as exc:
            (mnt / "f").read_bytes()
        assert exc.value.errno == errno.EIO
        assert "short read: 100 of" in m.last_errors[-1]
        assert os.stat(mnt / "f").st_size == 10_000  # the kernel did not take it for the end of file
        assert (mnt / "small").read_bytes() == b"z" * 50  # short only at the end: fine


def test_tree_returning_too_much_is_cut(tmp_path: Path) -> None:
    class Greedy(MemTree):
        def read(self, ino: int, offset: int, size: int) -> bytes:
            return b"z" * (size + 100)

    tree = Greedy()
    tree.add_file("f", b"z" * 10)
    mnt = tmp_path / "m"
    mnt.mkdir()
    with FuseMount(tree, mnt):
        assert (mnt / "f").read_bytes() == b"z" * 10


def test_stop_leaves_nothing_mounted_even_with_open_files(tmp_path: Path) -> None:
    tree = MemTree()
    tree.add_file("f", b"data")
    mnt = tmp_path / "m"
    mnt.mkdir()
    m = FuseMount(tree, mnt).start()
    assert is_mounted(str(mnt))
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        m.stop(timeout=0.5)
        assert not is_mounted(str(mnt))
        assert m.workers == 0
        with pytest.raises(OSError) as exc:
            os.pread(fd, 4, 0)  # page not cached; the aborted connection answers
        assert exc.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    finally:
        os.close(fd)
    assert os.listdir(mnt) == []


def test_stop_while_a_read_is_stuck_in_the_tree(tmp_path: Path) -> None:
    tree = MemTree()
    tree.add_file("slow", b"s" * 10)
    gate = threading.Event()
    tree.read_gate = gate  # the READ stays in the tree until the stop returned
    mnt = tmp_path / "m"
    mnt.mkdir()

    def fd_count() -> int:
        return len(os.listdir("/proc/self/fd"))

    fds_before = fd_count()
    m = FuseMount(tree, mnt).start()
    outcome: list[object] = []

    def reader() -> None:
        try:
            outcome.append((mnt / "slow").read_bytes())
        except OSError as err:
            outcome.append(err.errno)

    t = threading.Thread(target=reader)
    t.start()
    assert _until(lambda: tree.reads_waiting == 1)  # the READ is now held inside the tree
    stopper = threading.Thread(target=m.stop, kwargs={"timeout": 0.3})
    stopper.start()
    stopper.join(60)
    assert not stopper.is_alive() and tree.reads_waiting == 1, "stop() waited for the stuck READ"
    t.join(60)
    assert outcome and outcome[0] in (errno.ENOTCONN, errno.ECONNABORTED)
    assert not is_mounted(str(mnt))
    assert m.workers == 1  # the stuck thread is still inside the tree
    gate.set()
    assert _until(lambda: m.workers == 0)  # it ends once the tree returns
    assert fd_count() == fds_before  # the fd kept for the stuck thread was closed by it


def test_mount_errors(tmp_path: Path) -> None:
    with pytest.raises(MountError, match="not a directory"):
        FuseMount(MemTree(), tmp_path / "missing").start()
    with pytest.raises(MountError, match="nothing is mounted"):
        unmount(str(tmp_path))
    with pytest.raises(MountError, match="invalid FUSE source name"):
        FuseMount(MemTree(), tmp_path, fsname="a,b").start()
    assert not is_mounted(str(tmp_path))


SERVER = """
import sys, time
from lazypull.fs.fuse import FuseMount
from tests.fs.memtree import MemTree
t = MemTree()
t.add_file("hello", b"hi")
FuseMount(t, sys.argv[1]).start()
print("ready", flush=True)
time.sleep(600)
"""


def test_killed_server_gives_enotconn_and_unmount_cleans(tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(mnt)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert (mnt / "hello").read_bytes() == b"hi"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with pytest.raises(OSError) as exc:
        os.stat(mnt / "other")
    assert exc.value.errno == errno.ENOTCONN
    assert is_mounted(str(mnt))
    unmount(str(mnt))
    assert not is_mounted(str(mnt))
    assert os.listdir(mnt) == []


def test_mountpoint_with_space_and_fsname(tmp_path: Path) -> None:
    mnt = tmp_path / "with space"
    mnt.mkdir()
    tree = MemTree()
    tree.add_file("f", b"1")
    with FuseMount(tree, mnt, fsname="sha256:abc"):
        assert is_mounted(str(mnt)) and mount_entry(str(mnt))[1] == "sha256:abc"  # type: ignore[index]
        assert (mnt / "f").read_bytes() == b"1"
    assert not is_mounted(str(mnt))
