"""The containerd snapshotter with a container's very deep tree in an active snapshot: ``usage`` counts
it and ``remove`` deletes it (os.walk and shutil.rmtree recursed: RecursionError, the directory left)."""

from __future__ import annotations

import os
from pathlib import Path

from lazypull.snapshot.proxy.snapshotter import Snapshotter
from tests.snapshot.test_proxy_snapshotter import _Manager


def test_usage_and_remove_of_a_very_deep_active_snapshot(tmp_path: Path) -> None:
    manager = _Manager(tmp_path / "lazy")
    sn = Snapshotter(tmp_path, manager)  # type: ignore[arg-type]
    sn.prepare("a-active", "", {})
    fs = tmp_path / "containerd" / "snapshots" / "1" / "fs"
    fd = os.open(fs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        with os.fdopen(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"x" * 8192)
    finally:
        os.close(fd)
    size, inodes = sn.usage("a-active")
    assert inodes == 1501 and size >= 8192
    sn.remove("a-active")
    assert not (tmp_path / "containerd" / "snapshots" / "1").exists()
    assert sn.list_snapshots() == []
