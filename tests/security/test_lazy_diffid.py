"""The lazy path checks DiffIDs where the image states them twice (issue 9, finding 11): a layer whose
descriptor declares an uncompressed digest (``containerd.io/uncompressed``) other than the config's
``rootfs.diff_ids`` entry is refused before anything of the image is mounted, naming the layer."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lazypull.errors import ImageError
from lazypull.fs.config import FsConfig
from lazypull.image import Store, pull_image
from lazypull.registry import RegistryClient
from lazypull.runtime.overlay import mountpoints
from lazypull.snapshot import MountClient
from lazypull.snapshot.manager import LayerManager
from tests.helpers.registry import RegistryServer
from tests.snapshot.layerkit import build_blob, push_image

REPO_ROOT = Path(__file__).resolve().parents[2]
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
UNCOMPRESSED = "containerd.io/uncompressed"


def test_diff_id_annotation_must_match_the_config(registry: RegistryServer, tmp_path: Path) -> None:
    blob = build_blob(tmp_path)
    wrong = "sha256:" + hashlib.sha256(b"another layer").hexdigest()
    right = blob.result.diff_id
    root = tmp_path / "root"
    store = Store(root)
    for tag, declared in (("lying", wrong), ("honest", right)):
        push_image(registry.url, "lazy/diffid", tag,
                   [(blob.path.read_bytes(), OCI_GZIP, {**blob.annotations, UNCOMPRESSED: declared}, right)])
    with RegistryClient(insecure=True) as client, pytest.raises(ImageError) as err:
        pull_image(store, client, f"{registry.host}/lazy/diffid:lying", fetch_layers=False)
    text = str(err.value)
    assert blob.digest in text and wrong in text and right in text and "\n" not in text
    assert store.find_image(f"{registry.host}/lazy/diffid:lying") is None       # never named
    with RegistryClient(insecure=True) as client:
        name = pull_image(store, client, f"{registry.host}/lazy/diffid:honest", fetch_layers=False).name
    manager = LayerManager(root, FsConfig(background_fetch=False, prefetch=False))
    try:
        mounts = manager.mount_image(name, insecure=True, holder="c1")
        assert [(m.digest, m.lazy) for m in mounts] == [(blob.digest, True)]
    finally:
        manager.close()


def test_lazy_pull_of_a_self_contradicting_image_fails_cleanly(registry: RegistryServer,
                                                                tmp_path: Path) -> None:
    """Through the command (lazily, through the mount server, and in full): one line naming the layer, no
    image named, no layer left mounted (the server mounts an image's layers early, from its manifest,
    before it has read the config)."""
    blob = build_blob(tmp_path)
    wrong = "sha256:" + hashlib.sha256(b"another layer").hexdigest()
    push_image(registry.url, "lazy/diffid-cli", "v1",
               [(blob.path.read_bytes(), OCI_GZIP, {**blob.annotations, UNCOMPRESSED: wrong},
                 blob.result.diff_id)])
    root = tmp_path / "root"
    env = dict(os.environ, LAZYPULL_ROOT=str(root))

    def lazypull(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lazypull", *args], capture_output=True, text=True,
                              env=env, cwd=REPO_ROOT, timeout=180)

    try:
        for snapshotter in ("stargz", "overlayfs"):         # the same verdict either way
            pulled = lazypull(f"--snapshotter={snapshotter}", "pull", f"{registry.host}/lazy/diffid-cli:v1")
            assert pulled.returncode == 1
            lines = pulled.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("lazypull: error:"), pulled.stderr
            assert blob.digest in lines[0] and wrong in lines[0]
            images = lazypull("images")
            assert images.returncode == 0 and "diffid-cli" not in images.stdout
        with MountClient(root, autostart=False) as client:
            assert client.list_mounts() == []
        assert not [m for m in mountpoints() if m.startswith(str(root) + "/")]
    finally:
        with contextlib.suppress(Exception), MountClient(root, autostart=False) as client:
            client.shutdown()
