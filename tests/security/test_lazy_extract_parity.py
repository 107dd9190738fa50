"""One layer, one verdict (issue 9, findings 10 and 11): each layer below is read the lazy way (its TOC
opened as a mount opens it, and the inode table the FUSE server shows) and the full way (extracted as a
non-lazy pull does). Both refuse it with a one-line error naming the problem, or both accept it and show
the same tree: the same names, types and xattrs (overlayfs's own xattrs dropped by both)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lazypull.errors import LazypullError
from lazypull.fs.config import FsConfig
from lazypull.fs.fuse.tree import ROOT_INODE
from lazypull.fs.layer.inodes import InodeTable
from lazypull.fs.layer.toc import open_toc
from lazypull.fs.remote import FileRangeSource, RecordingSource, RemoteBlob
from lazypull.fs.stats import LayerStats
from lazypull.runtime.extract import LayerExtractError, extract_layer
from tests.security.tockit import Layer, Member, metadata_blob

REFUSED: dict[str, tuple[list[Member], str]] = {
    "dotdot": ([Member("../evil")], "'..'"),
    "dotdot-inside": ([Member("a/../../evil")], "'..'"),
    "absolute": ([Member("/abs/evil")], "absolute"),
    "nul-in-name": ([Member("a\x00b")], "NUL"),
    "long-component": ([Member("x" * 256)], "256 bytes"),
    "long-path": ([Member("d/" * 2100 + "f")], "bytes long"),
    "whiteout-of-nothing": ([Member(".wh.")], "malformed whiteout"),
    "whiteout-of-dot": ([Member("d/.wh..")], "malformed whiteout"),
    "whiteout-of-dotdot": ([Member("d/.wh...")], "malformed whiteout"),
    "whiteout-as-directory": ([Member(".wh.x/y")], "used as a directory"),
    "hardlink-dotdot": ([Member("h", "hardlink", link="../etc/passwd")], "'..'"),
    "hardlink-absolute": ([Member("h", "hardlink", link="/etc/passwd")], "absolute"),
    "hardlink-to-directory": ([Member("d/", "dir", mode=0o755), Member("h", "hardlink", link="d")],
                              "hardlink target 'd' is a directory"),
    "hardlink-forward": ([Member("h", "hardlink", link="f"), Member("f")],
                         "hardlink target 'f' is not in the layer (yet)"),
    "symlink-target-nul": ([Member("s", "symlink", link="a\x00b")], "NUL"),
    "uid-too-big": ([Member("f", uid=2 ** 40)], "uid '1099511627776' is out of range"),
    "uid-minus-one": ([Member("f", uid=-1)], "uid '-1' is out of range"),
    "xattr-value-too-big": ([Member("f", xattrs={"trusted.big": b"v" * 70000})], "65536"),
}

ACCEPTED: dict[str, list[Member]] = {
    "overlay-xattrs": [
        Member("d/", "dir", mode=0o755, xattrs={"trusted.overlay.redirect": b"/etc",
                                                "trusted.overlay.opaque": b"y", "trusted.kept": b"1"}),
        Member("d/f", xattrs={"trusted.overlay.metacopy": b"", "user.overlay.redirect": b"/etc"}),
    ],
    "aufs-metadata": [Member(".wh..wh.plnk/", "dir", mode=0o755), Member(".wh..wh.plnk/123"),
                      Member("d/", "dir", mode=0o755), Member("d/.wh..wh.aufs"), Member("d/f")],
    "whiteouts-and-opaque": [Member("d/", "dir", mode=0o755), Member("d/.wh..wh..opq"),
                             Member("d/kept"), Member("e/.wh.gone")],
    "odd-spellings": [Member("./a/", "dir", mode=0o755), Member("./a//b"), Member("c/./d"), Member("..e"),
                      Member("f..")],
}


def lazy_tree(tmp: Path, layer: Layer) -> InodeTable:
    """What a lazy mount of the layer shows (its TOC opened as the mount server opens it)."""
    config = FsConfig(prefetch=False, background_fetch=False)
    remote = RemoteBlob(FileRangeSource(layer.path), LayerStats(layer.digest), config)
    reader = open_toc(layer.digest, layer.annotations, RecordingSource(remote, tmp / "toc.record"), None)
    return InodeTable(reader)


def lazy_view(table: InodeTable) -> dict[str, tuple[int, dict[bytes, bytes]]]:
    out: dict[str, tuple[int, dict[bytes, bytes]]] = {}

    def walk(ino: int, prefix: str) -> None:
        node = table.nodes[ino]
        for name, child in (node.children or {}).items():
            path = prefix + name.decode("utf-8", "surrogateescape")
            c = table.nodes[child]
            out[path] = (stat.S_IFMT(c.attr.mode), dict(c.xattrs))
            if c.children is not None:
                walk(child, path + "/")

    walk(ROOT_INODE, "")
    return out


def extracted_view(root: Path) -> dict[str, tuple[int, dict[bytes, bytes]]]:
    out: dict[str, tuple[int, dict[bytes, bytes]]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            xattrs = {k.encode(): os.getxattr(path, k, follow_symlinks=False)
                      for k in os.listxattr(path, follow_symlinks=False)}
            out[os.path.relpath(path, root)] = (stat.S_IFMT(os.lstat(path).st_mode), xattrs)
    return out


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_both_paths_refuse(case: str, tmp_path: Path) -> None:
    members, message = REFUSED[case]
    layer = metadata_blob(tmp_path, members)
    with pytest.raises(LazypullError) as lazy:
        lazy_tree(tmp_path, layer)
    with pytest.raises(LayerExtractError) as full:
        extract_layer(layer.path, tmp_path / "fs", skip_estargz_metadata=True)
    for err in (lazy.value, full.value):
        text = str(err)
        assert message in text and "\n" not in text, text
    assert layer.digest in str(lazy.value)
    assert not (tmp_path / "fs").exists()


def test_both_paths_show_the_same_tree(tmp_path: Path) -> None:
    for case, members in sorted(ACCEPTED.items()):
        layer = metadata_blob(tmp_path, members, name=case)
        lazy = lazy_view(lazy_tree(tmp_path, layer))
        extract_layer(layer.path, tmp_path / case, skip_estargz_metadata=True)
        assert lazy == extracted_view(tmp_path / case), case
        for _kind, xattrs in lazy.values():
            assert not any(k.startswith((b"trusted.overlay.", b"user.overlay.")) for k in xattrs
                           if k != b"trusted.overlay.opaque"), case


def test_overlay_xattrs_from_the_toc_are_not_shown(tmp_path: Path) -> None:
    """Only the opaque marker makes a directory opaque; a redirect or metacopy from the TOC is dropped."""
    lazy = lazy_view(lazy_tree(tmp_path, metadata_blob(tmp_path, ACCEPTED["overlay-xattrs"])))
    assert lazy["d"][1] == {b"trusted.kept": b"1"}
    assert lazy["d/f"][1] == {}
    opaque = lazy_view(lazy_tree(tmp_path, metadata_blob(tmp_path, ACCEPTED["whiteouts-and-opaque"],
                                                         name="opaque")))
    assert opaque["d"][1] == {b"trusted.overlay.opaque": b"y"}
    assert stat.S_ISCHR(opaque["e/gone"][0])


def test_a_hardlink_target_replaced_later_is_not_mounted_lazily(tmp_path: Path) -> None:
    """Extraction links ``h`` to the first ``f``, which the second ``f`` then replaces (two files); a
    lazy tree would give both names the second one. The lazy path refuses the layer (the mount server
    then extracts it), so no view of it disagrees with extraction."""
    layer = metadata_blob(tmp_path, [Member("f", mode=0o600), Member("h", "hardlink", link="f"),
                                     Member("f", mode=0o644)])
    with pytest.raises(LazypullError) as lazy:
        lazy_tree(tmp_path, layer)
    text = str(lazy.value)
    assert "TOC entry 2 ('f'): replaces the target of an earlier hardlink" in text and layer.digest in text
    extract_layer(layer.path, tmp_path / "fs", skip_estargz_metadata=True)
    f, h = os.lstat(tmp_path / "fs" / "f"), os.lstat(tmp_path / "fs" / "h")
    assert f.st_ino != h.st_ino and stat.S_IMODE(h.st_mode) == 0o600 and stat.S_IMODE(f.st_mode) == 0o644
