"""Issue 9, finding 2: the Python processes lazypull starts do not import from the current directory.

Root types ``lazypull pull`` (which starts the mount server) or ``lazypull run -d`` (which starts a
supervising ``lazypull start --attach``) in a directory someone else controls. A ``subprocess.py`` there
(imported by the server's launcher) and a ``lazypull/`` package there (imported by ``python -m
lazypull``) must change nothing: they would run as root.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import busybox_specs, push_image_layers

LAZYPULL = Path(sys.executable).with_name("lazypull")      # the console script root types


@pytest.fixture(scope="module")
def busybox_image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = f"{registry.host}/security/child:busybox"
    return push_image_layers(tmp_path_factory.mktemp("child-image"), name, [busybox_specs()],
                             config={"config": {"Env": ["PATH=/bin"]}})


@pytest.fixture
def hostile_cwd(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(directory, marker): a directory with ``subprocess.py`` and ``lazypull/`` that write the marker."""
    cwd = tmp_path / "untrusted"
    marker = tmp_path / "imported-from-cwd"
    payload = (f"import os, sys\nwith open({str(marker)!r}, 'a') as f:\n"
               f"    f.write(__name__ + ' ' + ' '.join(sys.argv) + '\\n')\n")
    (cwd / "lazypull").mkdir(parents=True)
    (cwd / "subprocess.py").write_text(payload)
    (cwd / "lazypull" / "__init__.py").write_text(payload)
    (cwd / "lazypull" / "__main__.py").write_text(payload)
    yield cwd, marker
    root = tmp_path / "root"
    from lazypull.runtime.overlay import mountpoints, unmount
    from lazypull.snapshot import MountClient

    with contextlib.suppress(Exception):
        MountClient(root, autostart=False).shutdown()
    for point in sorted((m for m in mountpoints() if m.startswith(str(root) + "/")), key=len, reverse=True):
        with contextlib.suppress(Exception):
            unmount(Path(point))


def lazypull(root: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run([str(LAZYPULL), "--root", str(root), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_mount_server_started_from_a_hostile_directory(tmp_path: Path, hostile_cwd: tuple[Path, Path],
                                                       busybox_image: str) -> None:
    cwd, marker = hostile_cwd
    root = tmp_path / "root"
    pulled = lazypull(root, cwd, "--snapshotter=stargz", "pull", busybox_image)
    assert pulled.returncode == 0, pulled.stderr
    assert not marker.exists(), marker.read_text()
    from lazypull.snapshot import MountClient

    with MountClient(root, autostart=False) as client:
        assert client.ping()["pid"] > 0          # the server runs (a cwd lazypull/ broke it)


def test_run_detached_from_a_hostile_directory(tmp_path: Path, hostile_cwd: tuple[Path, Path],
                                               busybox_image: str) -> None:
    cwd, marker = hostile_cwd
    root = tmp_path / "root"
    started = lazypull(root, cwd, "--snapshotter=overlayfs", "run", "-d", busybox_image, "echo", "supervised")
    assert started.returncode == 0, started.stderr
    container = started.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 60
    logs = lazypull(root, cwd, "logs", container)
    while "supervised" not in logs.stdout and time.monotonic() < deadline:
        time.sleep(0.2)
        logs = lazypull(root, cwd, "logs", container)
    assert logs.stdout == "supervised\n", logs.stderr
    assert not marker.exists(), marker.read_text()
    removed = lazypull(root, cwd, "rm", "-f", container)
    assert removed.returncode == 0, removed.stderr
