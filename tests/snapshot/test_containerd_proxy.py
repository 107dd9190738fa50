"""The containerd proxy-plugin snapshotter: containerd 1.6 (Debian) configured with ``lazypull`` as a
snapshot proxy plugin, ``ctr-remote image rpull`` makes the eStargz layer a remote snapshot (mounted lazily,
not downloaded), the plain layer is applied by containerd as usual, and a container snapshot on top
shows both layers' files through overlayfs."""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.snapshot import MountClient
from tests.helpers.containerd import ContainerdDaemon, ContainerdError, Ctr
from tests.helpers.registry import RegistryServer
from tests.snapshot.layerkit import FILES, build_blob, gzip_layer, push_image

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


class _ProxyContainerd(ContainerdDaemon):
    snapshot_socket: Path

    def config_text(self) -> str:
        return super().config_text() + (
            "[proxy_plugins]\n"
            "  [proxy_plugins.lazypull]\n"
            '    type = "snapshot"\n'
            f'    address = "{self.snapshot_socket}"\n')


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Ctr, Path, Path]]:
    base = Path(tempfile.mkdtemp(prefix="lpsn-", dir="/tmp"))
    root = base / "root"
    sock = base / "sn.sock"
    root.mkdir()
    (root / "config.toml").write_text("background_fetch = false\n")
    daemon = subprocess.Popen([sys.executable, "-m", "lazypull", "--root", str(root), "--insecure-registry",
                               "daemon", "--containerd-socket", str(sock)],
                              stdout=subprocess.DEVNULL, stderr=open(base / "daemon.log", "wb"))  # noqa: SIM115
    ctrd = _ProxyContainerd(base / "ctrd")
    ctrd.snapshot_socket = sock
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert daemon.poll() is None, (base / "daemon.log").read_text()
            assert time.monotonic() < deadline, "snapshotter socket did not appear"
            time.sleep(0.05)
        ctrd.base.mkdir(parents=True)
        ctrd.start()
        yield Ctr(ctrd.socket, base), root, base
    finally:
        ctrd.stop()
        MountClient(root, autostart=False).shutdown()
        daemon.wait(20)
        for line in subprocess.run(["mount"], capture_output=True, text=True).stdout.splitlines():
            if str(base) in line:
                subprocess.run(["umount", "-l", line.split()[2]], check=False)


def _chain_ids(diff_ids: list[str]) -> list[str]:
    chain = [diff_ids[0]]
    for diff_id in diff_ids[1:]:
        chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


def test_rpull_makes_remote_snapshots_and_containers_see_the_files(
        setup: tuple[Ctr, Path, Path], registry: RegistryServer, unique_repo: str) -> None:
    ctr, root, base = setup
    blob = build_blob(base, prioritized_files=["etc/hello.txt"])
    plain, plain_diff = gzip_layer({"base.txt": b"base\n"})
    # The lazy layer at the bottom: containerd 1.6 fetches every layer above the first one it must apply.
    push_image(registry.url, unique_repo, "v1", [
        (blob.path.read_bytes(), OCI_GZIP, blob.annotations, blob.result.diff_id),
        (plain, OCI_GZIP, {}, plain_diff),
    ])
    ref = f"{registry.host}/{unique_repo}:v1"
    ctr.run(["image", "rpull", "--plain-http", "--snapshotter", "lazypull", ref], tool="ctr-remote",
            timeout=120)
    mounts = [ln for ln in subprocess.run(["mount"], capture_output=True, text=True).stdout.splitlines()
              if "fuse.lazypull" in ln and str(root) in ln]
    assert len(mounts) == 1, "one lazy mount for the eStargz layer"
    stats = MountClient(root, autostart=False).stats()["layers"][blob.digest]
    assert stats["bytes_fetched"] < blob.result.blob_size, "the layer was not downloaded whole"
    content = ctr.run(["content", "ls", "-q"]).decode().split()
    assert blob.digest not in content, "containerd did not fetch the lazy layer"
    assert "sha256:" + hashlib.sha256(plain).hexdigest() in content, "the plain layer was fetched"

    chain = _chain_ids([blob.result.diff_id, plain_diff])
    listing = ctr.run(["snapshots", "--snapshotter", "lazypull", "ls"]).decode()
    assert chain[0] in listing and chain[1] in listing
    ctr.run(["snapshots", "--snapshotter", "lazypull", "prepare", "ctr-1", chain[1]])
    target = base / "rootfs"
    target.mkdir()
    command = ctr.run(["snapshots", "--snapshotter", "lazypull", "mounts", str(target), "ctr-1"]).decode()
    subprocess.run(shlex.split(command.strip()), check=True)
    try:
        assert (target / "base.txt").read_bytes() == b"base\n"
        assert (target / "etc/hello.txt").read_bytes() == FILES["etc/hello.txt"]
        assert (target / "bin/big").read_bytes() == FILES["bin/big"]
        assert not (target / "etc/removed").exists()
        (target / "new.txt").write_text("written")
    finally:
        subprocess.run(["umount", str(target)], check=True)
    ctr.run(["snapshots", "--snapshotter", "lazypull", "rm", "ctr-1"])
    info = ctr.run(["snapshots", "--snapshotter", "lazypull", "info", chain[0]]).decode()
    assert "containerd.io/snapshot/remote" in info


def test_ctr_run_on_a_lazily_pulled_image(setup: tuple[Ctr, Path, Path], registry: RegistryServer,
                                          unique_repo: str) -> None:
    from tests.helpers.rootfs import busybox_specs, push_lazy_image

    ctr, root, base = setup
    name, digests = push_lazy_image(base / "img", f"{registry.host}/{unique_repo}:v1", [busybox_specs()])
    ctr.run(["image", "rpull", "--plain-http", "--snapshotter", "lazypull", name], tool="ctr-remote",
            timeout=120)
    content = ctr.run(["content", "ls", "-q"]).decode().split()
    assert not set(digests) & set(content), "the layer stayed in the registry"
    out = ctr.run(["run", "--rm", "--snapshotter", "lazypull", name, "lazy-ctr-1",
                   "/bin/busybox", "sh", "-c", "echo ran; /bin/busybox grep -c alice /etc/passwd"],
                  timeout=120)
    assert out.decode().split() == ["ran", "1"]
    stats = MountClient(root, autostart=False).stats()["layers"]
    assert set(digests) <= set(stats)


def test_a_killed_server_leaves_containerds_mounted_snapshot_readable(
        setup: tuple[Ctr, Path, Path], registry: RegistryServer, unique_repo: str) -> None:
    """Issue 10 item 9 through containerd: the server killed (-9) under a mounted container snapshot
    whose lower is a remote snapshot; the next server (started as systemd would) serves the same lazy
    mount, so a file opened before the kill and files read after it have the right bytes, and containerd
    talks to the new server (the lower answered ENOTCONN for good before the keeper)."""
    import os
    import signal

    from lazypull.snapshot import daemon_pid

    ctr, root, base = setup
    blob = build_blob(base, prioritized_files=["etc/hello.txt"])
    push_image(registry.url, unique_repo, "v1", [(blob.path.read_bytes(), OCI_GZIP, blob.annotations,
                                                  blob.result.diff_id)])
    ref = f"{registry.host}/{unique_repo}:v1"
    ctr.run(["image", "rpull", "--plain-http", "--snapshotter", "lazypull", ref], tool="ctr-remote",
            timeout=120)
    ctr.run(["snapshots", "--snapshotter", "lazypull", "prepare", "ctr-1", blob.result.diff_id])
    target = base / "rootfs"
    target.mkdir()
    command = ctr.run(["snapshots", "--snapshotter", "lazypull", "mounts", str(target), "ctr-1"]).decode()
    subprocess.run(shlex.split(command.strip()), check=True)
    new: subprocess.Popen[bytes] | None = None
    try:
        assert (target / "etc/hello.txt").read_bytes() == FILES["etc/hello.txt"]
        with open(target / "bin/big", "rb") as kept:
            head = kept.read(1000)
            pid = daemon_pid(root)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while daemon_pid(root) == pid and time.monotonic() < deadline:
                time.sleep(0.05)
            argv = [sys.executable, "-m", "lazypull", "--root", str(root), "--insecure-registry", "daemon",
                    "--containerd-socket", str(base / "sn.sock")]
            new = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                   stderr=open(base / "daemon2.log", "wb"))  # noqa: SIM115
            while daemon_pid(root) in (None, pid):
                assert new.poll() is None and time.monotonic() < deadline + 30, "no new server"
                time.sleep(0.05)
            assert len(MountClient(root).list_mounts()) == 1      # listening and restored
            assert head + kept.read() == FILES["bin/big"]
        assert (target / "bin/big").read_bytes() == FILES["bin/big"]
        deadline = time.monotonic() + 60
        while True:         # containerd redials its proxy plugin after a backoff (grpc: up to seconds)
            try:
                listing = ctr.run(["snapshots", "--snapshotter", "lazypull", "ls"]).decode()
                break
            except ContainerdError:
                assert time.monotonic() < deadline, "containerd did not reach the new server"
                time.sleep(0.5)
        assert blob.result.diff_id in listing
    finally:
        subprocess.run(["umount", str(target)], check=False)
        if new is not None:
            MountClient(root, autostart=False).shutdown()
            new.wait(30)
