"""The inode table of a strict reader's tree: inode numbers, attributes, overlay conventions. The tree
itself (names, implied directories, hardlink targets, link counts, the entry rules) is the reader's:
these tests check the table shows it as it is, with the overlay conventions on top."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import pytest

from lazypull.format import FileSource, open_layer
from lazypull.fs.fuse.tree import Attr
from lazypull.fs.layer.inodes import InodeTable
from tests.security.tockit import toc_blob

WHEN = "2021-02-03T04:05:06Z"
WHEN_NS = 1612325106 * 1_000_000_000


def _e(name: str, kind: str = "reg", **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": kind, **fields}


class Table:
    """An inode table from TOC entries (JSON fields), opened as a mount opens a layer (strict)."""

    def __init__(self, tmp: Path, *entries: dict[str, Any]) -> None:
        layer = toc_blob(tmp, list(entries), name=f"t{len(list(tmp.iterdir()))}")
        self.table = InodeTable(open_layer(FileSource(layer.path), strict=True))
        self.nodes = self.table.nodes

    def ino(self, path: str) -> int:
        ino = 1
        for part in path.split("/"):
            children = self.nodes[ino].children
            assert children is not None, path
            ino = children[part.encode()]
        return ino

    def attr(self, path: str) -> Attr:
        return self.nodes[self.ino(path)].attr


def test_implied_parents_duplicates_and_names(tmp_path: Path) -> None:
    t = Table(tmp_path, _e("./a/b/c.txt", size=3, mode=0o600), _e("a/b/c.txt", size=5, mode=0o640),
              _e("x/", "dir", mode=0o700, uid=5))
    assert t.attr("a/b/c.txt").size == 5 and stat.S_IMODE(t.attr("a/b/c.txt").mode) == 0o640, "later wins"
    implied = t.attr("a/b")
    assert stat.S_ISDIR(implied.mode) and stat.S_IMODE(implied.mode) == 0o755 and implied.nlink == 2
    assert t.attr("a").nlink == 3 and t.attr("x").uid == 5
    assert t.nodes[1].attr.nlink == 4     # ., .., a, x
    assert len({n.attr.ino for n in t.nodes.values()}) == len(t.nodes)
    # inodes in the reader's order: root, the TOC's names (a duplicate keeps the first place), implied dirs
    assert [t.ino(p) for p in ("a/b/c.txt", "x", "a", "a/b")] == [2, 3, 4, 5]


def test_root_entry_sets_root_metadata_and_landmarks_hidden(tmp_path: Path) -> None:
    t = Table(tmp_path, _e("./", "dir", mode=0o711, uid=3), _e(".prefetch.landmark", size=1),
              _e(".no.prefetch.landmark/", "dir"), _e("sub/.prefetch.landmark", size=1))
    root = t.nodes[1]
    assert stat.S_IMODE(root.attr.mode) == 0o711 and root.attr.uid == 3
    assert set(root.children or {}) == {b"sub"}
    assert root.attr.nlink == 3, "., .. and sub (a listed root counts '..' too; a hidden dir does not)"
    assert t.ino("sub/.prefetch.landmark"), "only the root's landmarks are special"


def test_whiteouts_and_opaque_markers(tmp_path: Path) -> None:
    t = Table(tmp_path, _e("d/", "dir", mode=0o755), _e("d/.wh.gone", uid=7), _e("d/.wh.kept"),
              _e("d/kept", size=1), _e("d/.wh..wh..opq"), _e(".wh.top"), _e("d/e/", "dir"),
              _e("d/.wh.olddir/", "dir"))
    d = t.nodes[t.ino("d")]
    assert set(d.children or {}) == {b"gone", b"kept", b"e", b"olddir"}
    gone = t.attr("d/gone")
    assert stat.S_ISCHR(gone.mode) and gone.rdev == 0 and gone.uid == 7
    assert stat.S_ISREG(t.attr("d/kept").mode) and stat.S_ISCHR(t.attr("d/olddir").mode)
    assert d.xattrs == {b"trusted.overlay.opaque": b"y"}
    assert d.attr.nlink == 3, "2 + e (the whiteout directory is a character device now)"
    assert stat.S_ISCHR(t.attr("top").mode)


def test_hardlink_chains_share_the_inode(tmp_path: Path) -> None:
    t = Table(tmp_path, _e("f", size=4, mode=0o4755), _e("l1", "hardlink", linkName="./f"),
              _e("l2", "hardlink", linkName="l1"))
    assert t.ino("l1") == t.ino("l2") == t.ino("f") == 2
    assert t.attr("f").nlink == 3 and stat.S_IMODE(t.attr("f").mode) == 0o4755
    assert len(t.nodes) == 2 and len(list(t.table.regular_files())) == 1


def test_regular_files_attr_made_on_first_use_equals_the_toc(tmp_path: Path) -> None:
    t = Table(tmp_path, _e("d/", "dir"), _e("d/f", size=7, mode=0o640, uid=3, gid=4, modtime=WHEN),
              _e("d/x", size=2, xattrs={"user.k": base64.b64encode(b"v").decode()}), _e("d/f", size=9),
              _e("h", "hardlink", linkName="d/x"))
    f = t.attr("d/f")
    assert f == Attr(ino=f.ino, mode=stat.S_IFREG, nlink=1, size=9), "the later duplicate wins"
    x = t.nodes[t.ino("d/x")]
    assert x.xattrs == {b"user.k": b"v"} and x.attr.nlink == 2 and x.attr.size == 2
    assert t.table.total_size() == sum(n.attr.size for n in t.table.regular_files()) == 11
    g = Table(tmp_path, _e("g", size=1, modtime="2021-02-03T04:05:06.7Z"))
    assert g.attr("g").mtime_ns == WHEN_NS


def test_directory_and_symlink_attrs_made_on_first_use(tmp_path: Path) -> None:
    t = Table(tmp_path, _e("d/", "dir", mode=0o750, uid=2, modtime=WHEN), _e("d/e/", "dir"), _e("d/f/g"),
              _e("d/l", "symlink", linkName="../é", mode=0o777, gid=6, modtime=WHEN),
              _e("d/h", "hardlink", linkName="d/l"))
    d, link = t.nodes[t.ino("d")], t.nodes[t.ino("d/l")]
    assert d.attr == Attr(ino=d.attr.ino, mode=stat.S_IFDIR | 0o750, nlink=4, uid=2, mtime_ns=WHEN_NS), \
        "2 + e + the implied f"
    assert link.link == "../é".encode() and t.ino("d/h") == link.attr.ino
    assert link.attr == Attr(ino=link.attr.ino, mode=stat.S_IFLNK | 0o777, nlink=2, gid=6,
                             size=len(link.link), mtime_ns=WHEN_NS)


def test_xattrs_shown_without_overlayfs_own(tmp_path: Path) -> None:
    """The strict reader leaves overlayfs's own xattrs out; an entry left with none is an ordinary one."""
    b64 = base64.b64encode(b"/etc").decode()
    t = Table(tmp_path, _e("d/", "dir", xattrs={"trusted.overlay.redirect": b64, "user.a": b64}),
              _e("d/f", size=1, xattrs={"trusted.overlay.metacopy": ""}),
              _e("c", "char", devMajor=1, devMinor=3, xattrs={"security.x": b64}))
    assert t.nodes[t.ino("d")].xattrs == {b"user.a": b"/etc"}
    assert t.nodes[t.ino("d/f")].xattrs == {} and t.attr("d/f").size == 1
    c = t.nodes[t.ino("c")]
    assert c.xattrs == {b"security.x": b"/etc"} and c.attr.rdev == 0x103 and stat.S_ISCHR(c.attr.mode)


def test_only_a_strict_readers_tree_is_shown(tmp_path: Path) -> None:
    layer = toc_blob(tmp_path, [_e("f")])
    with pytest.raises(ValueError, match="strict reader"):
        InodeTable(open_layer(FileSource(layer.path)))
