"""The containerd snapshotter with a container's very deep tree in an active snapshot: ``usage`` counts
it and ``remove`` deletes it (os.walk and shutil.rmtree recursed: RecursionError, the directory left)."""

from __future__ import annotations

from pathlib import Path

from lazypull.snapshot.proxy.snapshotter import Snapshotter
from tests.helpers.trees import make_deep_tree
from tests.snapshot.test_proxy_snapshotter import _Manager


def test_usage_and_remove_of_a_very_deep_active_snapshot(tmp_path: Path) -> None:
    manager = _Manager(tmp_path / "lazy")
    sn = Snapshotter(tmp_path, manager)  # type: ignore[arg-type]
    sn.prepare("a-active", "", {})
    fs = tmp_path / "containerd" / "snapshots" / "1" / "fs"
    make_deep_tree(fs, 1500)
    size, inodes = sn.usage("a-active")
    assert inodes == 1501 and size >= 8192
    sn.remove("a-active")
    assert not (tmp_path / "containerd" / "snapshots" / "1").exists()
    assert sn.list_snapshots() == []
