"""The node keeps what an image's first run read across ``rmi`` (issue 14 item 2): the image removed and
pulled again, as kubelet's image GC does all the time, starts with the learned fetch, not as a first-ever
start. Real registry, mount server, FUSE and CLI; the registry's own log counts the blob requests."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazypull.snapshot import MountClient
from tests.helpers.registry import RegistryServer
from tests.snapshot.layerkit import FILES, Blob, build_blob, push_image

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
WORKLOAD = ("usr/lib/two", "bin/huge", "etc/hello.txt")


def _cli(root: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "lazypull", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"lazypull {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def _layer_stats(root: Path, digest: str, until: tuple[str, ...]) -> dict[str, Any]:
    """The layer's counters once its learned fetch is in one of the states ``until``."""
    with MountClient(root, autostart=False) as mc:
        deadline = time.monotonic() + 20
        while True:
            layer: dict[str, Any] = mc.stats()["layers"][digest]
            if layer["learned_state"] in until:
                return layer
            assert time.monotonic() < deadline, f"the layer's learned fetch is not {until}: {layer}"
            time.sleep(0.05)


def _blob_gets(registry: RegistryServer, since: int, digest: str) -> int:
    return sum(1 for e in registry.access_log(since)
               if e.method == "GET" and e.path.endswith(f"/blobs/{digest}"))


def _workload(root: Path, blob: Blob) -> None:
    fs = root / "snapshots" / blob.digest[7:] / "fs"
    for path in WORKLOAD:
        assert (fs / path).read_bytes() == FILES[path]


@pytest.fixture
def image(registry: RegistryServer, tmp_path: Path) -> Iterator[tuple[Path, str, Blob]]:
    """(store root, image reference, its one lazy layer); the mount server stopped at the end."""
    blob = build_blob(tmp_path)
    repo = f"lazy/learnkeep-{tmp_path.name.lower()}"
    push_image(registry.url, repo, "v1", [(blob.path.read_bytes(), OCI_GZIP, blob.annotations,
                                           blob.result.diff_id)])
    root = tmp_path / "root"
    root.mkdir()
    # Nothing fetched at mount but the learned fetch: what the log shows at mount is that fetch.
    (root / "config.toml").write_text("prefetch = false\nbackground_fetch = false\nfetch_user_db = false\n"
                                      "read_deadline = 5.0\n")
    yield root, f"{registry.host}/{repo}:v1", blob
    MountClient(root, autostart=False).shutdown()
    mounts = subprocess.run(["mount"], capture_output=True, text=True, check=True).stdout
    for line in mounts.splitlines():
        if "lazypull" in line and str(root) in line:
            subprocess.run(["umount", "-l", line.split()[2]], check=False)


def test_a_record_survives_rmi_and_steers_the_next_cold_start(image: tuple[Path, str, Blob],
                                                              registry: RegistryServer) -> None:
    root, ref, blob = image
    record = root / "learned" / f"{blob.digest[7:]}.json"
    _cli(root, "pull", "--snapshotter=stargz", ref)
    assert _layer_stats(root, blob.digest, ("none",))["learned_chunks"] == 0, "first-ever: nothing learned"
    mark = registry.log_mark()
    _workload(root, blob)
    first_run_gets = _blob_gets(registry, mark, blob.digest)
    assert first_run_gets >= 2, "a first-ever run fetches as it reads"
    _cli(root, "rmi", ref)
    assert not (root / "snapshots" / blob.digest[7:]).exists(), "rmi freed the layer's state"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE(record.parent.stat().st_mode) == 0o700

    mark = registry.log_mark()
    _cli(root, "pull", "--snapshotter=stargz", ref)
    layer = _layer_stats(root, blob.digest, ("done", "failed"))
    assert layer["learned_state"] == "done" and layer["learned_chunks"] >= len(WORKLOAD)
    # the TOC read, then the learned chunks (two pieces at most, here one multi-range request)
    at_mount = _blob_gets(registry, mark, blob.digest)
    assert 2 <= at_mount <= 3, f"{at_mount} blob requests at mount"
    mark = registry.log_mark()
    _workload(root, blob)
    assert _blob_gets(registry, mark, blob.digest) == 0, "the run read only what the mount fetched ahead"


def test_image_prune_learned_forgets_the_records(image: tuple[Path, str, Blob],
                                                 registry: RegistryServer) -> None:
    root, ref, blob = image
    record = root / "learned" / f"{blob.digest[7:]}.json"
    _cli(root, "pull", "--snapshotter=stargz", ref)
    _workload(root, blob)
    _cli(root, "rmi", ref)
    assert record.exists()
    _cli(root, "image", "prune")
    assert record.exists(), "image prune keeps what the node learned"
    assert "Forgot the learned reads of 1 layer(s)" in _cli(root, "image", "prune", "--learned")
    assert list(record.parent.iterdir()) == []
