"""FUSE passthrough through the real kernel (6.9+): reads bypass the server, backing ids are per inode.

Each test taking ``fuse_path`` runs on the paths this kernel offers (tests/fs/fusepath.py): on
"served" (any kernel) the same files must read the same, every read reaching the tree.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.fs.fuse import FuseMount, protocol
from lazypull.fs.fuse.ops import Operations
from lazypull.fs.fuse.passthrough import BackingFiles
from lazypull.fs.fuse.protocol import Op, Request
from tests.fs.fusepath import ask_passthrough
from tests.fs.memtree import MemTree

DATA = random.Random(11).randbytes(2 * 1024 * 1024 + 17)


def _wait(cond, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    """RELEASE reaches the server asynchronously after close()."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


@pytest.fixture(scope="module")
def pt(tmp_path_factory: pytest.TempPathFactory, fuse_path: str) -> Iterator[tuple[MemTree, FuseMount, Path]]:
    base = tmp_path_factory.mktemp("pt")
    backing = base / "backing"
    backing.mkdir()
    tree = MemTree()
    for name in ("a", "b", "c", "d", "mm"):
        (backing / name).write_bytes(DATA)
        tree.add_file(name, DATA, backing=str(backing / name))
    tree.add_file("served", DATA[:5000])
    tree.add_file("vanished", b"from the tree", backing=str(backing / "does-not-exist"))
    mnt = base / "mnt"
    mnt.mkdir()
    with FuseMount(tree, mnt, passthrough=ask_passthrough(fuse_path)) as m:
        yield tree, m, mnt


Mounted = tuple[MemTree, FuseMount, Path]


def test_kernel_accepts_passthrough_or_mount_serves(pt: Mounted, fuse_path: str) -> None:
    assert pt[1].passthrough_active == (fuse_path == "passthrough")


def test_passthrough_reads_do_not_reach_the_tree(pt: tuple[MemTree, FuseMount, Path], fuse_path: str) -> None:
    tree, m, mnt = pt
    before = tree.calls["read"]
    assert (mnt / "a").read_bytes() == DATA
    fd = os.open(mnt / "a", os.O_RDONLY)
    try:
        for off in (0, 1, 4095, 1_000_001, len(DATA) - 3):
            assert os.pread(fd, 70_000, off) == DATA[off : off + 70_000]
    finally:
        os.close(fd)
    assert (tree.calls["read"] == before) == (fuse_path == "passthrough")
    assert _wait(lambda: m.passthrough_files == 0)


def test_mmap_of_passthrough_file(pt: tuple[MemTree, FuseMount, Path], fuse_path: str) -> None:
    tree, _, mnt = pt
    before = tree.calls["read"]
    # In another process: a page fault on a served file needs this process's FUSE threads, and a
    # slice of an mmap faults while holding the GIL they need (deadlock, as with exec).
    code = ("import mmap, sys; f = open(sys.argv[1], 'rb'); "
            "mp = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); "
            "sys.stdout.buffer.write(mp[123_456:200_000])")
    out = subprocess.run([sys.executable, "-c", code, str(mnt / "mm")], capture_output=True, timeout=60)
    assert out.returncode == 0 and out.stdout == DATA[123_456:200_000]
    assert (tree.calls["read"] == before) == (fuse_path == "passthrough")


def test_one_backing_id_shared_by_opens_of_an_inode(pt: Mounted, fuse_path: str) -> None:
    tree, m, mnt = pt
    per_inode = 1 if fuse_path == "passthrough" else 0  # served: no backing file is ever registered
    assert _wait(lambda: m.passthrough_files == 0)
    f1 = open(mnt / "b", "rb")  # noqa: SIM115
    f2 = open(mnt / "b", "rb")  # noqa: SIM115
    f3 = open(mnt / "c", "rb")  # noqa: SIM115
    try:
        assert m.passthrough_files == 2 * per_inode  # b (two opens) and c
        assert f1.read(1000) == DATA[:1000]
        assert f2.read() == DATA
        f1.close()
        # f1's RELEASE arrived (served: the kernel opens files itself, no OPEN reaches the server)
        assert _wait(lambda: m.open_files == 2 * per_inode)
        assert m.passthrough_files == 2 * per_inode  # f2 still holds b's backing file
        f2.seek(5)
        assert f2.read(10) == DATA[5:15]
        f2.close()
        assert _wait(lambda: m.passthrough_files == per_inode)
        assert f3.read() == DATA
    finally:
        for f in (f1, f2, f3):
            f.close()
    assert _wait(lambda: m.passthrough_files == 0)
    assert tree.backing_path(tree.ino("b"))  # the tree still offers it: a new open registers again
    assert (mnt / "b").read_bytes() == DATA


def test_reopen_is_answered_by_the_reading_thread_with_the_same_id(pt: Mounted, fuse_path: str) -> None:
    """A warm open costs no hand-over to another server thread: the thread reading /dev/fuse answers the
    OPEN (with the backing id the first open registered) and the RELEASE itself (fuse.workers)."""
    tree, m, mnt = pt
    assert m._ops is not None
    ino = tree.ino("d")

    def read() -> bytes:  # os-level: Python's open() adds an isatty ioctl (an IOCTL request) per file
        fd = os.open(mnt / "d", os.O_RDONLY)
        try:
            return os.read(fd, len(DATA) + 1)
        finally:
            os.close(fd)

    assert read() == DATA
    assert _wait(lambda: m.open_files == 0)
    first = m._ops.backing._by_inode.get(ino)  # passthrough: kept registered after the last close
    looked, reads = tree.calls["backing_path"], tree.calls["read"]
    inline, handed = m.inline_requests, m.handed_over
    for _ in range(3):
        assert read() == DATA
    assert _wait(lambda: m.open_files == 0)
    assert m.handed_over == handed, "a warm open went to another thread"
    assert tree.calls["backing_path"] == looked and tree.calls["read"] == reads
    if fuse_path == "passthrough":
        assert first is not None and m._ops.backing._by_inode[ino].backing_id == first.backing_id
        assert m.inline_requests - inline == 6  # 3 OPENs and 3 RELEASEs
    else:
        assert m.inline_requests == inline  # the kernel opens files itself and reads its page cache


def test_files_without_backing_are_served(pt: tuple[MemTree, FuseMount, Path]) -> None:
    tree, _, mnt = pt
    before = tree.calls["read"]
    assert (mnt / "served").read_bytes() == DATA[:5000]
    assert tree.calls["read"] > before


def test_unusable_backing_file_falls_back_to_served_reads(pt: tuple[MemTree, FuseMount, Path]) -> None:
    tree, m, mnt = pt
    before = tree.calls["read"]
    assert (mnt / "vanished").read_bytes() == b"from the tree"
    assert tree.calls["read"] > before
    assert m.last_errors == []  # a fallback, not an error


def test_passthrough_off(tmp_path: Path) -> None:
    backing = tmp_path / "f"
    backing.write_bytes(b"backing")
    tree = MemTree()
    tree.add_file("f", b"tree!!!", backing=str(backing))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with FuseMount(tree, mnt, passthrough=False) as m:
        assert not m.passthrough_active
        assert (mnt / "f").read_bytes() == b"tree!!!"
        assert tree.calls["backing_path"] == 0


def test_backing_file_on_a_stacked_fs_is_refused_and_served(tmp_path: Path, fuse_path: str) -> None:
    # A backing file on another FUSE mount (stack depth 1) is too deep for max_stack_depth 1:
    # the kernel refuses it (ELOOP) and the read is served instead.
    inner = MemTree()
    inner.add_file("f", b"inner")
    outer = MemTree()
    (tmp_path / "inner").mkdir()
    (tmp_path / "outer").mkdir()
    outer.add_file("f", b"outer", backing=str(tmp_path / "inner" / "f"))
    with FuseMount(inner, tmp_path / "inner"), \
            FuseMount(outer, tmp_path / "outer", passthrough=ask_passthrough(fuse_path)) as m:
        assert m.passthrough_active == (fuse_path == "passthrough")
        assert (tmp_path / "outer" / "f").read_bytes() == b"outer"
        assert outer.calls["read"] == 1 and m.passthrough_files == 0


def test_open_mode_follows_the_opens_already_there(tmp_path: Path, fuse_path: str) -> None:
    # The kernel refuses to mix cached and passthrough opens of one inode (ETXTBSY): while one kind is
    # open, new opens keep that kind even if the tree's answer about the backing file changed.
    backing = tmp_path / "backing"
    backing.write_bytes(b"same bytes")
    tree = MemTree()
    ino = tree.add_file("f", b"same bytes")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    per_inode = 1 if fuse_path == "passthrough" else 0  # served: every open is a cached one
    with FuseMount(tree, mnt, passthrough=ask_passthrough(fuse_path)) as m:
        with open(mnt / "f", "rb") as cached:
            tree.nodes[ino].backing = str(backing)  # the file became complete on disk
            with open(mnt / "f", "rb") as second:
                assert second.read() == b"same bytes" and m.passthrough_files == 0
            assert cached.read() == b"same bytes"
        assert _wait(lambda: m.open_files == 0)
        with open(mnt / "f", "rb") as pt_open:
            assert m.passthrough_files == per_inode
            tree.nodes[ino].backing = None  # e.g. evicted: opens already there keep the backing id
            with open(mnt / "f", "rb") as again:
                assert again.read() == b"same bytes" and m.passthrough_files == per_inode
            assert pt_open.read() == b"same bytes"
        assert _wait(lambda: m.passthrough_files == 0)


def test_exec_a_binary_from_the_mount(tmp_path: Path, fuse_path: str) -> None:
    # Containers exec their programs straight from layer mounts (mmap of the text pages).
    busybox = Path("/bin/busybox")
    tree = MemTree()
    tree.add_file("bin/busybox", busybox.read_bytes(), mode=0o755, backing=str(busybox))
    tree.add_symlink("bin/echo", b"busybox")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with FuseMount(tree, mnt, passthrough=ask_passthrough(fuse_path)) as m:
        # Through /bin/sh: CPython's vfork keeps the GIL until the child's exec returns, and an exec
        # from this process's own mount needs this process's FUSE threads (see FuseMount's docstring).
        cmd = f"exec {mnt}/bin/echo 'hello from' {m.fsname}"
        out = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout == "hello from lazypull\n"
        assert (tree.calls["read"] == 0) == (fuse_path == "passthrough") == m.passthrough_active


def _notes_mount(tmp_path: Path, names: list[str]) -> tuple[MemTree, Path]:
    backing = tmp_path / "backing"
    backing.mkdir()
    tree = MemTree()
    for name in names:
        (backing / name).write_bytes(DATA[:70_000])
        tree.add_file(name, DATA[:70_000], backing=str(backing / name))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    return tree, mnt


def test_a_hung_keeper_holds_up_only_the_open_that_tells_it(tmp_path: Path, fuse_path: str) -> None:
    """The keeper (``on_backing``: a socket round trip) hanging while a cold open tells it of a new id
    holds up that open only: the thread reading /dev/fuse answers a warm open of another file meanwhile.
    Before, the note was sent under the lock that thread needs, and the whole mount waited (up to the
    keeper's 10 s reply timeout)."""
    if fuse_path != "passthrough":
        pytest.skip("only passthrough registers backing ids")
    tree, mnt = _notes_mount(tmp_path, ["cold", "warm"])
    cold = tree.ino("cold")
    entered, go_on = threading.Event(), threading.Event()
    hung_out: list[int] = []

    def on_backing(ino: int, backing_id: int) -> None:
        if ino == cold and backing_id:
            entered.set()
            if not go_on.wait(20):      # only if the warm open below waited for this note
                hung_out.append(ino)

    got: list[bytes] = []
    mount = FuseMount(tree, mnt, passthrough=True)
    mount.on_backing = on_backing
    with mount as m:
        assert m.passthrough_active
        assert (mnt / "warm").read_bytes() == DATA[:70_000]       # registered and told: kept warm
        assert _wait(lambda: m.open_files == 0)
        opener = threading.Thread(target=lambda: got.append((mnt / "cold").read_bytes()))
        opener.start()
        try:
            assert entered.wait(30), "the cold open did not tell of its id"
            handed = m.handed_over
            fd = os.open(mnt / "warm", os.O_RDONLY)     # answered while the keeper hangs
            try:
                assert os.read(fd, 100) == DATA[:100]
            finally:
                os.close(fd)
            assert not hung_out, "the warm open waited for the keeper's answer to another open"
            assert not got, "the cold open was answered before its id was told"
        finally:
            go_on.set()
            opener.join(60)
        assert m.handed_over == handed, "the warm open went to another thread"
        assert got == [DATA[:70_000]]


def test_a_hung_keeper_holds_up_only_the_release_that_evicts(tmp_path: Path, fuse_path: str) -> None:
    """The same for an idle id unregistered at a last close (told to the keeper as id 0): while that
    note hangs, the thread reading /dev/fuse answers a warm open of another file."""
    if fuse_path != "passthrough":
        pytest.skip("only passthrough registers backing ids")
    tree, mnt = _notes_mount(tmp_path, ["evicted", "warm"])
    evicted = tree.ino("evicted")
    entered, go_on = threading.Event(), threading.Event()
    hung_out: list[int] = []

    def on_backing(ino: int, backing_id: int) -> None:
        if ino == evicted and not backing_id:
            entered.set()
            if not go_on.wait(20):      # only if the warm open below waited for this note
                hung_out.append(ino)

    mount = FuseMount(tree, mnt, passthrough=True)
    mount.on_backing = on_backing
    with mount as m:
        assert m.passthrough_active and m._ops is not None
        m._ops.backing._idle_kept = 0       # a last close unregisters the id
        held = os.open(mnt / "warm", os.O_RDONLY)     # in use: its id stays, later opens are warm
        try:
            assert (mnt / "evicted").read_bytes() == DATA[:70_000]    # its RELEASE tells the keeper
            try:
                assert entered.wait(30), "the last close did not tell of the unregistered id"
                fd = os.open(mnt / "warm", os.O_RDONLY)
                try:
                    assert os.read(fd, 100) == DATA[:100]
                finally:
                    os.close(fd)
                assert not hung_out, "the warm open waited for the keeper's answer to a release"
            finally:
                go_on.set()
        finally:
            os.close(held)
        assert _wait(lambda: m.passthrough_files == 0)


def test_the_notes_of_an_inode_keep_their_order(tmp_path: Path, fuse_path: str) -> None:
    """Opens and closes racing in two threads, each id evicted soon (1 idle kept): per inode the notes
    alternate (id, 0, id, 0 ...), and a passthrough open returns only once its id was told (one that
    came while its id was being unregistered is served in cached mode, as are those following it
    before its RELEASE arrives)."""
    if fuse_path != "passthrough":
        pytest.skip("only passthrough registers backing ids")
    names = [f"f{i}" for i in range(6)]
    tree, mnt = _notes_mount(tmp_path, names)
    notes: list[tuple[int, int]] = []
    notes_lock = threading.Lock()
    wrong: list[str] = []

    def on_backing(ino: int, backing_id: int) -> None:
        time.sleep(0.001)       # a round trip: lets the other thread's notes queue meanwhile
        with notes_lock:
            notes.append((ino, backing_id))

    mount = FuseMount(tree, mnt, passthrough=True)
    mount.on_backing = on_backing
    with mount as m:
        ops = m._ops
        assert ops is not None
        ops.backing._idle_kept = 1

        def churn(mine: list[str]) -> None:
            for _ in range(30):
                for name in mine:
                    fd = os.open(mnt / name, os.O_RDONLY)
                    try:
                        ino = tree.ino(name)
                        with notes_lock:
                            last = [b for i, b in notes if i == ino][-1:]
                        with ops._open_lock:    # (only this thread opens ``name``)
                            cached = ops._cached_opens[ino] > 0
                        if not cached and (not last or last[0] == 0):
                            wrong.append(f"{name} open with its id not told: {last}")
                        if os.pread(fd, 10, 5) != DATA[5:15]:
                            wrong.append(f"{name}: wrong bytes")
                    finally:
                        os.close(fd)

        threads = [threading.Thread(target=churn, args=(names[i::2],)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert _wait(lambda: m.open_files == 0)
    assert not wrong, wrong[:5]
    for name in names:
        ids = [b for i, b in notes if i == tree.ino(name)]
        assert len(ids) > 2 and all((b != 0) == (k % 2 == 0) for k, b in enumerate(ids)), (name, ids)


@pytest.fixture
def not_fuse() -> Iterator[int]:
    """An fd that is no /dev/fuse: the kernel refuses every backing ioctl on it (ENOTTY)."""
    fd = os.open(os.devnull, os.O_RDONLY)
    yield fd
    os.close(fd)


def test_an_id_being_unregistered_is_neither_reused_nor_replaced(
        not_fuse: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the unregister of an idle id until the tree is told (``on_closed``), an open of its inode
    takes no id (a new one would hold a file the late news unpins) and the session's end does not close
    the id a second time (its note does: the number may be a new file's by then)."""
    backing = BackingFiles(not_fuse, idle_kept=0)
    backing.adopt({7: 3})
    closed_ids: list[int] = []
    seen: list[tuple[str, object]] = []
    monkeypatch.setattr(backing, "_close_id", closed_ids.append)

    def told(ino: int, backing_id: int) -> None:
        if backing_id == 0:
            backing.close_all()     # the session ends meanwhile

    def closed(ino: int) -> None:
        seen.extend([("warm", backing.is_warm(ino)), ("reuse", backing.reuse(ino)),
                     ("acquire", backing.acquire(ino, None)), ("closing", backing.is_closing(ino)),
                     ("in use", backing.in_use())])

    backing.on_change, backing.on_closed = told, closed
    backing.release(7)      # the adopted open's count goes to 0: unregistered at once (0 kept)
    assert closed_ids == [3], "the id was not closed exactly once"
    assert seen == [("warm", False), ("reuse", 0), ("acquire", 0), ("closing", False), ("in use", 0)]

    backing = BackingFiles(not_fuse, idle_kept=0)
    backing.adopt({7: 3})
    backing.on_change = lambda ino, backing_id: None
    backing.on_closed = closed
    seen.clear()
    backing.release(7)
    assert seen == [("warm", False), ("reuse", 0), ("acquire", 0), ("closing", True), ("in use", 0)]
    assert not backing.is_open(7) and not backing.is_closing(7) and len(backing) == 0


def test_an_open_refused_while_its_id_closes_keeps_the_warning_for_a_real_failure(
        tmp_path: Path, not_fuse: int, caplog: pytest.LogCaptureFixture) -> None:
    """The first passthrough failure is logged as a WARNING, later ones quietly: an open served in
    cached mode on purpose is no failure and must not use it up. Here the reading thread answers a
    warm open itself, and a last close unregisters that id before it runs: it does not wait for the
    keeper (the whole mount would), it is served in cached mode."""
    (tmp_path / "f").write_bytes(b"x")
    tree = MemTree()
    closing = tree.add_file("closing", b"x", backing=str(tmp_path / "f"))
    other = tree.add_file("other", b"x", backing=str(tmp_path / "f"))
    ops = Operations(tree, entry_timeout=10, attr_timeout=10, passthrough=True, dev_fd=not_fuse)
    ops.passthrough_active = True
    ops.backing.adopt({closing: 5})
    ops.backing._idle_kept = 0
    replies: list[tuple[int, int]] = []

    def open_(ino: int) -> tuple[int, int]:
        body = protocol.OPEN_IN.pack(os.O_RDONLY, 0)
        reply = ops.handle(Request(Op.OPEN, 1, ino, 0, 0, 0, body))
        assert reply is not None and reply[0] == 0
        _, flags, backing_id = protocol.OPEN_OUT.unpack(reply[1])
        return flags & protocol.FOPEN_PASSTHROUGH, backing_id

    def told(ino: int, backing_id: int) -> None:
        if ino == closing and backing_id == 0:
            replies.append(open_(closing))      # the inode opened again while its id goes

    ops.backing.on_change = told
    caplog.set_level(logging.DEBUG, logger="lazypull.fs.fuse.ops")
    header = protocol.IN_HEADER.pack(protocol.IN_HEADER.size, Op.OPEN, 1, closing, 0, 0, 1, 0, 0)
    assert ops.inline(header), "a warm open is answered by the reading thread"
    ops.backing.release(closing)
    assert replies == [(0, 0)], "not served in cached mode while its id was closing"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert open_(other) == (0, 0)       # the kernel's refusal: a real failure
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and f"inode {other} " in warnings[0], warnings


def test_a_warm_open_whose_id_went_meanwhile_is_served_cached_by_the_reading_thread(
        tmp_path: Path, not_fuse: int) -> None:
    """The reading thread takes a warm OPEN itself (``inline``); if the whole eviction of that id ends
    before it runs, it neither asks the tree for the backing file (it may pin and assemble one), nor
    registers an id, nor waits for the keeper to be told: it serves the open in cached mode."""
    (tmp_path / "f").write_bytes(b"x")
    tree = MemTree()
    ino = tree.add_file("f", b"x", backing=str(tmp_path / "f"))
    ops = Operations(tree, entry_timeout=10, attr_timeout=10, passthrough=True, dev_fd=not_fuse)
    ops.passthrough_active = True
    ops.backing.adopt({ino: 5})
    ops.backing._idle_kept = 0
    told: list[tuple[int, int]] = []
    ops.backing.on_change = lambda i, backing_id: told.append((i, backing_id))
    header = protocol.IN_HEADER.pack(protocol.IN_HEADER.size, Op.OPEN, 1, ino, 0, 0, 1, 0, 0)
    assert ops.inline(header), "a warm open is answered by the reading thread"
    ops.backing.release(ino)    # the whole eviction: unregistered, the keeper told, on_closed run
    assert not ops.backing.is_open(ino) and told == [(ino, 0)]
    before = tree.calls.get("backing_path", 0)
    reply = ops.handle(Request(Op.OPEN, 1, ino, 0, 0, 0, protocol.OPEN_IN.pack(os.O_RDONLY, 0)))
    assert reply is not None and reply[0] == 0
    _, flags, backing_id = protocol.OPEN_OUT.unpack(reply[1])
    assert (flags & protocol.FOPEN_PASSTHROUGH, backing_id) == (0, 0), "not served in cached mode"
    assert tree.calls.get("backing_path", 0) == before, "the reading thread asked the tree"
    assert not ops.backing.is_open(ino) and told == [(ino, 0)], "an id registered or announced"


def test_a_failing_on_closed_does_not_skip_the_other_evicted_inodes(
        not_fuse: int, caplog: pytest.LogCaptureFixture) -> None:
    """One release evicts several idle ids; telling the tree of the first fails: the others are told
    still (else their pins stay until the layer closes), the failure is logged, the RELEASE goes on."""
    backing = BackingFiles(not_fuse, idle_kept=2)
    backing.adopt({7: 3, 8: 4})
    backing.release(7)
    backing.release(8)      # both idle, kept
    told: list[int] = []

    def closed(ino: int) -> None:
        told.append(ino)
        if ino == 7:
            raise RuntimeError("the tree's unpin failed (test)")

    backing.on_closed = closed
    backing._idle_kept = 0
    backing.adopt({9: 5})
    caplog.set_level(logging.ERROR, logger="lazypull.fs.fuse.passthrough")
    backing.release(9)      # evicts 7, 8 and 9 at once
    assert told == [7, 8, 9]
    assert not any(backing.is_open(ino) for ino in (7, 8, 9)) and len(backing) == 0
    assert [r.getMessage() for r in caplog.records] == [
        "telling the tree that inode 7's backing id closed failed"]
