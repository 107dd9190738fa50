"""The mount server as a long-running node daemon: no memory kept per container, one server per root,
a clean stop, start-up clean-up of what a dead server or a killed pull left (issue 10)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lazypull.fs.mount import lazypull_mounts
from lazypull.image import Store, pull_image
from lazypull.registry import RegistryClient
from lazypull.snapshot import MountClient, daemon_pid
from tests.helpers.images import TarEntrySpec, directory
from tests.helpers.registry import Fault, FaultProxy, RegistryServer
from tests.helpers.rootfs import busybox_specs, push_lazy_image

REPO_ROOT = Path(__file__).resolve().parents[2]
# enough files that a layer's TOC, inodes and chunk lists weigh something (the leak was ~13 MB each)
MANY_FILES = [directory("data/"), *(TarEntrySpec(f"data/{i:04d}.txt", content=f"file {i}\n".encode() * 20)
                                    for i in range(400))]


def wait_until(predicate: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    """Poll ``predicate()`` until true; fail naming ``what`` (a generous bound: CI is a busy machine)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie counts: its threads and files are gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z" and len(os.listdir(f"/proc/{pid}/task")) <= 1


@pytest.fixture(scope="module")
def lazy_image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A two-layer eStargz image (busybox, then 400 small files) in the session's registry."""
    work = tmp_path_factory.mktemp("reliability-image")
    name, _ = push_lazy_image(work, f"{registry.host}/reliability/daemon:v1",
                              [busybox_specs(), MANY_FILES])
    return name


def lazy_root(root: Path, image: str, config: str = "") -> Path:
    """``root`` holding the image's metadata (a lazy pull), without background fetch."""
    with RegistryClient(insecure=True) as client:
        pull_image(Store(root), client, image, fetch_layers=False)
    (root / "config.toml").write_text("background_fetch = false\nprefetch_timeout = 5.0\n" + config)
    return root


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
