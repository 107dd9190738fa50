"""StoreTree's own bookkeeping, in process (its backend, the mount server's service, is what the podman
tests exercise): names it refuses and the bound on remembered references."""

from __future__ import annotations

import errno

import pytest

from lazypull.fs.fuse.tree import ROOT_INODE, FuseError
from lazypull.store import tree as tree_mod
from lazypull.store.catalog import StoreLayer
from lazypull.store.names import encode_ref


class NoLayers:
    """A backend whose images have no lazy layer (the tree must not ask it for anything else)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def find_layer(self, ref: str, name: str) -> tuple[StoreLayer, bool] | None:
        self.asked.append((ref, name))
        return None

    def diff_target(self, key: str, layer: StoreLayer) -> bytes:
        raise AssertionError("no layer to mount")

    def read_blob(self, layer: StoreLayer, offset: int, size: int) -> bytes:
        raise AssertionError("no blob to read")

    def use(self, key: str, layer: StoreLayer) -> None:
        raise AssertionError("no layer to use")

    def release(self, key: str) -> None:
        raise AssertionError("no layer to release")


def test_references_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tree_mod, "MAX_REFS", 3)
    tree = tree_mod.StoreTree(NoLayers())
    names = [encode_ref(f"127.0.0.1:5000/app:{i}").encode() for i in range(5)]
    attrs = [tree.lookup(ROOT_INODE, name) for name in names]
    assert all(a is not None for a in attrs)
    assert [n for n, _ in tree.readdir(ROOT_INODE)] == sorted(names[2:])
    first = attrs[0]
    assert first is not None
    with pytest.raises(FuseError) as gone:
        tree.getattr(first.ino)
    assert gone.value.errno == errno.ENOENT
    again = tree.lookup(ROOT_INODE, names[0])          # looked up again: a new directory
    assert again is not None and again.ino != first.ino


def test_names_that_are_not_layers_do_not_reach_the_registry() -> None:
    backend = NoLayers()
    tree = tree_mod.StoreTree(backend)
    ref = tree.lookup(ROOT_INODE, encode_ref("127.0.0.1:5000/app:1").encode())
    assert ref is not None
    for name in (b"diff1", b"use", b"sha256:xyz", b"sha512:" + b"0" * 128, b"\xff"):
        assert tree.lookup(ref.ino, name) is None
    assert backend.asked == []
    assert tree.lookup(ref.ino, b"sha256:" + b"0" * 64) is None
    assert backend.asked == [("127.0.0.1:5000/app:1", "sha256:" + "0" * 64)]
    assert tree.lookup(ROOT_INODE, b"!!") is None
    # writes at the root and in a reference directory are refused, nothing is counted
    assert tree.refuse_write("MKDIR", ROOT_INODE, b"x") == errno.EROFS
    assert tree.refuse_write("CREATE", ref.ino, b"use") == errno.EROFS
    assert tree.refuse_write("RMDIR", ref.ino, b"sha256:" + b"0" * 64) == errno.ENOENT
