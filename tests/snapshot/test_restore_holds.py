"""Which failures at restore drop a hold, and which keep it for a later request to retry (they stay so with
one ``DigestMismatchError`` for registry and image content): an image whose stored manifest no longer hashes
to its digest is dropped like an image removed meanwhile; a layer hold (containerd's remote snapshot) whose
external TOC comes back corrupt from the registry is kept."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from lazypull.fs.config import FsConfig
from lazypull.image import Store, pull_image
from lazypull.registry import RegistryClient
from lazypull.snapshot.manager import LayerManager
from tests.helpers.registry import Fault, FaultProxy, RegistryServer
from tests.snapshot.layerkit import build_blob, push_blob, push_image, push_manifest

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = FsConfig(background_fetch=False, prefetch=False, read_deadline=5.0)


def _write_holds(root: Path, holds: list[dict[str, Any]]) -> None:
    (root / "run").mkdir(parents=True, exist_ok=True)
    (root / "run" / "state.json").write_text(json.dumps({"version": 1, "holds": holds}))


def _holds(root: Path) -> list[dict[str, Any]]:
    holds: list[dict[str, Any]] = json.loads((root / "run" / "state.json").read_text())["holds"]
    return holds


def test_an_image_hold_whose_stored_manifest_is_corrupt_is_dropped(
        registry: RegistryServer, unique_repo: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blob = build_blob(tmp_path)
    push_image(registry.url, unique_repo, "v1",
               [(blob.path.read_bytes(), OCI_GZIP, blob.annotations, blob.result.diff_id)])
    root = tmp_path / "root"
    store = Store(root)
    with RegistryClient(insecure=True) as client:
        record = pull_image(store, client, f"{registry.host}/{unique_repo}:v1", fetch_layers=False)
    manifest = store.blob_path(record.target.digest)
    assert manifest is not None
    data = bytearray(manifest.read_bytes())
    data[len(data) // 2] ^= 0x20                    # same length, another digest
    manifest.write_bytes(bytes(data))
    _write_holds(root, [{"holder": "c1", "image": record.name, "digests": [blob.digest], "insecure": True}])
    caplog.set_level(logging.WARNING, logger="lazypull.snapshot.manager")
    manager = LayerManager(root, CONFIG)
    try:
        manager.restore()
    finally:
        manager.close()
    assert _holds(root) == []
    dropped = [r.getMessage() for r in caplog.records if "dropping the hold" in r.getMessage()]
    assert dropped and record.target.digest in dropped[0] and "digest" in dropped[0], dropped


def test_a_layer_hold_whose_external_toc_comes_back_corrupt_is_kept(
        fault_proxy: FaultProxy, unique_repo: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blob = build_blob(tmp_path, external_toc=True)
    toc_blob = blob.result.toc_blob
    assert toc_blob
    upstream = f"http://127.0.0.1:{fault_proxy.upstream_port}"
    push_blob(upstream, unique_repo, blob.path.read_bytes())
    config = push_blob(upstream, unique_repo, b"{}")
    toc_digest = push_blob(upstream, unique_repo, toc_blob)
    push_manifest(upstream, unique_repo, "v1-esgztoc", {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": OCI_GZIP, "digest": toc_digest, "size": len(toc_blob),
                    "annotations": {"containerd.io/snapshot/stargz/layer.digest": blob.digest}}]})
    fault_proxy.add(Fault("flip", method="GET", path_contains=toc_digest, times=-1))
    ref = f"{fault_proxy.host}/{unique_repo}:v1"
    hold = {"holder": "containerd:snap-1", "image": f"layer:{ref}", "digests": [blob.digest],
            "insecure": True, "layer": {"ref": ref, "digest": blob.digest, "annotations": blob.annotations}}
    root = tmp_path / "root"
    _write_holds(root, [hold])
    caplog.set_level(logging.WARNING, logger="lazypull.snapshot.manager")
    manager = LayerManager(root, CONFIG)
    try:
        manager.restore()
        assert manager.list_mounts() == [], "nothing mounted: the TOC did not verify"
    finally:
        manager.close()
    assert _holds(root) == [hold]
    failed = [r.getMessage() for r in caplog.records if "could not restore" in r.getMessage()]
    assert failed and toc_digest in failed[0], failed
    assert not any("dropping the hold" in r.getMessage() for r in caplog.records)
    assert any(r.method == "GET" and toc_digest in r.path for r in fault_proxy.requests)
