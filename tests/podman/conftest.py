"""Fixtures for podman / buildah through lazypull's additional layer store (docs/podman.md).

Debian's real podman 4.3 and buildah 1.28 run as root against the session's docker-registry, each
test with a private containers-storage (graphroot, runroot under its tmp dir, ``overlay`` driver)
configured through ``CONTAINERS_STORAGE_CONF``, a registries.conf marking the registry insecure
(``CONTAINERS_REGISTRIES_CONF``) and a containers.conf without systemd (``CONTAINERS_CONF``). The
store is served by a lazypull mount server of a private root, started by ``lazypull store``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.podman import remove_engine_dirs, write_engine_config
from tests.helpers.images import TarEntrySpec, file
from tests.helpers.registry import AccessLogEntry, RegistryServer
from tests.helpers.rootfs import busybox_specs, push_image_layers, push_lazy_image

LAZYPULL = Path(sys.executable).parent / "lazypull"
BIG_SIZE = 6 << 20          # an incompressible file nobody reads: what lazy pulling saves
GRACE = 1.0                 # s a released layer stays mounted in these tests


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed (scripts/install-deps.sh installs it)")
    return path


@dataclass
class LazyImage:
    ref: str                    # 127.0.0.1:PORT/repo:tag
    layers: list[str]           # blob digests, bottom first
    sizes: dict[str, int]       # blob digest -> size


@dataclass
class Engines:
    """podman and buildah on a private containers-storage whose additional layer store is ``store``."""

    work: Path
    store: Path
    root: Path                  # lazypull's store root (mount server)
    env: dict[str, str]

    @property
    def env_graph(self) -> Path:
        """containers-storage's graphroot."""
        return self.work / "engine" / "graph"

    def podman(self, *args: str, check: bool = True, timeout: float = 180,
               stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self._run(_need("podman"), *args, check=check, timeout=timeout, stdin=stdin)

    def buildah(self, *args: str, check: bool = True,
                timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return self._run(_need("buildah"), *args, check=check, timeout=timeout)

    def lazypull(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(str(LAZYPULL), "--root", str(self.root), *args, check=check, timeout=120)

    def _run(self, *argv: str, check: bool, timeout: float,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=self.work, input=stdin if stdin is not None else "")
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(argv)} exited {proc.returncode}\nstdout: {proc.stdout}\n"
                        f"stderr: {proc.stderr[-4000:]}")
        return proc

    def store_counts(self) -> dict[str, int]:
        import json

        listing = json.loads(self.lazypull("store", "--list").stdout)
        for item in listing:
            if item["mountpoint"] == str(self.store):
                return {str(k): int(v) for k, v in item["counts"].items()}
        return {}

    def mounted_layers(self) -> set[str]:
        from lazypull.snapshot import MountClient

        with MountClient(self.root, autostart=False) as client:
            return {m.digest for m in client.list_mounts()}


@pytest.fixture(scope="package")
def lazy_image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> LazyImage:
    """busybox (eStargz), then a layer with /srv/motd and a big incompressible file nobody reads."""
    work = tmp_path_factory.mktemp("podman-image")
    layers: list[list[TarEntrySpec]] = [
        busybox_specs(),
        [file("srv/motd", b"hi from the store\n"), file("srv/big.bin", os.urandom(BIG_SIZE))],
    ]
    name, digests = push_lazy_image(work, f"{registry.host}/podman/lazy:v1", layers,
                                    config={"config": {"Cmd": ["/bin/sh"],
                                                       "Env": ["PATH=/usr/bin:/bin:/usr/sbin:/sbin"]}})
    sizes = {d: registry.blob_path(d).stat().st_size for d in digests}
    return LazyImage(name, digests, sizes)


@pytest.fixture(scope="package")
def plain_image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> LazyImage:
    """The busybox image as plain gzip layers (no TOC): the store must leave it to podman."""
    work = tmp_path_factory.mktemp("podman-plain")
    layers: list[list[TarEntrySpec]] = [busybox_specs(), [file("srv/motd", b"plain hi\n")]]
    name = push_image_layers(work, f"{registry.host}/podman/plain:v1", layers)
    return LazyImage(name, [], {})


@contextlib.contextmanager
def open_engines(work: Path, registry_host: str, *store_args: str) -> Iterator[Engines]:
    """A lazypull store served at ``work/store`` (``lazypull [STORE_ARGS] store``) and podman/buildah
    configured to use it; everything removed and unmounted afterwards."""
    root = work / "lazypull"
    root.mkdir(parents=True)
    (root / "config.toml").write_text("[fs]\nbackground_fetch = false\n")
    store = work / "store"
    env = write_engine_config(work / "engine", registry_host, store)
    eng = Engines(work, store, root, env)
    out = eng.lazypull(*store_args, "store", "--grace", str(GRACE), str(store))
    assert f'additionallayerstores = ["{store}:ref"]' in out.stdout
    try:
        yield eng
    finally:
        eng.podman("rm", "-a", "-f", check=False)
        eng.podman("rmi", "-a", "-f", check=False)
        subprocess.run(["umount", "-R", str(work / "engine" / "graph" / "overlay")], capture_output=True)
        remove_engine_dirs(work / "engine")
        eng.lazypull("store", "--stop", str(store), check=False)
        from lazypull.snapshot import MountClient

        MountClient(root, autostart=False).shutdown()


@pytest.fixture
def engines(tmp_path: Path, registry: RegistryServer) -> Iterator[Engines]:
    """A lazypull store served at ``tmp_path/store`` and podman/buildah configured to use it."""
    with open_engines(tmp_path, registry.host) as eng:
        yield eng


def layer_bytes(log: list[AccessLogEntry], digests: list[str]) -> int:
    """Bytes of these blobs the registry sent (GETs, whole or ranges)."""
    return sum(e.bytes for e in log if e.method == "GET" and any(d in e.path for d in digests))
