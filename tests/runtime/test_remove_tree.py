"""Removing what a container wrote: trees deeper than Python's recursion limit and than PATH_MAX, links
never followed, mounts never crossed; layer directories checked without leaking directory handles."""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import pytest

from lazypull.removetree import remove_tree
from lazypull.runtime import ContainerOptions, Containers, extract_layer
from lazypull.runtime.layers import _ready
from lazypull.runtime.overlay import mountpoints
from tests.helpers.rootfs import busybox_tar


def _deep(top: Path, depth: int, name: str = "d") -> None:
    """``top/d/d/...`` ``depth`` levels down (made through descriptors: the path gets too long)."""
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def test_remove_tree_deep_wide_and_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    top = tmp_path / "top"
    _deep(top, 3000, "dddd")                    # 15000 bytes of path: past PATH_MAX and the recursion limit
    for i in range(50):
        (top / f"w{i}").mkdir()
        (top / f"w{i}" / "out").symlink_to(outside)
        (top / f"w{i}" / "file").symlink_to(outside / "keep")
    remove_tree(top)
    assert not top.exists()
    assert [p.name for p in outside.iterdir()] == ["keep"]
    remove_tree(top)                            # absent: nothing to do
    (tmp_path / "file").write_text("x")
    remove_tree(tmp_path / "file")
    assert not (tmp_path / "file").exists()


def test_remove_tree_never_crosses_a_mount(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "a" / "m").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "lazypull-test", str(top / "a" / "m")], check=True)
    try:
        (top / "a" / "m" / "kept").write_text("x")
        with pytest.raises(OSError, match="is a mount point; not removing through it"):
            remove_tree(top)
        assert (top / "a" / "m" / "kept").read_text() == "x"
    finally:
        subprocess.run(["umount", str(top / "a" / "m")], check=True)


def test_container_removal_of_a_very_deep_writable_layer(tmp_path: Path) -> None:
    blob = tmp_path / "busybox.tar"
    blob.write_bytes(busybox_tar())
    extract_layer(blob, tmp_path / "busybox" / "fs")
    root = tmp_path / "root"
    containers = Containers(root)
    script = "i=0; while [ $i -lt 1500 ]; do mkdir d; cd d; i=$((i+1)); done; echo done"
    record = containers.create(image="test/busybox", lowers_top_first=[tmp_path / "busybox" / "fs"],
                               options=ContainerOptions(command=("sh", "-c", script)))
    assert containers.run(record, tty=False) == 0
    bundle = root / "containers" / record.id
    assert (bundle / "upper" / "d" / "d" / "d").is_dir()
    containers.remove(record)           # shutil.rmtree raised RecursionError here
    assert not bundle.exists()
    assert [m for m in mountpoints() if m.startswith(str(tmp_path))] == []


def test_layer_readiness_closes_its_directory_iterators(tmp_path: Path) -> None:
    layer = tmp_path / "fs"
    layer.mkdir()
    (layer / "f").write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _ready(layer)
        assert not _ready(empty)
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_prune_frees_a_very_deep_extracted_layer(tmp_path: Path) -> None:
    """A layer 1500 directories deep, extracted by a full run, then unused: ``image prune`` deletes it."""
    import sys

    from lazypull.image import Store
    from tests.helpers.images import TarEntrySpec, make_oci_layout
    from tests.helpers.rootfs import busybox_specs

    deep = "/".join(["d"] * 1500)
    deep_layer = [TarEntrySpec(deep, "dir"), TarEntrySpec(deep + "/f", content=b"x")]
    layout = make_oci_layout(tmp_path / "layout", [busybox_specs(), deep_layer],
                             config={"config": {"Cmd": ["true"]}})
    root = tmp_path / "root"
    env = dict(os.environ, LAZYPULL_ROOT=str(root), PYTHONPATH=str(Path(__file__).resolve().parents[2]))

    def lazypull(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lazypull", *args], capture_output=True, text=True,
                              env=env, timeout=300)

    steps: list[tuple[str, ...]] = [("image", "convert", "--oci", layout.ref, "local/deep:1"),
                                    ("run", "--rm", "--snapshotter=overlayfs", "local/deep:1", "test", "-f",
                                     f"/{deep}/f")]
    for args in steps:
        done = lazypull(*args)
        assert done.returncode == 0, done.stderr
    layer = Store(root).resolve("local/deep:1").layers[1].digest.removeprefix("sha256:")
    assert (root / "snapshots" / layer / "fs" / "d" / "d").is_dir()
    for args in [("rmi", "local/deep:1"), ("image", "prune")]:
        done = lazypull(*args)
        assert done.returncode == 0, done.stderr        # shutil.rmtree raised RecursionError in prune
    assert not (root / "snapshots" / layer).exists()
