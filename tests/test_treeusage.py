"""One disk-usage walk (lazypull.treeusage) for the containerd snapshotter's ``usage`` and the size of an
unpacked layer: a file with several links counted once, a tree past PATH_MAX counted whole, a mount below
not entered."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lazypull.snapshot.proxy.snapshotter import Snapshotter
from lazypull.treeusage import tree_usage
from tests.helpers.trees import make_deep_tree
from tests.snapshot.test_proxy_snapshotter import _Manager


def test_the_snapshotters_usage_counts_links_once_and_the_whole_of_a_deep_tree(tmp_path: Path) -> None:
    sn = Snapshotter(tmp_path, _Manager(tmp_path / "lazy"))  # type: ignore[arg-type]
    sn.prepare("a", "", {})
    fs = tmp_path / "containerd" / "snapshots" / "1" / "fs"
    (fs / "big").write_bytes(b"y" * (1 << 20))
    for i in range(4):
        os.link(fs / "big", fs / f"link{i}")
    make_deep_tree(fs, 40, "d" * 200)                   # 40 * 201 bytes of path: past PATH_MAX (4096)
    size, inodes = sn.usage("a")
    assert inodes == 1 + 40 + 1, "a file with 5 links counted more than once, or the deep file missed"
    assert (1 << 20) + 8192 <= size < 2 * (1 << 20), "the links' blocks counted 5 times"
    usage = tree_usage(fs)
    assert (usage.disk, usage.inodes) == (size, inodes)
    assert usage.apparent == (1 << 20) + 8192


def test_a_mount_below_the_tree_is_not_entered(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    top = tmp_path / "top"
    (top / "mnt").mkdir(parents=True)
    (top / "a").write_bytes(b"z" * 5000)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(top / "mnt")], check=True)
    try:
        (top / "mnt" / "inside").write_bytes(b"w" * 100_000)
        usage = tree_usage(top)
    finally:
        subprocess.run(["umount", str(top / "mnt")], check=True)
    assert usage.apparent == 5000 and usage.inodes == 2


def test_an_absent_or_plain_file_top_is_empty(tmp_path: Path) -> None:
    assert tree_usage(tmp_path / "missing") == tree_usage(tmp_path / "x") == tree_usage(tmp_path)
    (tmp_path / "f").write_bytes(b"1")
    assert tree_usage(tmp_path / "f").inodes == 0
