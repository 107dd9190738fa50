"""The inode table of one layer, built from its TOC: what ``stat``, ``lookup`` and ``readdir`` show.

Overlayfs conventions are applied here, as stargz-snapshotter's FUSE layer does: a ``.wh.NAME`` entry
becomes a character device 0/0 named NAME (unless a real NAME exists in the same directory), an opaque
marker ``.wh..wh..opq`` is hidden and its directory reports ``trusted.overlay.opaque=y``, and the
landmark files in the root are hidden. Hardlinks share their target's inode. What a layer may hold is
``lazypull.format.entryrules``'s to say, as for extraction: overlayfs's own xattrs from the TOC are
dropped (only the opaque marker sets one), and so is aufs metadata (``.wh..wh.*``).
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable
from typing import Any

from lazypull.errors import MountError
from lazypull.format import entryrules
from lazypull.fs.fuse.tree import ROOT_INODE, Attr

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
LANDMARKS = (b".prefetch.landmark", b".no.prefetch.landmark")
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

    def __init__(self, attr: Attr | None, path: str, entry: Any = None, link: bytes = b"",
                 xattrs: dict[bytes, bytes] | None = None, children: dict[bytes, int] | None = None) -> None:
        self._attr = attr
        self.path = path                # first name it was found under (for messages)
        self.entry = entry              # the TOCEntry holding its content (regular files)
        self.link = link
        self.xattrs: dict[bytes, bytes] = {} if xattrs is None else xattrs
        self.children = children
        self._ino = 0
        self._nlink = 1
        self._src: Any = None           # the TOC entry ``attr`` is made from, while it is not made

    @property
    def attr(self) -> Attr:
        attr = self._attr
        if attr is None:
            e = self._src
            kind = e.type
            attr = self._attr = Attr(ino=self._ino, mode=_TYPE_BITS[kind] | (e.mode & 0o7777),
                                     nlink=self._nlink, uid=e.uid, gid=e.gid,
                                     size=e.size if kind == "reg" else len(self.link), mtime_ns=_mtime_ns(e))
        return attr

    @attr.setter
    def attr(self, value: Attr) -> None:
        self._attr = value

    def _set_nlink(self, nlink: int) -> None:
        if self._attr is None:
            self._nlink = nlink
        elif self._attr.nlink != nlink:
            self._attr = _replace(self._attr, nlink=nlink)

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    def __repr__(self) -> str:
        return f"Node(path={self.path!r}, attr={self.attr!r}, children={self.children!r})"


class _RegularNode(Node):
    """A regular file without xattrs whose ``attr`` is made from ``entry`` on first use (the common
    case: a constructor of its own, as the general one costs twice as much)."""

    __slots__ = ()

    def __init__(self, ino: int, path: str, entry: Any) -> None:     # sets every slot: no super()
        self._attr = None
        self._ino = ino
        self._nlink = 1
        self._src = entry
        self.path = path
        self.entry = entry
        self.link = b""
        self.xattrs = _NO_XATTRS    # shared (never changed for a regular file): 64 bytes an inode less
        self.children = None


class _LazyNode(Node):
    """A directory or symlink without xattrs whose ``attr`` is made from ``src`` on first use."""

    __slots__ = ()

    def __init__(self, ino: int, path: str, src: Any, link: bytes, children: dict[bytes, int] | None,
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


def normalise(name: str) -> str:
    """TOC name -> path relative to the root, as readers normalise it (root is ``""``)."""
    if name and name[0] not in "./" and name[-1] != "/" and "//" not in name and "/." not in name:
        return name     # already normal (what LayerReader.entries() yields): skip normpath
    return posixpath.normpath("/" + name).lstrip("/") if name not in ("", ".", "./", "/") else ""


def _mtime_ns(entry: Any, cache: dict[Any, int] | None = None) -> int:
    """Whole seconds of ``entry.modtime`` in ns; ``cache`` maps modtimes already converted (a layer has
    few distinct ones, and ``datetime.timestamp`` is the costly part)."""
    modtime = getattr(entry, "modtime", None)
    if modtime is None:
        return 0
    if cache is None:
        return int(modtime.timestamp()) * 1_000_000_000
    ns = cache.get(modtime)
    if ns is None:
        ns = cache[modtime] = int(modtime.timestamp()) * 1_000_000_000
    return ns


def _attr_for(entry: Any, ino: int, mtimes: dict[Any, int] | None = None, nlink: int = 1) -> Attr:
    kind = entry.type
    if kind not in _TYPE_BITS:
        raise MountError(f"TOC entry {entry.name!r} has unsupported type {kind!r}")
    rdev = 0
    if kind in ("char", "block"):
        rdev = os.makedev(entry.dev_major, entry.dev_minor)
    size = entry.size if kind == "reg" else len(entry.link_name.encode()) if kind == "symlink" else 0
    return Attr(ino=ino, mode=_TYPE_BITS[kind] | (entry.mode & 0o7777), nlink=nlink, uid=entry.uid,
                gid=entry.gid, rdev=rdev, size=size, mtime_ns=_mtime_ns(entry, mtimes))


class InodeTable:
    """Inodes numbered from 1 (the root) in TOC order."""

    def __init__(self, entries: Iterable[Any]) -> None:
        self.nodes: dict[int, Node] = {}
        root_attr = Attr(ino=ROOT_INODE, mode=stat.S_IFDIR | 0o755, nlink=2)
        self.nodes[ROOT_INODE] = Node(root_attr, "", children={})
        by_name: dict[str, int] = {"": ROOT_INODE}
        hardlinks: list[tuple[str, str]] = []
        next_ino = ROOT_INODE + 1
        mtimes: dict[Any, int] = {}
        nodes = self.nodes
        type_bits = _TYPE_BITS
        regular = _RegularNode
        for entry in entries:           # hot loop (one pass per TOC entry): _attr_for inlined
            kind = entry.type
            if kind == "chunk":
                continue
            name = entry.name
            if not (name and name[0] not in "./" and name[-1] != "/" and "//" not in name
                    and "/." not in name):
                name = normalise(name)
            if kind == "reg" and name and not entry.xattrs:    # the common case: attr made on first use
                ino = by_name.get(name)
                if ino is None:         # a later duplicate replaces the earlier entry in place
                    ino = next_ino
                    next_ino += 1
                    by_name[name] = ino
                nodes[ino] = regular(ino, name, entry)
                continue
            if kind == "hardlink":
                hardlinks.append((name, normalise(entry.link_name)))
                continue
            if name == "":
                if kind == "dir":
                    node = nodes[ROOT_INODE]
                    node.attr = _attr_for(entry, ROOT_INODE, mtimes, nlink=2)
                    node.xattrs = _node_xattrs(entry.xattrs)
                continue
            bits = type_bits.get(kind)
            if bits is None:
                raise MountError(f"TOC entry {entry.name!r} has unsupported type {kind!r}")
            ino = by_name.get(name)
            if ino is None:             # a later duplicate replaces the earlier entry in place
                ino = next_ino
                next_ino += 1
                by_name[name] = ino
            xattrs = entry.xattrs
            if not xattrs:              # directories and symlinks: attr made on first use too
                if kind == "dir":       # nlink 2 (+ subdirectories, counted below)
                    old = nodes.get(ino)
                    nodes[ino] = _LazyNode(ino, name, entry, b"",
                                           old.children if old is not None and old.children is not None
                                           else {}, 2)
                    continue
                if kind == "symlink":
                    nodes[ino] = _LazyNode(ino, name, entry, entry.link_name.encode(), None, 1)
                    continue
            modtime = entry.modtime
            mtime_ns: int | None = mtimes.get(modtime) if modtime is not None else 0
            if mtime_ns is None:        # a modtime not seen yet (a layer has few distinct ones)
                mtime_ns = mtimes[modtime] = int(modtime.timestamp()) * 1_000_000_000
            node_xattrs = _node_xattrs(xattrs)
            if kind == "reg":
                node = Node(Attr(ino=ino, mode=bits | (entry.mode & 0o7777), nlink=1, uid=entry.uid,
                                 gid=entry.gid, size=entry.size, mtime_ns=mtime_ns),
                            name, entry, b"", node_xattrs)
            elif kind == "dir":         # nlink 2 (+ subdirectories, counted below)
                old = nodes.get(ino)
                node = Node(Attr(ino=ino, mode=bits | (entry.mode & 0o7777), nlink=2, uid=entry.uid,
                                 gid=entry.gid, mtime_ns=mtime_ns),
                            name, None, b"", node_xattrs,
                            old.children if old is not None and old.children is not None else {})
            elif kind == "symlink":
                link = entry.link_name.encode()
                node = Node(Attr(ino=ino, mode=bits | (entry.mode & 0o7777), nlink=1, uid=entry.uid,
                                 gid=entry.gid, size=len(link), mtime_ns=mtime_ns),
                            name, None, link, node_xattrs)
            else:
                node = Node(_attr_for(entry, ino, mtimes), name, None, b"", node_xattrs)
            nodes[ino] = node
        self._next_ino = next_ino
        links: dict[int, int] = {}
        link_targets = dict(hardlinks)
        for name, target in hardlinks:
            seen = {name}
            while target not in by_name:
                nxt = link_targets.get(target)
                if nxt is None or target in seen:
                    raise MountError(f"hardlink {name!r} points to {target!r}, which is not in the layer")
                seen.add(target)
                target = nxt
            ino = by_name[target]
            if self.nodes[ino].is_dir:
                raise MountError(f"hardlink {name!r} points to directory {target!r}")
            by_name[name] = ino
            links[ino] = links.get(ino, 1) + 1
        last_parent: str | None = None
        children: dict[bytes, int] | None = None
        for name, ino in list(by_name.items()):     # names in TOC order (hardlinks after), root first
            if not name:
                continue
            parent_name, _, base = name.rpartition("/")
            if parent_name != last_parent:          # a directory's entries mostly come together
                parent_ino = by_name.get(parent_name)
                children = nodes[parent_ino].children if parent_ino is not None else None
                if children is None:    # implied or not a directory: the slow path creates or refuses
                    children = nodes[self._ensure_dir(parent_name, by_name)].children
                    assert children is not None
                last_parent = parent_name
            assert children is not None
            children[base.encode("utf-8", "surrogateescape")] = ino
        for ino, count in links.items():
            self.nodes[ino]._set_nlink(count)
        self._apply_overlay_conventions()
        for node in nodes.values():
            if node.children is not None:
                node._set_nlink(2 + sum(1 for c in node.children.values() if nodes[c].children is not None))

    def _ensure_dir(self, name: str, by_name: dict[str, int]) -> int:
        """The inode of directory ``name``, creating implied parents (mode 0755) as readers do."""
        ino = by_name.get(name)
        if ino is not None:
            if not self.nodes[ino].is_dir:
                raise MountError(f"{name!r} is used as a directory but is not one")
            return ino
        parent = self._ensure_dir(posixpath.dirname(name), by_name)
        ino = self._next_ino
        self._next_ino += 1
        self.nodes[ino] = Node(Attr(ino=ino, mode=stat.S_IFDIR | 0o755, nlink=2), name, children={})
        by_name[name] = ino
        children = self.nodes[parent].children
        assert children is not None
        children[posixpath.basename(name).encode("utf-8", "surrogateescape")] = ino
        return ino

    def _apply_overlay_conventions(self) -> None:
        root = self.nodes[ROOT_INODE]
        assert root.children is not None
        for landmark in LANDMARKS:
            root.children.pop(landmark, None)
        for node in list(self.nodes.values()):
            if node.children is None:
                continue
            for name in sorted(n for n in node.children if n[:4] == WHITEOUT_PREFIX):
                source = self.nodes[node.children.pop(name)]
                try:
                    kind = entryrules.whiteout_kind(name.decode("utf-8", "surrogateescape"))
                except entryrules.UnsafeEntryError as err:
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
