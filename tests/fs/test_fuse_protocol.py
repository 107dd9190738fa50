"""FUSE message encoding and the request adapter, on bytes (no kernel involved)."""

from __future__ import annotations

import errno
import os
import stat
import struct

import pytest

from lazypull.fs.fuse import protocol
from lazypull.fs.fuse.mount import _unescape
from lazypull.fs.fuse.ops import Operations
from lazypull.fs.fuse.protocol import Op, Request
from lazypull.fs.fuse.tree import Attr, FuseError
from tests.fs.memtree import MemTree


def _msg(opcode: int, body: bytes, nodeid: int = 1, unique: int = 7) -> bytes:
    return (
        protocol.IN_HEADER.pack(protocol.IN_HEADER.size + len(body), opcode, unique, nodeid, 0, 0, 1, 0, 0)
        + body
    )


def _req(opcode: int, body: bytes = b"", nodeid: int = 1) -> Request:
    return protocol.parse_request(_msg(opcode, body, nodeid))


def test_struct_sizes_match_the_kernel_header() -> None:
    assert protocol.IN_HEADER.size == 40
    assert protocol.OUT_HEADER.size == 16
    assert protocol.ATTR.size == 88
    assert protocol.ENTRY_OUT_HEAD.size + protocol.ATTR.size == 128
    assert protocol.ATTR_OUT_HEAD.size + protocol.ATTR.size == 104
    assert protocol.INIT_OUT.size == 64
    assert protocol.OPEN_OUT.size == 16
    assert protocol.READ_IN.size == 40
    assert protocol.KSTATFS.size == 80
    assert protocol.BACKING_MAP.size == 16
    assert protocol.FUSE_DEV_IOC_BACKING_OPEN == 0x4010E501
    assert protocol.FUSE_DEV_IOC_BACKING_CLOSE == 0x4004E502


def test_parse_request_fields_and_extensions() -> None:
    raw = protocol.IN_HEADER.pack(40 + 16, Op.LOOKUP, 99, 5, 10, 20, 30, 1, 0) + b"name\0\0\0\0" + bytes(8)
    req = protocol.parse_request(raw)
    assert (req.opcode, req.unique, req.nodeid, req.uid, req.gid, req.pid) == (Op.LOOKUP, 99, 5, 10, 20, 30)
    assert req.body == b"name\0\0\0\0"  # the 8-byte extension is cut off


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(b"\0" * 10, "shorter than its header", id="short"),
        pytest.param(_msg(Op.GETATTR, b"")[:-1] + b"", "shorter than its header", id="truncated"),
        pytest.param(_msg(Op.GETATTR, b"abc") + b"x", "says 43 bytes but 44", id="length-mismatch"),
        pytest.param(
            protocol.IN_HEADER.pack(48, Op.GETATTR, 1, 1, 0, 0, 0, 2, 0) + bytes(8),
            "extensions",
            id="extensions-too-long",
        ),
    ],
)
def test_parse_request_rejects_hostile_bytes(raw: bytes, message: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.parse_request(raw)


def test_cstring_requires_nul() -> None:
    assert protocol.cstring(b"abc\0def") == b"abc"
    with pytest.raises(protocol.ProtocolError, match="NUL"):
        protocol.cstring(b"abc")


def test_attr_encoding() -> None:
    attr = Attr(
        ino=9,
        mode=stat.S_IFCHR | 0o600,
        nlink=1,
        uid=3,
        gid=4,
        rdev=os.makedev(259, 70000),
        size=1000,
        mtime_ns=5_000_000_007,
    )
    fields = protocol.ATTR.unpack(protocol.encode_attr(attr))
    assert fields[:3] == (9, 1000, 2)
    assert fields[3:9] == (5, 5, 5, 7, 7, 7)
    assert fields[9:13] == (stat.S_IFCHR | 0o600, 1, 3, 4)
    rdev = fields[13]  # new_encode_dev: minor low byte, major 12 bits, minor high bits
    assert rdev & 0xFF == 70000 & 0xFF
    assert (rdev >> 8) & 0xFFF == 259
    assert rdev >> 20 == 70000 >> 8


def test_times_before_1970() -> None:
    fields = protocol.ATTR.unpack(protocol.encode_attr(Attr(2, stat.S_IFREG, mtime_ns=-1_500_000_000)))
    assert struct.unpack("=q", struct.pack("=Q", fields[4]))[0] == -2
    assert fields[7] == 500_000_000


def test_mountinfo_unescape() -> None:
    assert _unescape("/tmp/a\\040b\\134c") == "/tmp/a b\\c"
    assert _unescape("/plain\\") == "/plain\\"


def test_negative_entry_and_timeouts() -> None:
    raw = protocol.encode_entry(None, 1.5, 2.0)
    assert protocol.ENTRY_OUT_HEAD.unpack_from(raw) == (0, 0, 1, 0, 500_000_000, 0)
    raw = protocol.encode_entry(Attr(4, stat.S_IFREG), 86400, 60)
    assert protocol.ENTRY_OUT_HEAD.unpack_from(raw) == (4, 0, 86400, 60, 0, 0)


def test_dirents_round_trip_and_alignment() -> None:
    a = protocol.encode_dirent(5, 1, b"abc", stat.S_IFREG)
    b = protocol.encode_direntplus(6, 2, b"longer-name", Attr(6, stat.S_IFDIR), stat.S_IFDIR, 1, 1)
    assert len(a) % 8 == 0 and len(b) % 8 == 0
    assert len(a) == protocol.dirent_size(b"abc", False)
    assert len(b) == protocol.dirent_size(b"longer-name", True)
    assert protocol.decode_dirents(a, False) == [(5, 1, b"abc", 8, 0)]
    assert protocol.decode_dirents(b, True) == [(6, 2, b"longer-name", 4, 6)]


def _ops(tree: MemTree, passthrough: bool = False) -> Operations:
    return Operations(tree, entry_timeout=10, attr_timeout=10, passthrough=passthrough, dev_fd=-1)


def _init_body(minor: int, flags: int) -> bytes:
    return protocol.INIT_IN.pack(
        7, minor, 131072, (flags & 0xFFFFFFFF) | protocol.INIT_EXT, flags >> 32
    ) + bytes(44)


def test_init_negotiates_version_and_flags() -> None:
    ops = _ops(MemTree(), passthrough=True)
    offered = protocol.ASYNC_READ | protocol.DO_READDIRPLUS | protocol.WRITEBACK_CACHE | protocol.PASSTHROUGH
    err, raw = ops.init(_req(Op.INIT, _init_body(45, offered)))
    assert err == 0
    major, minor, readahead, flags, *_rest = protocol.INIT_OUT.unpack(raw)
    flags2, depth = _rest[-2], _rest[-1]
    assert (major, minor, readahead) == (7, protocol.MAX_MINOR, 131072)
    assert flags & protocol.ASYNC_READ and flags & protocol.DO_READDIRPLUS
    assert not flags & protocol.WRITEBACK_CACHE  # never asked for
    assert flags2 << 32 == protocol.PASSTHROUGH and depth == 1
    assert ops.passthrough_active


def test_init_without_passthrough_offer_and_old_kernel() -> None:
    ops = _ops(MemTree(), passthrough=True)
    err, raw = ops.init(_req(Op.INIT, _init_body(36, protocol.ASYNC_READ)))
    assert err == 0 and not ops.passthrough_active
    assert protocol.INIT_OUT.unpack(raw)[1] == 36
    assert _ops(MemTree()).init(_req(Op.INIT, _init_body(20, 0)))[0] == errno.EPROTO


def test_xattr_size_probe_erange_and_enodata() -> None:
    tree = MemTree()
    ino = tree.add_file("f", b"", xattrs={b"user.a": b"12345", b"user.b": b""})
    ops = _ops(tree)

    def get(name: bytes, size: int) -> tuple[int, bytes]:
        reply = ops.handle(_req(Op.GETXATTR, struct.pack("=II", size, 0) + name + b"\0", ino))
        assert reply is not None
        return reply

    assert get(b"user.a", 0) == (0, struct.pack("=II", 5, 0))
    assert get(b"user.a", 4) == (errno.ERANGE, b"")
    assert get(b"user.a", 5) == (0, b"12345")
    assert get(b"user.nope", 100) == (errno.ENODATA, b"")
    listed = ops.handle(_req(Op.LISTXATTR, struct.pack("=II", 0, 0), ino))
    assert listed == (0, struct.pack("=II", 14, 0))
    assert ops.handle(_req(Op.LISTXATTR, struct.pack("=II", 100, 0), ino)) == (0, b"user.a\0user.b\0")


@pytest.mark.parametrize(
    ("opcode", "expected"),
    [
        pytest.param(Op.WRITE, errno.EROFS, id="write"),
        pytest.param(Op.MKDIR, errno.EROFS, id="mkdir"),
        pytest.param(Op.SETXATTR, errno.EROFS, id="setxattr"),
        pytest.param(Op.IOCTL, errno.ENOSYS, id="ioctl"),
        pytest.param(Op.LSEEK, errno.ENOSYS, id="lseek"),
        pytest.param(999, errno.ENOSYS, id="unknown-opcode"),
    ],
)
def test_unsupported_requests(opcode: int, expected: int) -> None:
    assert _ops(MemTree()).handle(_req(opcode, bytes(64))) == (expected, b"")


def test_no_reply_requests() -> None:
    ops = _ops(MemTree())
    assert ops.handle(_req(Op.FORGET, struct.pack("=Q", 1))) is None
    assert ops.handle(_req(Op.BATCH_FORGET, struct.pack("=II", 0, 0))) is None
    assert ops.handle(_req(Op.INTERRUPT, struct.pack("=Q", 3))) is None


def test_open_for_writing_is_erofs() -> None:
    tree = MemTree()
    ino = tree.add_file("f", b"x")
    ops = _ops(tree)
    assert ops.handle(_req(Op.OPEN, struct.pack("=II", os.O_RDWR, 0), ino)) == (errno.EROFS, b"")
    err, raw = ops.handle(_req(Op.OPEN, struct.pack("=II", os.O_RDONLY, 0), ino)) or (1, b"")
    assert err == 0
    fh, flags, backing = protocol.OPEN_OUT.unpack(raw)
    assert flags & protocol.FOPEN_KEEP_CACHE and backing == 0 and ops.open_files() == 1
    assert ops.handle(_req(Op.RELEASE, struct.pack("=QIIQ", fh, 0, 0, 0), ino)) == (0, b"")
    assert ops.open_files() == 0


def test_unexpected_exception_is_eio_and_remembered() -> None:
    tree = MemTree()
    tree.fail["getattr"] = ZeroDivisionError("division by zero in tree")
    ops = _ops(tree)
    assert ops.handle(_req(Op.GETATTR, bytes(16), 1)) == (errno.EIO, b"")
    assert "GETATTR on inode 1 failed: ZeroDivisionError: division by zero in tree" in ops.last_errors[-1]


@pytest.mark.parametrize("bad", [0, -2, 512, 100000], ids=["zero", "negative", "512", "huge"])
def test_fuse_error_with_an_impossible_errno_is_eio(bad: int) -> None:
    tree = MemTree()
    tree.fail["getattr"] = FuseError(bad)
    ops = _ops(tree)
    assert ops.handle(_req(Op.GETATTR, bytes(16), 1)) == (errno.EIO, b"")
    assert "GETATTR on inode 1 failed: FuseError" in ops.last_errors[-1]


def test_impossible_attributes_from_the_tree_are_eio() -> None:
    tree = MemTree()
    ino = tree.add_file("f", b"")
    tree.set_attr(ino, size=-1)
    ops = _ops(tree)
    assert ops.handle(_req(Op.GETATTR, bytes(16), ino)) == (errno.EIO, b"")
    assert f"GETATTR on inode {ino} failed: error:" in ops.last_errors[-1]
    assert protocol.op_name(Op.LOOKUP) == "LOOKUP" and protocol.op_name(1234) == "1234"


def test_readdir_pages_by_offset() -> None:
    tree = MemTree()
    for i in range(50):
        tree.add_file(f"d/file-{i:03d}", b"")
    d = tree.ino("d")
    ops = _ops(tree)
    _err, raw = ops.handle(_req(Op.OPENDIR, struct.pack("=II", 0, 0), d)) or (1, b"")
    fh = protocol.OPEN_OUT.unpack(raw)[0]
    names: list[bytes] = []
    offset = 0
    while True:
        reply = ops.handle(_req(Op.READDIRPLUS, protocol.READ_IN.pack(fh, offset, 1024, 0, 0, 0, 0), d))
        assert reply is not None and reply[0] == 0
        entries = protocol.decode_dirents(reply[1], True)
        if not entries:
            break
        assert len(reply[1]) <= 1024
        names += [e[2] for e in entries]
        offset = entries[-1][1]
    assert names == [b".", b".."] + [f"file-{i:03d}".encode() for i in range(50)]
    assert tree.calls["readdir"] == 1  # listed once per open directory
