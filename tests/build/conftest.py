"""Build tests: busybox base images in the local registry; leftovers of a failing test cleaned up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import Entry, busybox_specs, push_image_layers, push_lazy_image
from tests.runtime.conftest import _no_leftovers  # noqa: F401  (autouse: mounts, runc, servers)

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_CONFIG = {"config": {"Env": ["PATH=/bin", "BASE=1"], "Cmd": ["sh"], "WorkingDir": "/"}}


@pytest.fixture(scope="session")
def busybox_base(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``host/lazypull-build/busybox:gzip``: a plain gzip busybox image (downloaded and extracted)."""
    name = f"{registry.host}/lazypull-build/busybox:gzip"
    layer = busybox_specs(extra=[Entry("srv", "dir"), Entry("srv/old", data=b"old\n"),
                                 Entry("srv/dir", "dir"), Entry("srv/dir/a", data=b"a\n")])
    return push_image_layers(tmp_path_factory.mktemp("build-base"), name, [layer], config=BASE_CONFIG)


@pytest.fixture(scope="session")
def lazy_base(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """``host/lazypull-build/busybox:esgz``: busybox plus a 4 MiB layer of incompressible files, eStargz."""
    name = f"{registry.host}/lazypull-build/busybox:esgz"
    big = [Entry("data", "dir")] + [Entry(f"data/blob{i}", data=os.urandom(512 << 10)) for i in range(8)]
    from tests.helpers.images import TarEntrySpec

    specs = [TarEntrySpec(e.name, "dir" if e.type == "dir" else "file", e.data, e.mode) for e in big]
    return push_lazy_image(tmp_path_factory.mktemp("build-lazy"), name, [busybox_specs(), specs],
                           config=BASE_CONFIG)


def lazypull(root: Path, *args: str, stdin: bytes | None = None, cwd: Path | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """The real command in a fresh process, store at ``root``."""
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run([sys.executable, "-m", "lazypull", *args], input=stdin, capture_output=True,
                          env=env, cwd=cwd or REPO_ROOT, timeout=timeout)
