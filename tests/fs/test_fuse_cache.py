"""Repeated opens and reads of a layer cost no server round trip (issue 14): the kernel opens files and
directories itself on served mounts (no OPEN/OPENDIR), passthrough keeps a file's backing id across
opens, and alternating requests do not start a worker thread each. Counts requests, never time."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from lazypull.fs.fuse import FuseMount, protocol
from lazypull.fs.fuse.ops import Operations
from lazypull.fs.fuse.protocol import Op, Request
from tests.fs.fusepath import ask_passthrough
from tests.fs.memtree import MemTree

DATA = bytes(range(256)) * 300


def _until(cond, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    """RELEASE reaches the server asynchronously after close(); the timeout only bounds a hang."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def _tree(backing: Path | None) -> MemTree:
    tree = MemTree()
    if backing is not None:
        backing.write_bytes(DATA)
    tree.add_file("f", DATA, backing=str(backing) if backing else None)
    for i in range(300):  # several READDIRs of one listing
        tree.add_file(f"dir/entry-with-a-long-name-{i:04d}", b"")
    return tree


def test_reopening_a_file_reaches_neither_the_tree_nor_the_server(tmp_path: Path, fuse_path: str) -> None:
    tree = _tree(tmp_path / "backing")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with FuseMount(tree, mnt, passthrough=ask_passthrough(fuse_path)) as m:
        assert (mnt / "f").read_bytes() == DATA
        reads, lookups = tree.calls["read"], tree.calls["lookup"]
        held = [open(mnt / "f", "rb") for _ in range(3)]  # noqa: SIM115
        try:
            assert all(f.read() == DATA for f in held)
            if m.passthrough_active:
                assert m.open_files == 3 and m.passthrough_files == 1
            else:
                assert m.open_files == 0  # the kernel opened them itself (no OPEN, no RELEASE to come)
        finally:
            for f in held:
                f.close()
        for _ in range(5):
            assert (mnt / "f").read_bytes() == DATA
        assert tree.calls["read"] == reads  # page cache (served) or the backing file (passthrough)
        assert tree.calls["lookup"] == lookups
        if m.passthrough_active:
            assert _until(lambda: m.passthrough_files == 0)
            assert m.passthrough_registered == 1  # kept: the next open needs no new backing file
            assert tree.calls["backing_path"] == 1  # asked once for 9 opens


def test_directories_are_listed_without_opendir(tmp_path: Path, fuse_path: str) -> None:
    tree = _tree(None)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with FuseMount(tree, mnt, passthrough=ask_passthrough(fuse_path)) as m:
        names = sorted(os.listdir(mnt / "dir"))
        assert names == [f"entry-with-a-long-name-{i:04d}" for i in range(300)]
        listed = tree.calls["readdir"]
        assert sorted(os.listdir(mnt / "dir")) == names
        assert tree.calls["readdir"] == listed  # the kernel's directory cache
        assert m._ops is not None and m._ops.no_opendir and not m._ops._dirs


def test_alternating_open_and_release_do_not_start_a_thread_each(tmp_path: Path) -> None:
    # A writable-flag mount keeps OPEN and RELEASE (no "no open"): every close queues a RELEASE that
    # arrives beside the next OPEN. Neither may wait (a cached-mode open, metadata in memory), so the
    # one thread reading /dev/fuse answers them all: no other thread is ever started.
    tree = _tree(None)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with FuseMount(tree, mnt, passthrough=False, readonly=False, workers=(1, 8)) as m:
        for _ in range(400):
            fd = os.open(mnt / "f", os.O_RDONLY)
            os.close(fd)
        assert _until(lambda: m.open_files == 0)
        assert m.threads_started == 1, f"{m.threads_started} threads started for 800 requests"
        assert m.handed_over == 0 and m.inline_requests >= 800


def _ops(no_open: bool, passthrough: bool = False) -> Operations:
    return Operations(MemTree(), entry_timeout=10, attr_timeout=10, passthrough=passthrough, dev_fd=-1,
                      no_open=no_open)


def _req(opcode: int, body: bytes = b"", nodeid: int = 1) -> Request:
    raw = protocol.IN_HEADER.pack(protocol.IN_HEADER.size + len(body), opcode, 7, nodeid, 0, 0, 1, 0, 0)
    return protocol.parse_request(raw + body)


def _init(ops: Operations, flags: int) -> None:
    body = protocol.INIT_IN.pack(7, 45, 131072, (flags & 0xFFFFFFFF) | protocol.INIT_EXT, flags >> 32)
    assert ops.init(_req(Op.INIT, body + bytes(44)))[0] == 0


NO_OPEN = protocol.NO_OPEN_SUPPORT | protocol.NO_OPENDIR_SUPPORT
OPEN_RDONLY = struct.pack("=II", os.O_RDONLY, 0)


@pytest.mark.parametrize(
    ("no_open", "offered", "passthrough", "expected"),
    [
        pytest.param(True, NO_OPEN, False, "enosys", id="served"),
        pytest.param(True, NO_OPEN | protocol.PASSTHROUGH, True, "open", id="passthrough-needs-open"),
        pytest.param(True, 0, False, "open", id="kernel-without-no-open"),
        pytest.param(False, NO_OPEN, False, "open", id="writable-mount"),
    ],
)
def test_open_is_declined_only_where_the_kernel_may_open_alone(
    no_open: bool, offered: int, passthrough: bool, expected: str
) -> None:
    ops = _ops(no_open, passthrough)
    ino = ops.tree.add_file("f", b"x")  # type: ignore[attr-defined]
    _init(ops, offered)
    err, raw = ops.handle(_req(Op.OPEN, OPEN_RDONLY, ino)) or (-1, b"")
    if expected == "enosys":
        assert (err, raw) == (errno.ENOSYS, b"")
        assert ops.open_files() == 0
    else:
        assert err == 0 and protocol.OPEN_OUT.unpack(raw)[1] & protocol.FOPEN_KEEP_CACHE
        assert ops.open_files() == 1


def test_readdir_without_a_handle_lists_by_inode() -> None:
    ops = _ops(True)
    for i in range(50):
        ops.tree.add_file(f"d/n{i:02d}", b"")  # type: ignore[attr-defined]
    d = ops.tree.ino("d")  # type: ignore[attr-defined]
    _init(ops, NO_OPEN)
    assert ops.handle(_req(Op.OPENDIR, OPEN_RDONLY, d)) == (errno.ENOSYS, b"")
    names: list[bytes] = []
    offset = 0
    while True:  # small buffers: the listing is read in several pieces, each from its offset
        err, raw = ops.handle(_req(Op.READDIR, protocol.READ_IN.pack(0, offset, 200, 0, 0, 0, 0), d)) \
            or (-1, b"")
        assert err == 0
        if not raw:
            break
        pos = 0
        while pos < len(raw):
            _ino, off, namelen, _type = struct.unpack_from("=QQII", raw, pos)
            names.append(raw[pos + 24 : pos + 24 + namelen])
            offset = off
            pos += (24 + namelen + 7) & ~7
    assert names == [b".", b".."] + [f"n{i:02d}".encode() for i in range(50)]


def test_a_walk_stats_every_entry_without_a_lookup(tmp_path: Path, fuse_path: str) -> None:
    # 300 subdirectories take many READDIRPLUS pages: each page carries its entries' attributes (with
    # "readdirplus auto" only the first did, and find's descent into each later one cost a LOOKUP).
    tree = MemTree()
    for i in range(300):
        tree.add_file(f"top/d{i:03d}/f", b"x")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with FuseMount(tree, mnt, passthrough=ask_passthrough(fuse_path)):
        os.stat(mnt / "top")
        lookups = tree.calls["lookup"]
        # find is a host binary, started through /bin/sh (see FuseMount's docstring)
        out = subprocess.run(["/bin/sh", "-c", f"exec find {mnt}/top -ls"], capture_output=True, text=True,
                             check=True, timeout=120).stdout
        assert len(out.splitlines()) == 1 + 300 * 2
        assert tree.calls["lookup"] == lookups


def _raw(opcode: int, nodeid: int = 1) -> bytes:
    return protocol.IN_HEADER.pack(protocol.IN_HEADER.size, opcode, 7, nodeid, 0, 0, 1, 0, 0)


class _Observer(MemTree):
    def refuse_write(self, op: str, parent: int, name: bytes) -> int:
        return errno.ENOENT


def test_what_the_reading_thread_answers_itself() -> None:
    """Operations.inline: only requests that never wait are answered by the thread reading /dev/fuse."""
    ops = _ops(no_open=False)
    for op in (Op.RELEASE, Op.FLUSH, Op.FORGET, Op.RELEASEDIR, Op.INIT, Op.SETATTR, Op.IOCTL, 4242):
        assert ops.inline(_raw(op)), op
    assert not ops.inline(_raw(Op.READ))  # may fetch from the network
    assert ops.inline(_raw(Op.OPEN))  # no passthrough: a cached-mode open touches no tree
    for op in (Op.LOOKUP, Op.GETATTR, Op.READDIRPLUS, Op.READLINK, Op.GETXATTR, Op.STATFS):
        assert ops.inline(_raw(op)), op  # MemTree says its metadata is in memory
    tree = MemTree()
    tree.in_memory = False  # like the additional layer store's tree, which may mount on lookup
    waits = Operations(tree, entry_timeout=10, attr_timeout=10, passthrough=False, dev_fd=-1)
    assert not waits.inline(_raw(Op.LOOKUP)) and not waits.inline(_raw(Op.READDIRPLUS))
    observed = Operations(_Observer(), entry_timeout=10, attr_timeout=10, passthrough=False, dev_fd=-1)
    assert not observed.inline(_raw(Op.CREATE)) and observed.inline(_raw(Op.SETATTR))
    assert ops.inline(b"\0" * 10)  # too short to parse: the session logs it, nothing waits


def test_a_passthrough_open_is_quick_once_its_backing_id_is_kept() -> None:
    tree = MemTree()
    ino = tree.add_file("f", b"x")
    ops = Operations(tree, entry_timeout=10, attr_timeout=10, passthrough=True, dev_fd=-1)
    ops.passthrough_active = True
    assert not ops.inline(_raw(Op.OPEN, ino))  # it looks for a backing file, maybe assembling one
    ops.backing.adopt({ino: 5})
    assert ops.inline(_raw(Op.OPEN, ino))
    reply = ops.handle(_req(Op.OPEN, protocol.OPEN_IN.pack(os.O_RDONLY, 0), nodeid=ino))
    assert reply is not None and reply[0] == 0
    _, flags, backing_id = protocol.OPEN_OUT.unpack(reply[1])
    assert backing_id == 5 and flags & protocol.FOPEN_PASSTHROUGH
    assert ops.backing.in_use() == 1 and tree.calls["backing_path"] == 0
    assert ops.inline(_raw(Op.RELEASE, ino))
    ops.backing._idle_kept = 0  # the next last close unregisters an id ...
    assert ops.inline(_raw(Op.RELEASE, ino))  # ... which nobody is told of: quick
    ops.backing.on_change = lambda ino, backing_id: None  # the keeper is told: a socket round trip
    assert not ops.inline(_raw(Op.RELEASE, ino))


class _ExecTree(MemTree):
    """Records which reads came to ``read_exec`` (the kernel's exec reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.exec_reads: list[int] = []

    def read_exec(self, ino: int, offset: int, size: int) -> bytes:
        self.exec_reads.append(ino)
        return self.read(ino, offset, size)


def test_a_read_flagged_fmode_exec_goes_to_read_exec_and_others_to_read() -> None:
    """The FUSE READ of an execve carries FMODE_EXEC in its flags: only that one reaches the tree's
    ``read_exec`` (a big program is fetched whole then)."""
    tree = _ExecTree()
    ino = tree.add_file("prog", b"x" * 100)
    ops = Operations(tree, entry_timeout=10, attr_timeout=10, passthrough=False, dev_fd=-1)

    def read(flags: int) -> Request:
        body = protocol.READ_IN.pack(0, 0, 100, 0, 0, flags, 0)
        raw = protocol.IN_HEADER.pack(protocol.IN_HEADER.size + len(body), Op.READ, 7, ino, 0, 0, 1, 0, 0)
        return protocol.parse_request(raw + body)

    assert ops.handle(read(0))[0] == 0 and tree.exec_reads == []
    assert ops.handle(read(protocol.FMODE_EXEC))[0] == 0 and tree.exec_reads == [ino]
