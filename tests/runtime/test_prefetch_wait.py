"""``create`` and the prefetch: by default the container is created (and may start) while its layers'
prioritized files still download, and a read of them waits for that download, never a second request;
with ``prefetch_wait = true`` it waits for the prefetch first, as stargz-snapshotter does."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path

import pytest

from tests.helpers.registry import Fault, FaultProxy, RegistryServer
from tests.helpers.rootfs import Entry, busybox_specs, push_lazy_image
from tests.runtime.test_cli_run import lazypull, stop_daemon

MOTD = b"prioritized and prefetched\n" * 1000
PREFETCH_RANGE = r"^bytes=\d{1,4}-"    # the prioritized files come first in the blob; the TOC last


@pytest.fixture(scope="module")
def prioritized_image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(repository path and tag, layer digest) of a busybox image whose srv/motd is prioritized."""
    ref = f"{registry.host}/lazypull-runtime/prefetch:v1"
    _, digests = push_lazy_image(tmp_path_factory.mktemp("prefetch-image"), ref,
                                 [busybox_specs(extra=[Entry("srv/motd", data=MOTD)])],
                                 prioritized_files=["bin/busybox", "srv/motd"])
    return "lazypull-runtime/prefetch:v1", digests[0]


def _prefetch_state(root: Path, digest: str) -> str:
    out = lazypull(root, "fs", "stats", "--json")
    assert out.returncode == 0, out.stderr.decode()
    return str(json.loads(out.stdout)["layers"][digest]["prefetch_state"])


def _prefetch_requests(proxy: FaultProxy, digest: str) -> int:
    return sum(1 for r in proxy.requests if digest in r.path and r.method == "GET"
               and re.search(PREFETCH_RANGE, r.headers.get("Range", "")))


@pytest.mark.parametrize("wait", [False, True], ids=["default", "prefetch_wait"])
def test_create_and_the_prefetch(tmp_path: Path, fault_proxy: FaultProxy, prioritized_image: tuple[str, str],
                                 wait: bool) -> None:
    path, digest = prioritized_image
    name = f"{fault_proxy.host}/{path}"
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text("background_fetch = false\nprefetch_timeout = 60\n"
                                      + ("prefetch_wait = true\n" if wait else ""))
    release = threading.Event()
    fault_proxy.add(Fault("hold", method="GET", path_contains=digest, range_pattern=PREFETCH_RANGE, times=1,
                          release=release))
    try:
        assert lazypull(root, "--insecure-registry", "pull", name).returncode == 0
        done: list[subprocess.CompletedProcess[bytes]] = []
        worker = threading.Thread(target=lambda: done.append(    # the prefetch is held at the proxy
            lazypull(root, "--insecure-registry", "create", "--name", "c1", name,
                     "/bin/busybox", "cat", "/srv/motd")))
        worker.start()
        worker.join(15 if not wait else 3)
        if wait:
            assert not done, "create returned before the prefetch it must wait for"
            assert _prefetch_state(root, digest) == "running"
            release.set()
            worker.join(60)
        else:
            assert done, "create waited for the prefetch"
            assert _prefetch_state(root, digest) == "running"
            threading.Timer(1.0, release.set).start()   # the container's read waits for the prefetch
        assert done and done[0].returncode == 0, done and done[0].stderr.decode()
        result = lazypull(root, "start", "--attach", "c1")
        assert (result.returncode, result.stdout) == (0, MOTD), result.stderr.decode()
        assert _prefetch_state(root, digest) == "done"
        assert _prefetch_requests(fault_proxy, digest) == 1, "the read made a second request for the data"
    finally:
        release.set()
        lazypull(root, "rm", "-f", "c1")
        stop_daemon(root)
