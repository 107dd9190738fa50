"""A dict-based, in-memory :class:`lazypull.fs.fuse.Tree` for FUSE tests (counts calls, injects delays).

Build it with paths (parents are created as directories)::

    t = MemTree()
    t.add_file("etc/passwd", b"root:x:0:0\\n", mode=0o644)
    t.add_symlink("bin", b"usr/bin")
    t.add_node("dev/null", stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3))
"""

from __future__ import annotations

import collections
import errno
import stat
import threading
import time
from dataclasses import dataclass, field, replace

from lazypull.fs.fuse import ROOT_INODE, Attr, FuseError, StatFs


@dataclass
class Node:
    attr: Attr
    data: bytes = b""
    target: bytes = b""
    children: dict[bytes, int] = field(default_factory=dict)
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    backing: str | None = None


class MemTree:
    """Inodes in a dict; thread-safe counters in ``calls``; ``read_delay`` seconds slept per read.

    ``read_gate``: while set to an unset Event, reads wait for it (``reads_waiting`` counts them), so a
    test can hold reads inside the tree and check what else proceeds, without timing anything.
    """

    def __init__(self, mtime_ns: int = 1_700_000_000_123_456_789) -> None:
        self.mtime_ns = mtime_ns
        self.nodes: dict[int, Node] = {
            ROOT_INODE: Node(Attr(ROOT_INODE, stat.S_IFDIR | 0o755, nlink=2, mtime_ns=mtime_ns))
        }
        self.calls: collections.Counter[str] = collections.Counter()
        self._calls_lock = threading.Lock()
        self.read_delay = 0.0
        self.read_gate: threading.Event | None = None
        self.reads_waiting = 0
        #: method name -> exception raised by that method (for error-path tests)
        self.fail: dict[str, BaseException] = {}
        #: False: the tree says its metadata may wait (not ``MetadataInMemory``), as the store's does
        self.in_memory = True

    # -- building ---------------------------------------------------------------------------------

    def _parent(self, path: str) -> tuple[int, bytes]:
        parts = [p for p in path.strip("/").split("/") if p]
        ino: int = ROOT_INODE
        for i, part in enumerate(parts[:-1]):
            child = self.nodes[ino].children.get(part.encode())
            ino = child if child is not None else self.add_dir("/".join(parts[: i + 1]))
        return ino, parts[-1].encode()

    def _add(self, path: str, mode: int, **kw: object) -> int:
        parent, name = self._parent(path)
        ino = max(self.nodes) + 1
        size = len(kw.get("data", b"") or kw.get("target", b""))  # type: ignore[arg-type]
        rdev = int(kw.pop("rdev", 0))  # type: ignore[call-overload]
        uid = int(kw.pop("uid", 0))  # type: ignore[call-overload]
        attr = Attr(ino, mode, nlink=2 if stat.S_ISDIR(mode) else 1, uid=uid, rdev=rdev, size=size,
                    mtime_ns=self.mtime_ns)
        self.nodes[ino] = Node(attr, **kw)  # type: ignore[arg-type]
        self.nodes[parent].children[name] = ino
        return ino

    def add_dir(self, path: str, mode: int = 0o755, xattrs: dict[bytes, bytes] | None = None) -> int:
        return self._add(path, stat.S_IFDIR | mode, xattrs=dict(xattrs or {}))

    def add_file(
        self,
        path: str,
        data: bytes,
        mode: int = 0o644,
        xattrs: dict[bytes, bytes] | None = None,
        backing: str | None = None,
    ) -> int:
        return self._add(path, stat.S_IFREG | mode, data=data, xattrs=dict(xattrs or {}), backing=backing)

    def add_symlink(self, path: str, target: bytes) -> int:
        return self._add(path, stat.S_IFLNK | 0o777, target=target)

    def add_node(self, path: str, mode: int, rdev: int = 0) -> int:
        return self._add(path, mode, rdev=rdev)

    def ino(self, path: str) -> int:
        ino: int = ROOT_INODE
        for part in (p for p in path.strip("/").split("/") if p):
            ino = self.nodes[ino].children[part.encode()]
        return ino

    # -- Tree -------------------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        with self._calls_lock:
            self.calls[name] += 1
        exc = self.fail.get(name)
        if exc is not None:
            raise exc

    def _node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise FuseError(errno.ENOENT, f"no inode {ino}")
        return node

    def lookup(self, parent: int, name: bytes) -> Attr | None:
        self._count("lookup")
        child = self._node(parent).children.get(name)
        return None if child is None else self.nodes[child].attr

    def getattr(self, ino: int) -> Attr:
        self._count("getattr")
        return self._node(ino).attr

    def readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        self._count("readdir")
        node = self._node(ino)
        if not stat.S_ISDIR(node.attr.mode):
            raise FuseError(errno.ENOTDIR)
        return [(name, self.nodes[child].attr) for name, child in sorted(node.children.items())]

    def readlink(self, ino: int) -> bytes:
        self._count("readlink")
        node = self._node(ino)
        if not stat.S_ISLNK(node.attr.mode):
            raise FuseError(errno.EINVAL)
        return node.target

    def getxattr(self, ino: int, name: bytes) -> bytes | None:
        self._count("getxattr")
        return self._node(ino).xattrs.get(name)

    def listxattr(self, ino: int) -> list[bytes]:
        self._count("listxattr")
        return sorted(self._node(ino).xattrs)

    def read(self, ino: int, offset: int, size: int) -> bytes:
        self._count("read")
        if self.read_delay:
            time.sleep(self.read_delay)
        gate = self.read_gate
        if gate is not None:
            with self._calls_lock:
                self.reads_waiting += 1
            try:
                gate.wait()
            finally:
                with self._calls_lock:
                    self.reads_waiting -= 1
        return self._node(ino).data[offset : offset + size]

    def metadata_in_memory(self) -> bool:
        return self.in_memory

    def backing_path(self, ino: int) -> str | None:
        self._count("backing_path")
        return self._node(ino).backing

    def statfs(self) -> StatFs:
        self._count("statfs")
        total = sum(n.attr.size for n in self.nodes.values())
        return StatFs(blocks=(total + 4095) // 4096, files=len(self.nodes))

    def set_attr(self, ino: int, **changes: int) -> None:
        """Change an inode's attributes (tests of odd values)."""
        self.nodes[ino].attr = replace(self.nodes[ino].attr, **changes)
