"""The layer tree's access recording (``lazypull.fs.layer.access``), without FUSE: off unless the layer dir
asks for it at mount; then each file once, at its first open (``backing_path``) or read, hardlinks as
their first name, metadata operations not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazypull.fs.config import FsConfig
from lazypull.fs.layer.access import LOG_NAME, read_access_log, request_recording
from lazypull.fs.layer.open import layer_dir
from tests.snapshot.layerkit import Blob, build_blob, lookup_path, open_tree


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Blob:
    return build_blob(tmp_path_factory.mktemp("blob"))


def test_off_unless_asked(blob: Blob, tmp_path: Path) -> None:
    tree = open_tree(blob, tmp_path)
    try:
        assert tree.access is None
        tree.read(lookup_path(tree, "etc/hello.txt"), 0, 100)
        assert not (layer_dir(tmp_path, blob.digest) / LOG_NAME).exists()
    finally:
        tree.close()


@pytest.mark.parametrize("passthrough", [True, False], ids=["passthrough", "served"])
def test_first_open_or_read_recorded_once(blob: Blob, tmp_path: Path, passthrough: bool) -> None:
    request_recording(layer_dir(tmp_path, blob.digest))
    config = FsConfig(prefetch=False, background_fetch=False, read_deadline=5.0, passthrough=passthrough)
    tree = open_tree(blob, tmp_path, config)
    try:
        assert tree.access is not None
        cap, hello, setuid = (lookup_path(tree, p) for p in ("etc/cap", "etc/hello.txt", "etc/setuid"))
        tree.getattr(setuid)
        tree.listxattr(setuid)
        tree.readdir(lookup_path(tree, "etc"))            # metadata: nothing recorded
        tree.backing_path(cap)                             # an open (the FUSE server asks at open)
        assert tree.read(hello, 0, 3) == b"hel"
        assert tree.read(hello, 3, 10) == b"lo\n"
        tree.read(lookup_path(tree, "etc/hard"), 0, 10)    # the same inode as etc/hello.txt
        tree.backing_path(cap)
    finally:
        tree.close()
    assert [a.path for a in read_access_log(layer_dir(tmp_path, blob.digest))] == ["etc/cap", "etc/hello.txt"]
