"""The layers of an image are mounted at the same time (TOC fetch and parse overlap), results in order."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import lazypull.fs.facade as facade_mod
from lazypull.fs.config import FsConfig
from lazypull.image import Store, pull_image
from lazypull.registry import RegistryClient
from lazypull.snapshot.manager import LayerManager
from tests.helpers.registry import RegistryServer
from tests.snapshot.layerkit import FILES, build_blob, push_image

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def test_layers_mount_in_parallel_and_come_back_bottom_first(
        registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = [build_blob(tmp_path, name=f"l{i}", chunk_size=4096 << i) for i in range(3)]
    assert len({b.digest for b in blobs}) == 3
    ref = f"{registry.host}/lazy/parallel:v1"
    push_image(registry.url, "lazy/parallel", "v1",
               [(b.path.read_bytes(), OCI_GZIP, b.annotations, b.result.diff_id) for b in blobs])
    root = tmp_path / "root"
    store = Store(root)
    with RegistryClient(insecure=True) as client:
        record = pull_image(store, client, ref, fetch_layers=False)

    spans: list[tuple[float, float]] = []
    lock = threading.Lock()
    from lazypull.fs.layer import open_layer_tree as real

    def slow_open(*args: Any, **kwargs: Any) -> Any:
        began = time.monotonic()
        time.sleep(0.4)
        tree = real(*args, **kwargs)
        with lock:
            spans.append((began, time.monotonic()))
        return tree

    monkeypatch.setattr(facade_mod, "open_layer_tree", slow_open)
    manager = LayerManager(root, FsConfig(background_fetch=False, prefetch=False))
    try:
        mounts = manager.mount_image(record.name, insecure=True, holder="c1")
        assert [m.digest for m in mounts] == [b.digest for b in blobs]
        assert all(m.lazy and m.path is not None for m in mounts)
        assert len(spans) == 3
        assert max(s for s, _ in spans) < min(e for _, e in spans), f"mounts did not overlap: {spans}"
        for m in mounts:
            assert m.path is not None
            assert (m.path / "usr/lib/one").read_bytes() == FILES["usr/lib/one"]
        assert [i.digest for i in manager.list_mounts()] == sorted(b.digest for b in blobs)
    finally:
        manager.close()
