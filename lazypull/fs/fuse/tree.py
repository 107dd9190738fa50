"""The read-only tree a FUSE session serves: the only thing the protocol code knows about a filesystem.

The lazy layer (``lazypull.fs.layer``) implements :class:`Tree`; tests implement it over a dict.
Inode 1 is the root. Methods may block (a read may wait for the network): the session hands such a
request to another thread before calling them (``fuse.workers``), unless the tree says its metadata
never waits (:class:`MetadataInMemory`).
"""

from __future__ import annotations

import errno
from collections.abc import Collection
from dataclasses import dataclass
from typing import NewType, Protocol, runtime_checkable

InodeId = NewType("InodeId", int)
ROOT_INODE = InodeId(1)


class FuseError(Exception):
    """The one exception a :class:`Tree` method may raise on purpose: the reply is ``-errno``."""

    def __init__(self, err: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(err, str(err)))
        self.errno = err


@dataclass(frozen=True)
class Attr:
    """What ``stat`` shows for an inode. ``mode`` includes the ``S_IF*`` file type bits.

    ``rdev`` is ``os.makedev(major, minor)`` for device nodes (an overlayfs whiteout is a character
    device with rdev 0); ``mtime_ns`` may be negative (before 1970).
    """

    ino: int
    mode: int
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    size: int = 0
    mtime_ns: int = 0

    @property
    def blocks(self) -> int:
        """512-byte blocks, as ``du`` expects."""
        return (self.size + 511) // 512


@dataclass(frozen=True)
class StatFs:
    """What ``statfs`` shows; a read-only layer reports its own size."""

    blocks: int = 0
    files: int = 0
    bsize: int = 4096
    namelen: int = 255


class Tree(Protocol):
    """A read-only, inode-numbered file tree."""

    def lookup(self, parent: int, name: bytes) -> Attr | None:
        """The child ``name`` of directory ``parent``; None for ENOENT."""
        ...

    def getattr(self, ino: int) -> Attr:
        """Attributes of an inode the kernel knows (raise FuseError(ENOENT) otherwise)."""
        ...

    def readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        """Children of a directory, without ``.`` and ``..``, in a stable order."""
        ...

    def readlink(self, ino: int) -> bytes:
        """Target of a symlink."""
        ...

    def getxattr(self, ino: int, name: bytes) -> bytes | None:
        """Value of one extended attribute; None for ENODATA."""
        ...

    def listxattr(self, ino: int) -> list[bytes]:
        """Names of the inode's extended attributes."""
        ...

    def read(self, ino: int, offset: int, size: int) -> bytes:
        """File content ``[offset, offset+size)`` (short only at end of file). May block."""
        ...

    def backing_path(self, ino: int) -> str | None:
        """A local file holding the complete content of ``ino``, for FUSE passthrough; None to serve reads."""
        ...

    def statfs(self) -> StatFs:
        """Filesystem totals."""
        ...


@runtime_checkable
class WriteObserver(Protocol):
    """A tree that learns of refused creates and removals (``op`` is ``CREATE``, ``MKNOD``, ``MKDIR``,
    ``RMDIR`` or ``UNLINK``; ``name`` an entry of directory ``parent``) and picks the errno answered.
    Served only by a mount made with ``readonly=False``; nothing is ever written."""

    def refuse_write(self, op: str, parent: int, name: bytes) -> int:
        """The errno to answer (e.g. ENOENT for "noted, no such file")."""
        ...


@runtime_checkable
class BackingAware(Protocol):
    """A tree told when the kernel holds or lets go of passthrough backing files: it holds one while
    its id is registered, deleted or not, so its blocks stay allocated (the chunk cache counts them)."""

    def backing_adopted(self, inos: Collection[int]) -> None:
        """A previous server registered backing files for these inodes on the connection served now."""
        ...

    def backing_closed(self, ino: int) -> None:
        """The id of ``ino``'s backing file was unregistered: the kernel holds the file no more."""
        ...


@runtime_checkable
class ExecAware(Protocol):
    """A tree told which reads are the kernel's for a program being executed: the READ's file flags hold
    ``FMODE_EXEC`` (what execve opens, as 6.18 sends it); a library the loader opens, ``cat`` or
    ``file`` of the same file have none."""

    def read_exec(self, ino: int, offset: int, size: int) -> bytes:
        """``read`` of a file being executed."""
        ...


@runtime_checkable
class XattrAware(Protocol):
    """A tree that can say it has no extended attribute at all (any inode, ever). The session then
    answers GETXATTR with ENOSYS, which the kernel remembers for the whole connection (this mount):
    it answers EOPNOTSUPP itself from then on, so ``ls -l`` of a huge directory costs no round trip
    per file (it asks two per file). LISTXATTR still answers (an empty list, as an extracted layer
    gives). A tree must say False only if it never has one: the answer cannot be taken back."""

    def has_xattrs(self) -> bool:
        """Whether any inode has an extended attribute (including ones the tree adds, e.g. opaque)."""
        ...


@runtime_checkable
class MetadataInMemory(Protocol):
    """A tree whose metadata calls (``lookup``, ``getattr``, ``readdir``, ``readlink``, ``getxattr``,
    ``listxattr``, ``statfs``) never wait: no I/O, no lock held for long. The session then answers
    those requests on the thread reading ``/dev/fuse`` (``fuse.workers``), with no hand-over: a walk or
    a warm open costs no thread wake-up in the server. A tree whose lookup may mount, fetch or wait
    (the additional layer store's) must not say True."""

    def metadata_in_memory(self) -> bool:
        """Whether the metadata calls never wait (fixed for the tree's life)."""
        ...
