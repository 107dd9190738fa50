"""Killed at any point (SIGKILL mid-transfer or mid-conversion), the store shows nothing half-written:
no name, no partial blob; the next opening removes the temp files, and prune the orphaned blobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lazypull.image import Layout, Store
from tests.helpers.images import file, make_oci_layout, sample_layers
from tests.helpers.registry import RegistryServer

REPO = Path(__file__).resolve().parents[2]

# Runs an operation whose progress callback SIGKILLs the process once bytes of a layer have moved.
SCRIPT = r"""
import os, signal, sys
from lazypull.image import Layout, Store, pull_image
from lazypull.image.convert import ConvertOptions, convert_image
from lazypull.registry import RegistryClient

class Killer:
    def start(self, key, label, total): pass
    def advance(self, key, n):
        if key == sys.argv[4]:
            os.kill(os.getpid(), signal.SIGKILL)
    def finish(self, key, status="done"): pass
    def message(self, text): pass

store = Store(sys.argv[2])
if sys.argv[1] == "pull":
    with RegistryClient(insecure=True) as client:
        pull_image(store, client, sys.argv[3], progress=Killer(), workers=1)
else:
    with store.lease():
        result = convert_image(Layout(sys.argv[3]).root("v1"), store,
                               ConvertOptions("estargz", oci=True, workers=1), Killer())
        store.put_image("example.com/never:1", result.root)
"""


def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=REPO, capture_output=True, timeout=120)


def _check_nothing_visible(root: Path, killed_layer: str) -> None:
    index = root / "images.json"
    assert not index.exists() or json.loads(index.read_text())["images"] == {}
    ingest = root / "content" / "ingest"
    assert ingest.is_dir() and list(ingest.iterdir()), "the killed writer left its temp file"
    store = Store(root)  # opening cleans up after dead writers
    assert list(ingest.iterdir()) == []
    assert not store.has_blob(killed_layer)
    assert store.list_images() == []
    for digest in store.prune():  # whatever complete blobs were written are orphans
        assert not store.has_blob(digest)
    assert not store.blobs_dir.exists() or list(store.blobs_dir.iterdir()) == []


def test_killed_pull(tmp_path: Path, registry: RegistryServer, unique_repo: str) -> None:
    from lazypull.image import copy_into_store
    from lazypull.image.push import push_image
    from lazypull.registry import RegistryClient

    layers = sample_layers()
    layers[2].append(file("data/big", bytes(range(256)) * 8192))  # 2 MiB: several progress steps
    layers[2].append(file("data/owner", unique_repo))
    built = make_oci_layout(tmp_path / "layout", layers, tag="v1")
    name = f"{registry.host}/{unique_repo}:v1"
    src = Store(tmp_path / "src")
    layout = Layout(built.path)
    copy_into_store(src, layout.root("v1"), layout, name, source=None, platforms=None)
    with RegistryClient(insecure=True) as client:
        push_image(src, client, name)
    victim = built.image.layer_digests[2]
    proc = _run("pull", str(tmp_path / "dst"), name, victim)
    assert proc.returncode == -9, proc.stderr.decode()
    _check_nothing_visible(tmp_path / "dst", victim)


def test_killed_convert(tmp_path: Path) -> None:
    built = make_oci_layout(tmp_path / "layout", sample_layers(), tag="v1")
    victim = built.image.layer_digests[1]
    proc = _run("convert", str(tmp_path / "root"), str(built.path), victim)
    assert proc.returncode == -9, proc.stderr.decode()
    _check_nothing_visible(tmp_path / "root", victim)
