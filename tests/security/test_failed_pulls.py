"""Issue 9, finding 14: a pull that fails leaves no image name and no hold behind.

The registry is hostile: it serves a layer blob whose bytes do not match the manifest's digest (the
test rewrites the blob in the registry's storage after the push). A full pull, and a lazy pull that has
to download the layer whole (a plain layer, or an eStargz layer whose TOC is broken too), must fail,
not list the image in ``images``, and not leave a hold in ``run/state.json`` that every later server
start would try to mount again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.registry import RegistryServer
from tests.snapshot.layerkit import build_blob, gzip_layer, push_image

REPO_ROOT = Path(__file__).resolve().parents[2]
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def lazypull(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    return subprocess.run([sys.executable, "-m", "lazypull", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=180)


def corrupt(registry: RegistryServer, digest: str, offset: int) -> None:
    """Flip one byte of a stored blob: the registry now serves bytes that do not match its digest."""
    path = registry.blob_path(digest)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def push_corrupt_plain(registry: RegistryServer, repo: str) -> tuple[str, str]:
    """(reference, layer digest) of an image whose only (plain gzip) layer is served corrupted."""
    blob, diff_id = gzip_layer({"hello.txt": secrets.token_bytes(4096)})
    push_image(registry.url, repo, "v1", [(blob, OCI_GZIP, {}, diff_id)])
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    corrupt(registry, digest, len(blob) // 2)
    return f"{registry.host}/{repo}:v1", digest


def push_corrupt_lazy(registry: RegistryServer, repo: str, tmp: Path) -> tuple[str, str]:
    """(reference, layer digest) of an eStargz image whose layer's footer is served corrupted: it cannot
    be mounted lazily, and its full download does not match its digest."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        data = secrets.token_bytes(4096)
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    blob = build_blob(tmp, tar.getvalue())
    raw = blob.path.read_bytes()
    push_image(registry.url, repo, "v1", [(raw, OCI_GZIP, blob.annotations, blob.result.diff_id)])
    corrupt(registry, blob.digest, len(raw) - 20)
    return f"{registry.host}/{repo}:v1", blob.digest


def held_images(root: Path) -> list[str]:
    state = root / "run" / "state.json"
    if not state.exists():
        return []
    return [str(h.get("image")) for h in json.loads(state.read_text()).get("holds", [])]


def listed(root: Path) -> str:
    images = lazypull(root, "images")
    assert images.returncode == 0, images.stderr
    return images.stdout


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "root"
    yield root
    from lazypull.runtime.overlay import mountpoints, unmount
    from lazypull.snapshot import MountClient

    with contextlib.suppress(Exception):
        MountClient(root, autostart=False).shutdown()
    for point in sorted((m for m in mountpoints() if m.startswith(str(root) + "/")), key=len, reverse=True):
        with contextlib.suppress(Exception):
            unmount(Path(point))


@pytest.mark.parametrize("kind", ["plain", "broken-estargz"])
def test_failed_pulls_leave_no_name_nor_hold(root: Path, registry: RegistryServer, tmp_path: Path,
                                             kind: str) -> None:
    repo = f"security/failed-{kind}"
    ref, digest = (push_corrupt_plain(registry, repo) if kind == "plain"
                   else push_corrupt_lazy(registry, repo, tmp_path))
    full = lazypull(root, "--snapshotter=overlayfs", "pull", ref)
    assert full.returncode == 1
    assert digest in full.stderr and "Traceback" not in full.stderr
    assert repo not in listed(root)
    assert not list((root / "snapshots").glob("*/fs"))        # nothing extracted either

    # Lazily: the server names the image and holds it, then the layer's download here fails.
    lazy = lazypull(root, "--snapshotter=stargz", "pull", ref)
    assert lazy.returncode == 1
    assert digest in lazy.stderr and "Traceback" not in lazy.stderr
    assert repo not in listed(root)
    assert not any(repo in image for image in held_images(root)), held_images(root)
    assert [p.name for p in (root / "content" / "blobs" / "sha256").iterdir()] == []
    from lazypull.snapshot import MountClient

    with MountClient(root, autostart=False) as client:
        assert client.list_mounts() == []
        client.shutdown()
    with MountClient(root) as client:       # a new server has nothing of it to restore
        assert client.list_mounts() == []
    assert not any(repo in image for image in held_images(root)), held_images(root)


def test_a_failed_pull_keeps_what_the_name_meant_before(root: Path, registry: RegistryServer) -> None:
    """Pulled once, then the tag moves to a corrupted image: the failed pull leaves the old image."""
    blob, diff_id = gzip_layer({"good.txt": b"good\n"})
    push_image(registry.url, "security/failed-retag", "v1", [(blob, OCI_GZIP, {}, diff_id)])
    ref = f"{registry.host}/security/failed-retag:v1"
    first = lazypull(root, "--snapshotter=stargz", "pull", ref)
    assert first.returncode == 0, first.stderr
    bad_ref, _ = push_corrupt_plain(registry, "security/failed-retag")
    assert bad_ref == ref
    again = lazypull(root, "--snapshotter=stargz", "pull", ref)
    assert again.returncode == 1
    inspect = lazypull(root, "image", "inspect", ref)
    assert inspect.returncode == 0 and first.stdout.strip() in inspect.stdout, inspect.stdout


@pytest.mark.parametrize("kind", ["plain", "broken-estargz"])
def test_failed_lazy_run_leaves_no_name_nor_hold(root: Path, registry: RegistryServer, tmp_path: Path,
                                                 kind: str) -> None:
    """``run`` pulls the metadata itself, then downloads the layers the server cannot mount: when that
    download fails, the metadata-only name goes as it does for ``pull`` (the same clean-up)."""
    repo = f"security/failed-run-{kind}"
    ref, digest = (push_corrupt_plain(registry, repo) if kind == "plain"
                   else push_corrupt_lazy(registry, repo, tmp_path))
    run = lazypull(root, "--snapshotter=stargz", "run", "--rm", ref, "true")
    assert run.returncode == 1
    assert digest in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert repo not in listed(root)
    assert [p.name for p in (root / "content" / "blobs" / "sha256").iterdir()] == []
    assert [p.name for p in (root / "containers").iterdir() if p.name != ".lock"] == []
    assert not any(repo in image for image in held_images(root)), held_images(root)
    from lazypull.snapshot import MountClient

    with MountClient(root, autostart=False) as client:
        assert client.list_mounts() == []


def test_a_failed_lazy_run_keeps_what_the_name_meant_before(root: Path, registry: RegistryServer) -> None:
    """``run --pull=always`` of a tag moved to a corrupted image: the old image stays named."""
    blob, diff_id = gzip_layer({"good.txt": b"good\n"})
    push_image(registry.url, "security/failed-run-retag", "v1", [(blob, OCI_GZIP, {}, diff_id)])
    ref = f"{registry.host}/security/failed-run-retag:v1"
    first = lazypull(root, "--snapshotter=stargz", "pull", ref)
    assert first.returncode == 0, first.stderr
    push_corrupt_plain(registry, "security/failed-run-retag")
    again = lazypull(root, "--snapshotter=stargz", "run", "--rm", "--pull=always", ref, "true")
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr
    inspect = lazypull(root, "image", "inspect", ref)
    assert inspect.returncode == 0 and first.stdout.strip() in inspect.stdout, inspect.stdout
