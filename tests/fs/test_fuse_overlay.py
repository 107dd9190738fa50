"""overlayfs over two FUSE lower layers (whiteouts, opaque dirs) and copy-up of a passthrough file."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from lazypull.fs.fuse import FuseMount, is_mounted, unmount
from tests.fs.fusepath import ask_passthrough
from tests.fs.memtree import MemTree


@pytest.fixture
def merged(tmp_path: Path, fuse_path: str) -> Iterator[tuple[Path, MemTree, MemTree, FuseMount]]:
    bottom = MemTree()
    bottom.add_file("etc/config", b"bottom config\n")
    bottom.add_file("etc/removed", b"should be hidden\n")
    bottom.add_file("opaque/old", b"old\n")
    bottom.add_file("kept/old", b"kept\n")
    bottom.add_file("bin/tool", b"tool v1\n", mode=0o4755)

    (tmp_path / "backing").mkdir()
    (tmp_path / "backing" / "config").write_bytes(b"top config (passthrough)\n")
    top = MemTree()
    top.add_file("etc/config", b"top config (passthrough)\n", backing=str(tmp_path / "backing" / "config"))
    top.add_node("etc/removed", stat.S_IFCHR, rdev=0)  # whiteout
    top.add_dir("opaque", xattrs={b"trusted.overlay.opaque": b"y"})
    top.add_file("opaque/new", b"new\n")
    top.add_file("kept/new", b"new too\n")

    dirs = {name: tmp_path / name for name in ("lower0", "lower1", "upper", "work", "merged")}
    for d in dirs.values():
        d.mkdir()
    with ExitStack() as stack:
        stack.enter_context(FuseMount(bottom, dirs["lower0"]))
        top_mount = stack.enter_context(
            FuseMount(top, dirs["lower1"], passthrough=ask_passthrough(fuse_path)))
        opts = f"lowerdir={dirs['lower1']}:{dirs['lower0']},upperdir={dirs['upper']},workdir={dirs['work']}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(dirs["merged"])], check=True)
        stack.callback(lambda: unmount(str(dirs["merged"])) if is_mounted(str(dirs["merged"])) else None)
        yield dirs["merged"], bottom, top, top_mount


def test_merged_tree(merged: tuple[Path, MemTree, MemTree, FuseMount]) -> None:
    root, _, _, _ = merged
    assert sorted(os.listdir(root)) == ["bin", "etc", "kept", "opaque"]
    assert os.listdir(root / "etc") == ["config"]  # the whiteout hides "removed"
    assert not (root / "etc" / "removed").exists()
    assert os.listdir(root / "opaque") == ["new"]  # opaque: nothing from below
    assert sorted(os.listdir(root / "kept")) == ["new", "old"]  # not opaque: merged
    assert (root / "etc" / "config").read_bytes() == b"top config (passthrough)\n"
    assert (root / "kept" / "old").read_bytes() == b"kept\n"
    assert stat.S_IMODE(os.stat(root / "bin" / "tool").st_mode) == 0o4755


def test_copy_up_of_passthrough_file(merged: tuple[Path, MemTree, MemTree, FuseMount],
                                     fuse_path: str) -> None:
    root, _, top, top_mount = merged
    assert top_mount.passthrough_active == (fuse_path == "passthrough")
    reads = top.calls["read"]
    with open(root / "etc" / "config", "r+b") as f:  # copy-up: overlayfs opens the FUSE file itself
        assert f.read() == b"top config (passthrough)\n"
        f.seek(0)
        f.write(b"TOP")
    assert (root / "etc" / "config").read_bytes() == b"TOP config (passthrough)\n"
    # passthrough: the copy-up reads through passthrough too; served: the tree serves it
    assert (top.calls["read"] == reads) == (fuse_path == "passthrough")
    upper = root.parent / "upper" / "etc" / "config"
    assert upper.read_bytes() == b"TOP config (passthrough)\n"
    assert (root.parent / "lower1" / "etc" / "config").read_bytes() == b"top config (passthrough)\n"


def test_copy_up_of_served_file_and_new_files(merged: tuple[Path, MemTree, MemTree, FuseMount]) -> None:
    root, bottom, _, _ = merged
    with open(root / "kept" / "old", "ab") as f:
        f.write(b"more\n")
    assert (root / "kept" / "old").read_bytes() == b"kept\nmore\n"
    (root / "etc" / "removed").write_bytes(b"back again\n")
    assert sorted(os.listdir(root / "etc")) == ["config", "removed"]
    os.unlink(root / "opaque" / "new")
    assert os.listdir(root / "opaque") == []
    assert bottom.nodes[bottom.ino("kept/old")].data == b"kept\n"
