"""The mount server as a long-running node daemon: no memory kept per container, one server per root,
a clean stop, start-up clean-up of what a dead server or a killed pull left (issue 10)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.fs.mount import lazypull_mounts
from lazypull.registry import RegistryClient, parse_manifest
from lazypull.snapshot import MountClient, daemon_pid
from tests.helpers.registry import Fault, FaultProxy
from tests.reliability.kit import REPO_ROOT, gone, lazy_root, wait_until


@pytest.fixture
def root(tmp_path: Path, lazy_image: str) -> Iterator[Path]:
    """A store root holding the image's metadata (a lazy pull), without background fetch."""
    root = lazy_root(tmp_path / "root", lazy_image)
    yield root
    MountClient(root, autostart=False).shutdown()


def test_released_layer_trees_are_freed(root: Path, lazy_image: str) -> None:
    """30 containers' worth of mount/read/release: every released layer's tree is freed (the server kept
    each one as uncollected cyclic garbage: ~13 MB per container, RSS growing without bound)."""
    with MountClient(root) as mc:
        for i in range(30):
            layers = mc.mount_image(lazy_image, insecure=True, holder=f"c{i:02d}", wait_prefetch=False)
            top = layers[-1].path
            assert top is not None and (top / "data/0007.txt").read_bytes() == b"file 7\n" * 20
            mc.release_image(lazy_image, holder=f"c{i:02d}")
            assert mc.list_mounts() == []
        released = mc.stats()["released_trees"]
        assert released["released"] == 60, released

        def all_freed() -> bool:
            return bool(mc.stats()["released_trees"]["alive"] == 0)

        wait_until(all_freed, "the released layer trees to be freed")


def test_sigterm_stops_at_once_and_no_second_server_starts_meanwhile(
        lazy_image: str, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    """SIGTERM while a container's read waits on a registry request that does not answer: the server
    unmounts and exits without waiting for that request (it lingered until the fetch's deadline, 30 s
    and more), and a command meanwhile does not start a second server on the same root: the next
    server starts once the old one is gone (both held the root before: the pidfile was unlinked)."""
    image = lazy_image.replace(lazy_image.split("/")[0], fault_proxy.host, 1)
    root = lazy_root(tmp_path / "root", image, "read_deadline = 100.0\nprefetch = false\n")
    release = _Gate()
    try:
        with MountClient(root) as mc:
            bottom = mc.mount_image(image, insecure=True, holder="c1", wait_prefetch=False)[0].path
            assert bottom is not None
            old = daemon_pid(root)
            assert old is not None
            fault_proxy.add(Fault("hold", method="GET", path_contains="/blobs/", times=-1, release=release))
            errors: list[OSError] = []

            def read() -> None:
                try:
                    (bottom / "bin/busybox").read_bytes()
                except OSError as err:
                    errors.append(err)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            wait_until(release.waiting.is_set, "the read to reach the registry")
            os.kill(old, signal.SIGTERM)
            pid = MountClient(root).ping()["pid"]       # a command right after: waits for the old one
            assert gone(old), "a second server started while the first still ran"
            assert pid != old and not release.is_set()
            reader.join(60)
            assert errors, "the stopped server's pending read must fail"
            release.set()
            assert [m.holders for m in mc.list_mounts()] == [["c1"], ["c1"]], "the new server restores"
            assert (bottom / "bin/busybox").read_bytes()[:4] == b"\x7fELF"
            mc.release_image(image, holder="c1")
    finally:
        release.set()
        MountClient(root, autostart=False).shutdown()
    assert lazypull_mounts(root) == []


class _Gate(threading.Event):
    """A FaultProxy ``hold`` release that also tells when a request started waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def test_partial_extractions_of_killed_pulls_are_removed(lazy_image: str, fault_proxy: FaultProxy,
                                                         tmp_path: Path) -> None:
    """A full pull killed while it extracts a layer leaves ``snapshots/<hex>/.fs.partial-*`` (hundreds
    of MB each, kept forever): the next pull of that layer and the next server start remove those of
    dead processes, and leave one that a live process is writing."""
    image = lazy_image.replace(lazy_image.split("/")[0], fault_proxy.host, 1)
    root = tmp_path / "root"
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    gate = _Gate()
    with RegistryClient(insecure=True) as client:
        raw, media_type, _ = client.resolve_image(image)
    for layer in parse_manifest(raw, media_type).layers:     # the layers' downloads never answer
        fault_proxy.add(Fault("hold", method="GET", path_contains=layer.digest, times=-1, release=gate))
    pull = subprocess.Popen([sys.executable, "-m", "lazypull", "--insecure-registry",
                             "--snapshotter=overlayfs", "pull", image], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: bool(list(root.glob("snapshots/*/.fs.partial-*"))) or pull.poll() is not None,
                   "a partial extraction")
    finally:
        pull.kill()
        pull.wait()
        gate.set()
    left = list(root.glob("snapshots/*/.fs.partial-*"))
    assert left, "the killed pull was extracting a layer"
    layer_dir = left[0].parent
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        in_progress = layer_dir / f".fs.partial-{sleeper.pid}-inprogress"
        in_progress.mkdir()
        old_style = layer_dir / ".fs.partial-k1x2v9"              # named before pids were
        old_style.mkdir()
        with MountClient(root) as mc:
            mc.ping()                                              # a server start cleans up
            assert list(root.glob("snapshots/*/.fs.partial-*")) == [in_progress]
            fault_proxy.clear()
            # and a re-pull of the layer, with no server start in between
            (layer_dir / f".fs.partial-{_dead_pid()}-again").mkdir()
            again = subprocess.run([sys.executable, "-m", "lazypull", "--insecure-registry",
                                    "--snapshotter=overlayfs", "pull", image], env=env, cwd=REPO_ROOT,
                                   capture_output=True)
            assert again.returncode == 0, again.stderr.decode()
            assert list(root.glob("snapshots/*/.fs.partial-*")) == [in_progress]
            assert (layer_dir / "fs").is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
        MountClient(root, autostart=False).shutdown()


def _dead_pid() -> int:
    """The pid of a process that has exited (not reused within a test, pids are handed out in turn)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
