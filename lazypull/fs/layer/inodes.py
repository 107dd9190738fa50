"""The inode table of one layer, made from its reader's tree: what ``stat``, ``lookup`` and ``readdir`` show.

The tree itself (names, implied directories, hardlink targets, link counts, what the entry rules let in)
is the strict ``LayerReader``'s, the one place it is built; this module numbers its inodes, makes their
attributes and applies the overlayfs conventions, as stargz-snapshotter's FUSE layer does: a ``.wh.NAME``
entry becomes a character device 0/0 named NAME (unless a real NAME exists in the same directory), an
opaque marker ``.wh..wh..opq`` is hidden and its directory reports ``trusted.overlay.opaque=y``, and the
landmark files in the root are hidden. Hardlinks share their target's inode. overlayfs's own xattrs and
aufs metadata never reach it (the strict reader leaves them out, as extraction does).
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable
from datetime import datetime

from lazypull.errors import MountError
from lazypull.format import entryrules
from lazypull.format.landmarks import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from lazypull.format.reader import LayerReader
from lazypull.format.toc import TOCEntry
from lazypull.fs.fuse.tree import ROOT_INODE, Attr

WHITEOUT_PREFIX = entryrules.WHITEOUT_PREFIX.encode()
LANDMARKS = (PREFETCH_LANDMARK.encode(), NO_PREFETCH_LANDMARK.encode())
OPAQUE_XATTR = b"trusted.overlay.opaque"

_NO_XATTRS: dict[bytes, bytes] = {}
_TYPE_BITS = {
    "dir": stat.S_IFDIR, "reg": stat.S_IFREG, "symlink": stat.S_IFLNK, "char": stat.S_IFCHR,
    "block": stat.S_IFBLK, "fifo": stat.S_IFIFO,
}


class Node:
    """One inode: its attributes, and for directories the children by name.

    The ``attr`` of a regular file, directory or symlink without xattrs is built from its TOC entry when
    first asked for (most of a layer's inodes are never looked at, and ``Attr`` is costly to make).
    """

    __slots__ = ("_attr", "_ino", "_nlink", "_src", "children", "entry", "link", "path", "xattrs")

    _src: TOCEntry | None               # the TOC entry ``attr`` is made from, while it is not made

    def __init__(self, attr: Attr, path: str, entry: TOCEntry | None = None, link: bytes = b"",
                 xattrs: dict[bytes, bytes] | None = None, children: dict[bytes, int] | None = None) -> None:
        self._attr: Attr | None = attr
        self.path = path                # first name it was found under (for messages)
        self.entry = entry              # the TOCEntry holding its content (regular files)
        self.link = link
        self.xattrs: dict[bytes, bytes] = {} if xattrs is None else xattrs
        self.children = children
        self._ino = 0
        self._nlink = 1
        self._src = None

    @property
    def attr(self) -> Attr:
        attr = self._attr
        if attr is None:
            e = self._src
            assert e is not None
            kind = e.type
            attr = self._attr = Attr(ino=self._ino, mode=_TYPE_BITS[kind] | (e.mode & 0o7777),
                                     nlink=self._nlink, uid=e.uid, gid=e.gid,
                                     size=e.size if kind == "reg" else len(self.link), mtime_ns=_mtime_ns(e))
        return attr

    def _one_link_less(self) -> None:
        """A subdirectory of this directory is not shown (the overlayfs conventions took it)."""
        attr = self._attr
        if attr is None:
            self._nlink -= 1
        else:
            self._attr = _replace(attr, nlink=attr.nlink - 1)

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    def __repr__(self) -> str:
        return f"Node(path={self.path!r}, attr={self.attr!r}, children={self.children!r})"


class _RegularNode(Node):
    """A regular file without xattrs whose ``attr`` is made from ``entry`` on first use (the common
    case: a constructor of its own, as the general one costs twice as much)."""

    __slots__ = ()

    def __init__(self, ino: int, path: str, entry: TOCEntry) -> None:     # sets every slot: no super()
        self._attr = None
        self._ino = ino
        self._nlink = entry.num_link    # its names: the reader counted the hardlinks to it
        self._src = entry
        self.path = path
        self.entry = entry
        self.link = b""
        self.xattrs = _NO_XATTRS    # shared (never changed for a regular file): 64 bytes an inode less
        self.children = None


class _LazyNode(Node):
    """A directory or symlink without xattrs whose ``attr`` is made from ``src`` on first use."""

    __slots__ = ()

    def __init__(self, ino: int, path: str, src: TOCEntry, link: bytes, children: dict[bytes, int] | None,
                 nlink: int) -> None:   # sets every slot: no super()
        self._attr = None
        self._ino = ino
        self._nlink = nlink
        self._src = src
        self.path = path
        self.entry = None
        self.link = link
        self.xattrs = {}
        self.children = children


def _mtime_ns(entry: TOCEntry, cache: dict[datetime, int] | None = None) -> int:
    """Whole seconds of ``entry.modtime`` in ns; ``cache`` maps modtimes already converted (a layer has
    few distinct ones, and ``datetime.timestamp`` is the costly part)."""
    modtime = entry.modtime
    if modtime is None:
        return 0
    if cache is None:
        return int(modtime.timestamp()) * 1_000_000_000
    ns = cache.get(modtime)
    if ns is None:
        ns = cache[modtime] = int(modtime.timestamp()) * 1_000_000_000
    return ns


def _attr_for(entry: TOCEntry, ino: int, mtimes: dict[datetime, int], nlink: int) -> Attr:
    kind = entry.type
    rdev = 0
    if kind in ("char", "block"):
        rdev = os.makedev(entry.dev_major, entry.dev_minor)
    size = entry.size if kind == "reg" else len(entry.link_name.encode()) if kind == "symlink" else 0
    return Attr(ino=ino, mode=_TYPE_BITS[kind] | (entry.mode & 0o7777), nlink=nlink, uid=entry.uid,
                gid=entry.gid, rdev=rdev, size=size, mtime_ns=_mtime_ns(entry, mtimes))


class InodeTable:
    """Inodes numbered from 1 (the root) in the reader's order (``LayerReader.entries``)."""

    def __init__(self, reader: LayerReader) -> None:
        """The tree of a strict ``reader`` (the mount's): names, implied directories, hardlink targets,
        link counts and the entry rules are the reader's; this adds inode numbers, attributes and the
        overlayfs conventions."""
        if not reader.strict:
            raise ValueError("an inode table shows a strict reader's tree (the entry rules applied)")
        nodes: dict[int, Node] = {}
        self.nodes = nodes
        ino_of: dict[str, int] = {}     # name of an entry of the tree (not a hardlink) -> its inode
        mtimes: dict[datetime, int] = {}
        next_ino: int = ROOT_INODE
        regular = _RegularNode
        lazy = _LazyNode
        for entry in reader.entries():  # hot loop (one pass per entry): root first
            kind = entry.type
            if kind == "hardlink":
                continue                # its target's inode, under another name (``directories``)
            ino = next_ino
            next_ino += 1
            name = entry.name
            ino_of[name] = ino
            xattrs = entry.xattrs
            if not xattrs:              # the common cases: attr made on first use
                if kind == "reg":
                    nodes[ino] = regular(ino, name, entry)
                    continue
                if kind == "dir":
                    nodes[ino] = lazy(ino, name, entry, b"", {}, reader.link_count(entry))
                    continue
                if kind == "symlink":
                    nodes[ino] = lazy(ino, name, entry, entry.link_name.encode(), None, entry.num_link)
                    continue
            nodes[ino] = Node(_attr_for(entry, ino, mtimes, reader.link_count(entry)), name,
                              entry if kind == "reg" else None,
                              entry.link_name.encode() if kind == "symlink" else b"", _node_xattrs(xattrs),
                              {} if kind == "dir" else None)
        self._next_ino = next_ino
        for directory, kids in reader.directories():
            children = nodes[ino_of[directory.name]].children
            assert children is not None
            for base, child in kids.items():
                children[base.encode("utf-8", "surrogateescape")] = ino_of[child.name]
        self._apply_overlay_conventions()

    def _hide(self, node: Node, name: bytes) -> Node:
        """Take child ``name`` out of directory ``node`` (which then counts one subdirectory less if it
        was one); the child's node."""
        assert node.children is not None
        child = self.nodes[node.children.pop(name)]
        if child.is_dir:
            node._one_link_less()
        return child

    def _apply_overlay_conventions(self) -> None:
        root = self.nodes[ROOT_INODE]
        assert root.children is not None
        for landmark in LANDMARKS:
            if landmark in root.children:
                self._hide(root, landmark)
        for node in list(self.nodes.values()):
            if node.children is None:
                continue
            for name in sorted(n for n in node.children if n[:4] == WHITEOUT_PREFIX):
                source = self._hide(node, name)
                try:
                    kind = entryrules.whiteout_kind(name.decode("utf-8", "surrogateescape"))
                except entryrules.UnsafeEntryError as err:     # (a strict reader refused it already)
                    raise MountError(f"{source.path!r}: {err}") from err
                if kind == "opaque":
                    node.xattrs = {**node.xattrs, OPAQUE_XATTR: b"y"}   # (a node may share an empty dict)
                    continue
                if kind == "meta":
                    continue            # aufs metadata: not shown (a strict reader left it out already)
                target = name[len(WHITEOUT_PREFIX):]
                if target in node.children:
                    continue
                ino = self._next_ino
                self._next_ino += 1
                attr = Attr(ino=ino, mode=stat.S_IFCHR, nlink=1, uid=source.attr.uid, gid=source.attr.gid,
                            rdev=0, size=0, mtime_ns=source.attr.mtime_ns)
                path = posixpath.join(node.path, target.decode("utf-8", "surrogateescape"))
                self.nodes[ino] = Node(attr, path)
                node.children[target] = ino

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def regular_files(self) -> Iterable[Node]:
        """Every regular file with content, once per inode."""
        return (n for n in self.nodes.values() if n.entry is not None)

    def total_size(self) -> int:
        """The sum of the sizes of the regular files (each inode once), without making their ``attr``."""
        return sum(n.entry.size for n in self.nodes.values() if n.entry is not None)


def _node_xattrs(xattrs: dict[str, bytes] | None) -> dict[bytes, bytes]:
    """A TOC entry's xattrs as the inode shows them: overlayfs's own left out (entryrules)."""
    if not xattrs:
        return {}
    return {k.encode("utf-8", "surrogateescape"): bytes(v) for k, v in xattrs.items()
            if not entryrules.is_overlay_xattr(k)}


def _replace(attr: Attr, *, nlink: int) -> Attr:
    """``attr`` with another link count (direct construction: dataclasses.replace is much slower)."""
    return Attr(ino=attr.ino, mode=attr.mode, nlink=nlink, uid=attr.uid, gid=attr.gid, rdev=attr.rdev,
                size=attr.size, mtime_ns=attr.mtime_ns)
