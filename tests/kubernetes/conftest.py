"""A Kubernetes node without the kubelet: lazypull's mount server serving containerd's snapshots API (proxy
plugin ``lazypull``) and the CRI image service, Debian's containerd 1.6 with its CRI plugin using that
snapshotter (``disable_snapshot_annotations = false``), and our CRI client playing the kubelet.

Two registries: the session's plain one (``registry``) and a private one of this module whose token
server refuses anonymous pulls (``private_registry``). The mount server runs with an empty docker config
(``DOCKER_CONFIG``): the only credentials it can have are those a ``PullImage`` brings.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazypull.registry import RegistryClient
from lazypull.snapshot import MountClient
from tests.helpers.containerd import CriContainerd
from tests.helpers.cri import CriClient
from tests.helpers.registry import TEST_PASSWORD, TEST_USER, AuthRegistry, RegistryServer
from tests.helpers.rootfs import busybox_specs, push_image_layers


@dataclass
class Node:
    base: Path
    root: Path                   # the mount server's root
    containerd: CriContainerd
    image_socket: Path           # lazypull's CRI image service
    daemon_log: Path
    sandbox_layers: list[str]    # layer digests of the pause image (plain gzip: not lazy)

    def cri(self, *, through_lazypull: bool) -> CriClient:
        """A client whose image calls go to lazypull's image service, or straight to containerd."""
        return CriClient(self.containerd.socket, self.image_socket if through_lazypull else None)

    def mounts(self) -> list[str]:
        """Lines of /proc/self/mountinfo for lazypull FUSE mounts under this node's root."""
        return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if "fuse.lazypull" in line and str(self.root) in line]

    def held_digests(self) -> set[str]:
        return {m.digest for m in MountClient(self.root, autostart=False).list_mounts()}


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """docker-registry with bearer-token auth and no anonymous pulls."""
    from tests.helpers.token_server import TokenServer

    work = tmp_path_factory.mktemp("registry-private")
    token_server = TokenServer(work / "token", users={TEST_USER: TEST_PASSWORD}, anonymous_pull=False).start()
    server = RegistryServer(work / "reg", auth={"token": token_server.registry_auth_config()}).start()
    yield AuthRegistry(server, extras={"token_server": token_server})
    server.stop()
    token_server.stop()


@pytest.fixture(scope="module")
def node(registry: RegistryServer, private_registry: AuthRegistry) -> Iterator[Node]:
    base = Path(tempfile.mkdtemp(prefix="lpk8s-", dir="/tmp"))     # short: unix socket paths
    os.chmod(base, 0o700)
    root = base / "root"
    root.mkdir()
    (root / "config.toml").write_text("background_fetch = false\n")
    (base / "docker").mkdir()
    sandbox = f"{registry.host}/lazypull-test/pause:1"
    push_image_layers(base / "img", sandbox, [busybox_specs()],
                      config={"config": {"Entrypoint": ["/bin/sleep", "3600"]}})
    with RegistryClient(insecure=True) as client:
        raw, _, _ = client.resolve_image(sandbox)
    sandbox_layers = [layer["digest"] for layer in json.loads(raw)["layers"]]
    snap_sock, image_sock = base / "sn.sock", base / "cri.sock"
    ctrd = CriContainerd(base / "ctrd", snapshot_socket=snap_sock, sandbox_image=sandbox,
                         plain_http=(registry.host, private_registry.host))
    daemon_log = base / "daemon.log"
    env = dict(os.environ, DOCKER_CONFIG=str(base / "docker"))
    with daemon_log.open("wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "lazypull", "--root", str(root), "daemon", "--containerd-socket",
             str(snap_sock), "--cri-image-service", str(image_sock), "--cri-containerd-socket",
             str(ctrd.socket)], stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (snap_sock.exists() and image_sock.exists()):
            assert daemon.poll() is None, daemon_log.read_text()
            assert time.monotonic() < deadline, "the mount server's sockets did not appear"
            time.sleep(0.05)
        ctrd.base.mkdir(parents=True)
        ctrd.start()
        yield Node(base, root, ctrd, image_sock, daemon_log, sandbox_layers)
    finally:
        if ctrd.proc is not None:          # a failed test's pods: their shims would outlive containerd
            with contextlib.suppress(Exception):
                cri = CriClient(ctrd.socket)
                for pod in cri.list_pods():
                    cri.remove_pod(pod)
                cri.close()
        ctrd.stop()
        with contextlib.suppress(Exception):
            MountClient(root, autostart=False).shutdown()
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point.startswith(str(base)):
                subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(base, ignore_errors=True)
