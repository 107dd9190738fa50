"""The lazy read path under network faults: trickling answers, a registry that goes down and comes back,
corrupted answers (issue 10 items 2, 3 and 11).

A layer is served from the real docker-registry through the tests' :class:`FaultProxy` (or, for
corruption, through the layer kit's :class:`FaultySource`), with small limits so each case is quick.
The tests count requests and compare bytes; they never time anything.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.fs.config import FsConfig
from lazypull.fs.fuse import FuseError
from lazypull.fs.layer import LayerTree
from lazypull.fs.remote import FileRangeSource
from lazypull.registry import NetLimits, RegistryClient, RetryPolicy, parse_reference
from tests.helpers.registry import Fault, FaultProxy
from tests.snapshot.layerkit import FILES, Blob, FaultySource, build_blob, lookup_path, open_tree, push_blob

LIMITS = NetLimits(deadline=5.0, min_rate=5000.0, rate_window=0.5, down_failures=3, down_after=0.2,
                   probe_interval=0.1)
CONFIG = FsConfig(prefetch=False, background_fetch=False, read_deadline=20.0, whole_file_max=0,
                  neighbour_window=0, retry_initial=0.05, retry_max=0.2, warm_connections=0)


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Blob:
    return build_blob(tmp_path_factory.mktemp("blob"))


@pytest.fixture
def tree(blob: Blob, fault_proxy: FaultProxy, unique_repo: str, tmp_path: Path) -> Iterator[LayerTree]:
    """The layer served from the registry through the proxy; every chunk read is a request."""
    push_blob(f"http://127.0.0.1:{fault_proxy.upstream_port}", unique_repo, blob.path.read_bytes())
    client = RegistryClient(insecure=True, retry=RetryPolicy(attempts=1), limits=LIMITS)
    source = client.blob_source(parse_reference(f"{fault_proxy.host}/{unique_repo}:x"), blob.digest,
                                blob.result.blob_size)
    layer = open_tree(blob, tmp_path, config=CONFIG, source=source)
    fault_proxy.clear()
    yield layer
    layer.close()
    client.close()


def _blob_gets(proxy: FaultProxy) -> list[str | None]:
    return [r.fault for r in proxy.requests if r.method == "GET" and "/blobs/" in r.path]


def test_trickling_answer_is_abandoned_and_its_waiters_get_the_retry(tree: LayerTree,
                                                                     fault_proxy: FaultProxy) -> None:
    """A fetch whose answer trickles is given up at its own deadline and asked again on a new connection;
    every reader of the same chunk gets the second answer (none waits out the first, none gets EIO)."""
    ino = lookup_path(tree, "bin/big")
    fault_proxy.add(Fault("trickle", method="GET", path_contains="/blobs/", after_bytes=10, interval=0.1))
    results: list[bytes | BaseException] = []

    def read() -> None:
        try:
            results.append(tree.read(ino, 0, 1000))
        except BaseException as err:        # reported below, with the others' results
            results.append(err)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(60)
    assert results == [FILES["bin/big"][:1000]] * 4
    assert _blob_gets(fault_proxy) == ["trickle", None]
    assert tree.stats.retries == 1


def test_registry_down_fails_fast_and_recovers_at_once(tree: LayerTree, fault_proxy: FaultProxy) -> None:
    """While the registry is known down, reads fail without waiting out their deadline (or asking it
    more than once per probe interval); the first read after it is back is served."""
    names = ["etc/hello.txt", "usr/lib/one", "bin/big", "etc/setuid"]
    inos = [lookup_path(tree, n) for n in names]
    down = fault_proxy.add(Fault("drop", method="GET", path_contains="/blobs/", times=-1))
    with pytest.raises(FuseError) as first:
        tree.read(inos[0], 0, 100)
    assert first.value.errno == errno.EIO
    tried = len(_blob_gets(fault_proxy))
    assert tried >= LIMITS.down_failures
    for ino in inos[1:3]:              # known down now: each read fails at once, at most a trial each
        with pytest.raises(FuseError) as again:
            tree.read(ino, 0, 100)
        assert again.value.errno == errno.EIO
    assert len(_blob_gets(fault_proxy)) - tried <= 2
    down.times = 0                     # the registry is back
    time.sleep(LIMITS.probe_interval * 2)
    assert tree.read(inos[3], 0, 100) == FILES[names[3]][:100]
    assert tree.read(inos[1], 0, 100) == FILES[names[1]][:100]
    assert _blob_gets(fault_proxy)[-2:] == [None, None]


def test_not_found_is_not_retried(tree: LayerTree, fault_proxy: FaultProxy) -> None:
    """The read path's one retry loop retries what may pass (not a 404), and the client under it tries
    each request once."""
    ino = lookup_path(tree, "etc/hello.txt")
    fault_proxy.add(Fault("status", method="GET", path_contains="/blobs/", status=503, times=2))
    assert tree.read(ino, 0, 100) == FILES["etc/hello.txt"][:100]
    assert _blob_gets(fault_proxy) == ["status", "status", None]
    fault_proxy.clear()
    fault_proxy.add(Fault("status", method="GET", path_contains="/blobs/", status=404, times=-1,
                          body=b'{"errors":[{"code":"BLOB_UNKNOWN"}]}'))
    with pytest.raises(FuseError):
        tree.read(lookup_path(tree, "usr/lib/one"), 0, 100)
    assert _blob_gets(fault_proxy) == ["status"]


def test_corrupt_answers_are_retried_until_one_verifies(blob: Blob, tmp_path: Path) -> None:
    """Corrupted answers are asked again like failed requests, until the deadline, not just once."""
    src = FaultySource(FileRangeSource(blob.path))
    layer = open_tree(blob, tmp_path, config=CONFIG, source=src)
    try:
        ino = lookup_path(layer, "etc/hello.txt")
        src.requests.clear()
        src.corrupt = 3                  # the next three answers each have a byte flipped
        assert layer.read(ino, 0, 100) == FILES["etc/hello.txt"][:100]
        assert len(src.requests) == 4 and src.corrupt == 0
        assert layer.stats.verify_failures == 3
    finally:
        layer.close()

