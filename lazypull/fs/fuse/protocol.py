"""The FUSE kernel protocol as bytes: opcodes, flags and the structs of ``include/uapi/linux/fuse.h``.

Pure encode/decode, no I/O. Everything is little-endian on the machines we run on, but the formats say
native (``=``) because the kernel writes host order. Layouts (sizes in bytes):

- ``fuse_in_header`` (40): len u32, opcode u32, unique u64, nodeid u64, uid u32, gid u32, pid u32,
  total_extlen u16, padding u16. ``fuse_out_header`` (16): len u32, error i32 (``-errno``), unique u64.
- ``fuse_attr`` (88): ino, size, blocks, atime, mtime, ctime (u64); atimensec, mtimensec, ctimensec, mode,
  nlink, uid, gid, rdev, blksize, flags (u32). ``fuse_entry_out`` (128) = nodeid, generation,
  entry_valid, attr_valid (u64), entry_valid_nsec, attr_valid_nsec (u32), fuse_attr.
- ``fuse_init_out`` (64) since 7.23; flags2 (bits 32..63 of the flags) since 7.36, max_stack_depth 7.40.
- ``fuse_dirent`` = ino u64, off u64, namelen u32, type u32, name, padded to 8 bytes;
  ``fuse_direntplus`` = fuse_entry_out + fuse_dirent.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from lazypull.fs.fuse.tree import Attr, StatFs

KERNEL_VERSION = 7
#: The newest minor version whose messages we know (7.40 brought passthrough).
MAX_MINOR = 41
#: Oldest minor we accept: 7.31 has every struct size used below in its modern form.
MIN_MINOR = 31


class Op(IntEnum):
    """``enum fuse_opcode``."""

    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52


def op_name(opcode: int) -> str:
    """``LOOKUP`` for 1; the number itself for opcodes we do not know."""
    try:
        return Op(opcode).name
    except ValueError:
        return str(opcode)


#: Requests the kernel sends without waiting for a reply.
NO_REPLY = frozenset({Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT})

#: Requests that would change the tree: answered EROFS.
WRITE_OPS = frozenset(
    {
        Op.SETATTR,
        Op.SYMLINK,
        Op.MKNOD,
        Op.MKDIR,
        Op.UNLINK,
        Op.RMDIR,
        Op.RENAME,
        Op.LINK,
        Op.WRITE,
        Op.SETXATTR,
        Op.REMOVEXATTR,
        Op.CREATE,
        Op.FALLOCATE,
        Op.RENAME2,
        Op.COPY_FILE_RANGE,
        Op.TMPFILE,
    }
)


# INIT flags we use or refuse (bits 32.. travel in flags2). Not asked for on purpose: AUTO_INVAL_DATA
# (layers never change), WRITEBACK_CACHE (read-only; it also rules out passthrough), POSIX_LOCKS (the
# kernel handles locks locally), EXPORT_SUPPORT (no NFS export).
ASYNC_READ = 1 << 0
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
WRITEBACK_CACHE = 1 << 16
#: Offered by the kernel: it takes ENOSYS to OPEN (OPENDIR) as "never ask again" and opens every file
#: (directory) itself, keeping its page cache, with no RELEASE either.
NO_OPEN_SUPPORT = 1 << 17
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
NO_OPENDIR_SUPPORT = 1 << 24
INIT_EXT = 1 << 30
PASSTHROUGH = 1 << 37

# In the file flags of OPEN and READ (``fuse_read_in.flags``): the file was opened by execve (the kernel's
# ``__FMODE_EXEC``).
FMODE_EXEC = 0o40

# OPEN reply flags.
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3
FOPEN_NOFLUSH = 1 << 5
FOPEN_PASSTHROUGH = 1 << 7

# Device ioctls: _IOW(229, nr, size) = (1 << 30) | (size << 16) | (229 << 8) | nr.
_IOC_WRITE = 1
FUSE_DEV_IOC_MAGIC = 229


def _iow(nr: int, size: int) -> int:
    return (_IOC_WRITE << 30) | (size << 16) | (FUSE_DEV_IOC_MAGIC << 8) | nr


BACKING_MAP = struct.Struct("=iIQ")  # struct fuse_backing_map {int32 fd; u32 flags; u64 padding}
FUSE_DEV_IOC_BACKING_OPEN = _iow(1, BACKING_MAP.size)
FUSE_DEV_IOC_BACKING_CLOSE = _iow(2, 4)

IN_HEADER = struct.Struct("=IIQQIIIHH")
#: Only the opcode and node id of ``fuse_in_header``: what deciding where a request is answered needs.
IN_OPCODE_NODEID = struct.Struct("=4xI8xQ")
OUT_HEADER = struct.Struct("=IiQ")
ATTR = struct.Struct("=QQQQQQIIIIIIIIII")
ENTRY_OUT_HEAD = struct.Struct("=QQQQII")
ATTR_OUT_HEAD = struct.Struct("=QII")
INIT_IN = struct.Struct("=IIIII")  # major, minor, max_readahead, flags, flags2 (flags2 only with INIT_EXT)
INIT_IN_OLD = struct.Struct("=IIII")
INIT_OUT = struct.Struct("=IIIIHHIIHHII24x")
OPEN_IN = struct.Struct("=II")
OPEN_OUT = struct.Struct("=QIi")
READ_IN = struct.Struct("=QQIIQII")
RELEASE_IN = struct.Struct("=QIIQ")
GETXATTR_IN = struct.Struct("=II")
GETXATTR_OUT = struct.Struct("=II")
KSTATFS = struct.Struct("=QQQQQIIII24x")
DIRENT_HEAD = struct.Struct("=QQII")
ACCESS_IN = struct.Struct("=II")

#: Largest payload of a READ (and of a WRITE we would get): the kernel's default page limit, 256 pages.
MAX_PAGES_COUNT = 256
MAX_WRITE = MAX_PAGES_COUNT * 4096
#: Read buffer: the kernel refuses buffers smaller than header + fuse_write_in + max_write.
READ_BUFFER = MAX_WRITE + 4096


class ProtocolError(Exception):
    """The kernel sent bytes we cannot parse (a bug here or an unsupported kernel)."""


class Request(NamedTuple):
    """One message read from ``/dev/fuse``: the header fields and the opcode-specific rest (a tuple:
    made for every request, the cheapest immutable record)."""

    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    body: bytes


def parse_request(buf: bytes) -> Request:
    """Split one message into header fields and body; the length field must match the buffer."""
    if len(buf) < IN_HEADER.size:
        raise ProtocolError(f"FUSE request of {len(buf)} bytes is shorter than its header")
    length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = IN_HEADER.unpack_from(buf)
    if length != len(buf):
        raise ProtocolError(f"FUSE request says {length} bytes but {len(buf)} were read")
    end = length - extlen * 8
    if end < IN_HEADER.size:
        raise ProtocolError(f"FUSE request extensions ({extlen * 8} bytes) exceed the message")
    return Request(opcode, unique, nodeid, uid, gid, pid, bytes(buf[IN_HEADER.size : end]))


def out_header(unique: int, error: int, payload_len: int) -> bytes:
    """The reply header; ``error`` is 0 or a positive errno (sent negated)."""
    return OUT_HEADER.pack(OUT_HEADER.size + payload_len, -error, unique)


#: ``enum fuse_notify_code``: a message from the server with unique 0 and this code as its error field.
NOTIFY_RESEND = 7       # Linux 6.9+: requests read from the device but not answered are queued again


def notify_resend() -> bytes:
    """FUSE_NOTIFY_RESEND: a server taking over a live connection asks for what its predecessor read
    and never answered (the kernel marks those requests' unique with bit 63; replies echo it)."""
    return OUT_HEADER.pack(OUT_HEADER.size, NOTIFY_RESEND, 0)


def cstring(body: bytes, offset: int = 0) -> bytes:
    """A NUL-terminated name starting at ``offset``."""
    end = body.find(b"\0", offset)
    if end < 0:
        raise ProtocolError("FUSE request name is not NUL-terminated")
    return body[offset:end]


def _split_ns(ns: int) -> tuple[int, int]:
    """Seconds (two's complement: times before 1970 are negative) and nanoseconds."""
    sec, nsec = divmod(ns, 1_000_000_000)
    return sec & 0xFFFFFFFFFFFFFFFF, nsec


def _split_timeout(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


def encode_rdev(rdev: int) -> int:
    """``Attr.rdev`` (``os.makedev`` form) as the kernel's 32-bit ``new_encode_dev`` form."""
    major, minor = os.major(rdev), os.minor(rdev)
    return ((minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & ~0xFF) << 12)) & 0xFFFFFFFF


def encode_attr(attr: Attr) -> bytes:
    """``struct fuse_attr``; atime and ctime repeat mtime (layers have only one time)."""
    sec, nsec = _split_ns(attr.mtime_ns)
    return ATTR.pack(
        attr.ino,
        attr.size,
        attr.blocks,
        sec,
        sec,
        sec,
        nsec,
        nsec,
        nsec,
        attr.mode,
        attr.nlink,
        attr.uid,
        attr.gid,
        encode_rdev(attr.rdev),
        4096,
        0,
    )


def encode_entry(attr: Attr | None, entry_timeout: float, attr_timeout: float) -> bytes:
    """``struct fuse_entry_out``; ``attr=None`` is a cached negative entry (nodeid 0)."""
    e_sec, e_nsec = _split_timeout(entry_timeout)
    if attr is None:
        return ENTRY_OUT_HEAD.pack(0, 0, e_sec, 0, e_nsec, 0) + bytes(ATTR.size)
    a_sec, a_nsec = _split_timeout(attr_timeout)
    return ENTRY_OUT_HEAD.pack(attr.ino, 0, e_sec, a_sec, e_nsec, a_nsec) + encode_attr(attr)


def encode_attr_out(attr: Attr, attr_timeout: float) -> bytes:
    """``struct fuse_attr_out``."""
    a_sec, a_nsec = _split_timeout(attr_timeout)
    return ATTR_OUT_HEAD.pack(a_sec, a_nsec, 0) + encode_attr(attr)


def encode_statfs(st: StatFs) -> bytes:
    """``struct fuse_statfs_out``: nothing free, the layer is read-only."""
    return KSTATFS.pack(st.blocks, 0, 0, st.files, 0, st.bsize, st.namelen, st.bsize, 0)


@dataclass(frozen=True)
class InitIn:
    """What the kernel offers in FUSE_INIT."""

    major: int
    minor: int
    max_readahead: int
    flags: int  # all 64 bits: flags | flags2 << 32


def decode_init(body: bytes) -> InitIn:
    """``struct fuse_init_in``; flags2 only counts when the kernel set INIT_EXT."""
    if len(body) < INIT_IN_OLD.size:
        raise ProtocolError(f"FUSE_INIT body of {len(body)} bytes is too short")
    major, minor, readahead, flags = INIT_IN_OLD.unpack_from(body)
    if flags & INIT_EXT and len(body) >= INIT_IN.size:
        flags |= INIT_IN.unpack_from(body)[4] << 32
    return InitIn(major, minor, readahead, flags)


@dataclass(frozen=True)
class InitOut:
    """Our FUSE_INIT answer."""

    minor: int
    max_readahead: int
    flags: int  # 64 bits; the high half goes to flags2
    max_background: int = 64
    congestion_threshold: int = 48
    max_write: int = MAX_WRITE
    max_pages: int = MAX_PAGES_COUNT
    max_stack_depth: int = 0


def encode_init(out: InitOut) -> bytes:
    """``struct fuse_init_out`` (time_gran 1 ns)."""
    return INIT_OUT.pack(
        KERNEL_VERSION,
        out.minor,
        out.max_readahead,
        out.flags & 0xFFFFFFFF,
        out.max_background,
        out.congestion_threshold,
        out.max_write,
        1,
        out.max_pages,
        0,
        out.flags >> 32,
        out.max_stack_depth,
    )


def _dirent_type(mode: int) -> int:
    return stat.S_IFMT(mode) >> 12


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def dirent_size(name: bytes, plus: bool) -> int:
    """Bytes one entry takes in a READDIR(PLUS) reply."""
    head = DIRENT_HEAD.size + (ENTRY_OUT_HEAD.size + ATTR.size if plus else 0)
    return _pad8(head + len(name))


def encode_dirent(ino: int, off: int, name: bytes, mode: int) -> bytes:
    """One ``struct fuse_dirent``, padded to 8 bytes."""
    raw = DIRENT_HEAD.pack(ino, off, len(name), _dirent_type(mode)) + name
    return raw + bytes(_pad8(len(raw)) - len(raw))


def encode_direntplus(
    ino: int, off: int, name: bytes, attr: Attr | None, mode: int, entry_timeout: float, attr_timeout: float
) -> bytes:
    """One ``struct fuse_direntplus``; ``attr=None`` (for ``.`` and ``..``) makes the kernel skip it."""
    if attr is None:
        entry = bytes(ENTRY_OUT_HEAD.size + ATTR.size)
    else:
        entry = encode_entry(attr, entry_timeout, attr_timeout)
    return entry + encode_dirent(ino, off, name, mode)


def decode_dirents(buf: bytes, plus: bool) -> list[tuple[int, int, bytes, int, int]]:
    """Inverse of the dirent encoders, for tests: (ino, off, name, type, entry nodeid)."""
    out = []
    pos = 0
    while pos < len(buf):
        nodeid = 0
        if plus:
            nodeid = ENTRY_OUT_HEAD.unpack_from(buf, pos)[0]
            pos += ENTRY_OUT_HEAD.size + ATTR.size
        ino, off, namelen, typ = DIRENT_HEAD.unpack_from(buf, pos)
        name = bytes(buf[pos + DIRENT_HEAD.size : pos + DIRENT_HEAD.size + namelen])
        out.append((ino, off, name, typ, nodeid))
        pos += _pad8(DIRENT_HEAD.size + namelen)
    return out
