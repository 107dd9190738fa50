"""The inode table built from TOC entries: overlay conventions, hardlinks, implied dirs, and clear errors
for hostile TOCs (hardlink loops, links to directories or nowhere, files used as directories)."""

from __future__ import annotations

import posixpath
import stat
from datetime import UTC, datetime

import pytest

from lazypull.errors import MountError
from lazypull.format import TOCEntry
from lazypull.fs.fuse.tree import Attr
from lazypull.fs.layer.inodes import InodeTable, normalise


def _table(*entries: TOCEntry) -> InodeTable:
    return InodeTable(entries)


def _child(table: InodeTable, path: str) -> int:
    ino = 1
    for part in path.split("/"):
        children = table.nodes[ino].children
        assert children is not None, path
        ino = children[part.encode()]
    return ino


def test_implied_parents_duplicates_and_names() -> None:
    table = _table(TOCEntry("./a/b/c.txt", "reg", size=3, mode=0o600),
                   TOCEntry("a/b/c.txt", "reg", size=5, mode=0o640),
                   TOCEntry("/x/", "dir", mode=0o700, uid=5))
    file = table.nodes[_child(table, "a/b/c.txt")]
    assert file.attr.size == 5 and stat.S_IMODE(file.attr.mode) == 0o640, "the later duplicate wins"
    implied = table.nodes[_child(table, "a/b")]
    assert stat.S_ISDIR(implied.attr.mode) and stat.S_IMODE(implied.attr.mode) == 0o755
    assert table.nodes[_child(table, "x")].attr.uid == 5
    assert table.nodes[1].attr.nlink == 4     # ., .., a, x
    assert len({n.attr.ino for n in table.nodes.values()}) == len(table.nodes)


def test_root_entry_sets_root_metadata_and_landmarks_hidden() -> None:
    table = _table(TOCEntry("./", "dir", mode=0o711, uid=3),
                   TOCEntry(".prefetch.landmark", "reg", size=1),
                   TOCEntry(".no.prefetch.landmark", "reg", size=1),
                   TOCEntry("sub/.prefetch.landmark", "reg", size=1))
    root = table.nodes[1]
    assert stat.S_IMODE(root.attr.mode) == 0o711 and root.attr.uid == 3
    assert set(root.children or {}) == {b"sub"}
    assert _child(table, "sub/.prefetch.landmark"), "only the root's landmarks are special"


def test_whiteouts_and_opaque_markers() -> None:
    table = _table(TOCEntry("d/", "dir", mode=0o755),
                   TOCEntry("d/.wh.gone", "reg", uid=7),
                   TOCEntry("d/.wh.kept", "reg"),
                   TOCEntry("d/kept", "reg", size=1),
                   TOCEntry("d/.wh..wh..opq", "reg"),
                   TOCEntry(".wh.top", "reg"))
    d = table.nodes[_child(table, "d")]
    assert set(d.children or {}) == {b"gone", b"kept"}
    gone = table.nodes[_child(table, "d/gone")]
    assert stat.S_ISCHR(gone.attr.mode) and gone.attr.rdev == 0 and gone.attr.uid == 7
    assert stat.S_ISREG(table.nodes[_child(table, "d/kept")].attr.mode)
    assert d.xattrs == {b"trusted.overlay.opaque": b"y"}
    assert stat.S_ISCHR(table.nodes[_child(table, "top")].attr.mode)


def test_hardlink_chains_share_the_inode() -> None:
    table = _table(TOCEntry("l2", "hardlink", link_name="l1"),
                   TOCEntry("l1", "hardlink", link_name="./f"),
                   TOCEntry("f", "reg", size=4, mode=0o4755))
    ino = _child(table, "f")
    assert _child(table, "l1") == _child(table, "l2") == ino
    assert table.nodes[ino].attr.nlink == 3
    assert stat.S_IMODE(table.nodes[ino].attr.mode) == 0o4755


@pytest.mark.parametrize("entries,match", [
    ([TOCEntry("a", "hardlink", link_name="b"), TOCEntry("b", "hardlink", link_name="a")],
     "not in the layer"),
    ([TOCEntry("a", "hardlink", link_name="missing")], "not in the layer"),
    ([TOCEntry("d/", "dir"), TOCEntry("a", "hardlink", link_name="d")], "points to directory"),
    ([TOCEntry("f", "reg", size=1), TOCEntry("f/g", "reg", size=1)], "used as a directory"),
    ([TOCEntry("s", "socket")], "unsupported type 'socket'"),
], ids=["link-loop", "link-nowhere", "link-to-dir", "file-as-dir", "bad-type"])
def test_hostile_tocs_are_refused(entries: list[TOCEntry], match: str) -> None:
    with pytest.raises(MountError, match=match):
        InodeTable(entries)


@pytest.mark.parametrize("name", ["a/b", "a", ".hidden", "a/.hidden", "./a/b", "/a/b", "a/b/", "a//b",
                                  "a/./b", "a/../b", "..", "../a", ".", "./", "/", "", "a/b/..", "é/ü"])
def test_normalise_fast_path_agrees_with_normpath(name: str) -> None:
    expected = posixpath.normpath("/" + name).lstrip("/") if name not in ("", ".", "./", "/") else ""
    assert normalise(name) == expected


def test_regular_files_attr_made_on_first_use_equals_the_toc() -> None:
    table = _table(TOCEntry("d/", "dir"),
                   TOCEntry("d/f", "reg", size=7, mode=0o640, uid=3, gid=4,
                            modtime=datetime(2021, 2, 3, 4, 5, 6, tzinfo=UTC)),
                   TOCEntry("d/x", "reg", size=2, xattrs={"user.k": b"v"}),
                   TOCEntry("d/f", "reg", size=9),
                   TOCEntry("h", "hardlink", link_name="d/x"))
    f = table.nodes[_child(table, "d/f")]
    assert f.attr == Attr(ino=f.attr.ino, mode=stat.S_IFREG, nlink=1, size=9), "the later duplicate wins"
    x = table.nodes[_child(table, "d/x")]
    assert x.xattrs == {b"user.k": b"v"} and x.attr.nlink == 2 and x.attr.size == 2
    assert table.total_size() == sum(n.attr.size for n in table.regular_files()) == 11
    g = _table(TOCEntry("g", "reg", size=1, modtime=datetime(2021, 2, 3, 4, 5, 6, 700000, tzinfo=UTC)))
    assert g.nodes[_child(g, "g")].attr.mtime_ns == 1612325106 * 1_000_000_000


def test_directory_and_symlink_attrs_made_on_first_use() -> None:
    when = datetime(2021, 2, 3, 4, 5, 6, tzinfo=UTC)
    table = _table(TOCEntry("d/", "dir", mode=0o750, uid=2, modtime=when),
                   TOCEntry("d/e/", "dir"), TOCEntry("d/f/g", "reg"),
                   TOCEntry("d/l", "symlink", link_name="../é", mode=0o777, gid=6, modtime=when),
                   TOCEntry("d/h", "hardlink", link_name="d/l"))
    d, link = table.nodes[_child(table, "d")], table.nodes[_child(table, "d/l")]
    assert d.attr == Attr(ino=d.attr.ino, mode=stat.S_IFDIR | 0o750, nlink=4, uid=2,
                          mtime_ns=1612325106 * 1_000_000_000), "2 + e + the implied f"
    assert link.link == "../é".encode() and _child(table, "d/h") == link.attr.ino
    assert link.attr == Attr(ino=link.attr.ino, mode=stat.S_IFLNK | 0o777, nlink=2, gid=6,
                             size=len(link.link), mtime_ns=1612325106 * 1_000_000_000)
