"""``--platform`` with a single-manifest image: the config's os/architecture/variant must match, as
nerdctl refuses ("no match for platform in manifest"); an index still picks its entry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lazypull.image.platform import host_platform, platform_label
from tests.helpers.images import file
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import push_image_layers

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = platform_label(host_platform())
OTHER = "linux/arm64" if host_platform().architecture != "arm64" else "linux/amd64"


def lazypull(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    return subprocess.run([sys.executable, "-m", "lazypull", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def single(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A single-manifest image for this machine's platform (no index)."""
    os_, arch = HOST.split("/")[:2]
    return push_image_layers(tmp_path_factory.mktemp("single"), f"{registry.host}/platform/single:v1",
                             [[file("etc/motd", "hi\n")]], config={"os": os_, "architecture": arch})


def _images(root: Path) -> list[str]:
    return lazypull(root, "images", "-q").stdout.split()


@pytest.mark.parametrize("snapshotter", ["overlayfs", "stargz"])
def test_pull_of_another_platform_fails_like_nerdctl(tmp_path: Path, single: str, snapshotter: str) -> None:
    root = tmp_path / "root"
    try:
        bad = lazypull(root, f"--snapshotter={snapshotter}", "pull", "--platform", OTHER, single)
        assert bad.returncode != 0
        assert "no match for platform in manifest sha256:" in bad.stderr, bad.stderr
        assert f"the image is {HOST}, not {OTHER}" in bad.stderr
        assert _images(root) == [], "nothing named after a refused pull"
        good = lazypull(root, f"--snapshotter={snapshotter}", "pull", "--platform", HOST, single)
        assert good.returncode == 0, good.stderr
        plain = lazypull(root, f"--snapshotter={snapshotter}", "pull", single)   # no --platform: any
        assert plain.returncode == 0, plain.stderr
    finally:
        lazypull(root, "daemon", "stop")


def test_run_of_another_platform_fails_before_any_container(tmp_path: Path, single: str) -> None:
    root = tmp_path / "root"
    bad = lazypull(root, "--snapshotter=overlayfs", "run", "--rm", "--platform", OTHER, single, "/bin/true")
    assert bad.returncode != 0 and "no match for platform in manifest" in bad.stderr, bad.stderr
    # already in the store: the local image is checked too
    assert lazypull(root, "--snapshotter=overlayfs", "pull", single).returncode == 0
    again = lazypull(root, "--snapshotter=overlayfs", "run", "--rm", "--pull=never", "--platform", OTHER,
                     single, "/bin/true")
    assert again.returncode != 0 and "no match for platform in manifest" in again.stderr, again.stderr
    assert lazypull(root, "ps", "-a", "-q").stdout.strip() == ""
