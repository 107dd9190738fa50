"""An image converted with ``--estargz-external-toc`` keeps its TOCs in the ``NAME-esgztoc`` image; a
copy made without it (skopeo copies one image) cannot be mounted lazily. A lazy pull then says once per
layer why the layer is not lazy (its TOC could not be read, the -esgztoc image is missing) and pulls it
whole, instead of falling back silently; the image still runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.cli.test_platform import lazypull
from tests.helpers.images import file
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import busybox_specs, push_image_layers

NO_TOC = re.compile(r"^layer (sha256:[0-9a-f]{64}) is eStargz/zstd:chunked but its TOC could not be read "
                    r"\(an external TOC needs the image's -esgztoc image next to it; see the mount server's "
                    r"log\): pulling it whole$", re.M)


def _lazy_mounts(root: Path) -> int:
    mounts = subprocess.run(["mount"], capture_output=True, text=True, check=True).stdout
    return sum(1 for line in mounts.splitlines() if f"{root}/" in line and "fuse.lazypull" in line)


@pytest.fixture(scope="module")
def converted(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(the external-TOC image pushed with its -esgztoc image, a copy of it alone in another repo)."""
    work = tmp_path_factory.mktemp("extoc")
    plain = push_image_layers(work / "plain", f"{registry.host}/extoc/plain:v1",
                              [busybox_specs(), [file("etc/motd", "hi\n")]])
    name = f"{registry.host}/extoc/app:ex"
    root = work / "root"
    for args in (("image", "convert", "--oci", "--estargz", "--estargz-external-toc", plain, name),
                 ("push", name)):
        done = lazypull(root, *args)
        assert done.returncode == 0, done.stderr
    copy = f"{registry.host}/extoc/copied:ex"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"docker://{name}", f"docker://{copy}"], check=True, capture_output=True, timeout=120)
    missing = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{copy}-esgztoc"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0, "skopeo copied the TOC image too: nothing would be missing"
    return name, copy


def test_copy_without_its_toc_image_says_why_once(tmp_path: Path, converted: tuple[str, str]) -> None:
    _, copy = converted
    root = tmp_path / "root"
    try:
        pulled = lazypull(root, "--snapshotter=stargz", "pull", copy)
        assert pulled.returncode == 0, pulled.stderr
        reasons = NO_TOC.findall(pulled.stderr)
        assert len(reasons) == 2 and len(set(reasons)) == 2, pulled.stderr
        assert "is not eStargz/zstd:chunked" not in pulled.stderr
        assert pulled.stderr.count("fetching layer") == 2, "progress of the whole downloads"
        assert _lazy_mounts(root) == 0
        ran = lazypull(root, "--snapshotter=stargz", "run", "--rm", copy, "cat", "/etc/motd")
        assert ran.returncode == 0 and ran.stdout == "hi\n", ran.stderr
        assert len(NO_TOC.findall(ran.stderr)) == 2, "each layer's reason once again, not once per read"
    finally:
        lazypull(root, "daemon", "stop")


def test_with_its_toc_image_the_layers_are_lazy(tmp_path: Path, converted: tuple[str, str]) -> None:
    name, _ = converted
    root = tmp_path / "root"
    try:
        pulled = lazypull(root, "--snapshotter=stargz", "pull", name)
        assert pulled.returncode == 0, pulled.stderr
        assert "pulling it whole" not in pulled.stderr and "fetching layer" not in pulled.stderr
        assert _lazy_mounts(root) == 2
    finally:
        lazypull(root, "daemon", "stop")
