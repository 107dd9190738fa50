"""A layer that cannot be mounted lazily is handed back for a full download, as stargz-snapshotter
falls back to a normal pull when a remote snapshot cannot be prepared."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from lazypull.format.annotations import TOC_DIGEST_ANNOTATION as TOC_DIGEST
from lazypull.fs.config import FsConfig
from lazypull.image import Store, pull_image
from lazypull.registry import RegistryClient
from lazypull.runtime.layers import lower_dirs
from lazypull.snapshot.manager import LayerManager
from tests.helpers.registry import RegistryServer
from tests.snapshot.layerkit import FILES, build_blob, push_image

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def test_layer_whose_toc_does_not_verify_falls_back_to_a_full_download(
        registry: RegistryServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blob = build_blob(tmp_path)
    lying = dict(blob.annotations)
    lying[TOC_DIGEST] = "sha256:" + hashlib.sha256(b"not this TOC").hexdigest()
    ref = f"{registry.host}/lazy/fallback:v1"
    push_image(registry.url, "lazy/fallback", "v1",
               [(blob.path.read_bytes(), OCI_GZIP, lying, blob.result.diff_id)])
    root = tmp_path / "root"
    store = Store(root)
    with RegistryClient(insecure=True) as client:
        record = pull_image(store, client, ref, fetch_layers=False)
    manager = LayerManager(root, FsConfig(background_fetch=False))
    try:
        with caplog.at_level(logging.WARNING, logger="lazypull.snapshot.manager"):
            mounts = manager.mount_image(record.name, insecure=True, holder="c1")
        assert [(m.digest, m.lazy, m.path) for m in mounts] == [(blob.digest, False, None)]
        assert any("falling back to a full download" in r.getMessage() and blob.digest in r.getMessage()
                   for r in caplog.records)
        assert manager.list_mounts() == []
        # the runtime then downloads the blob (digest-checked) and extracts it whole
        lowers = lower_dirs(root, store, store.resolve(record.name), mounts,
                            lambda: RegistryClient(insecure=True))
        assert (lowers[0] / "usr/lib/one").read_bytes() == FILES["usr/lib/one"]
        assert not (lowers[0] / "stargz.index.json").exists()
    finally:
        manager.close()
