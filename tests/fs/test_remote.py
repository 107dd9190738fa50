"""RemoteBlob.fetch: which failures are retried until the deadline, and which pass straight through; a
registry blob's reads are tried once each by the client (RemoteBlob's loop is the only one); a miss
counts in the server's activity."""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx
import pytest

from lazypull.fs.config import FsConfig
from lazypull.fs.layer.activity import Activity
from lazypull.fs.remote import FetchError, RangeSource, RemoteBlob
from lazypull.fs.stats import LayerStats
from lazypull.registry import RegistryClient, RegistryError, parse_reference
from tests.helpers.registry import Fault, FaultProxy
from tests.snapshot.layerkit import push_blob

BLOB = bytes(range(256)) * 16


class _Flaky:
    """A range source that raises the given errors, one per call, then serves ``BLOB``."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    @property
    def size(self) -> int:
        return len(BLOB)

    def read_ranges(self, ranges: Sequence[tuple[int, int]], deadline: float | None = None) -> list[bytes]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return [BLOB[off : off + length] for off, length in ranges]

    def describe(self) -> str:
        return "flaky-blob"


def _remote(source: RangeSource) -> tuple[RemoteBlob, LayerStats]:
    stats = LayerStats("sha256:" + "a" * 64)
    return RemoteBlob(source, stats, FsConfig(retry_initial=0.01, retry_max=0.02)), stats


@pytest.mark.parametrize("error", [
    OSError("connection reset"),
    ValueError("bad range answer"),
    httpx.ReadError("server went away"),
    FetchError("short answer"),
], ids=["os", "value", "httpx", "ours"])
def test_transient_failures_are_retried(error: Exception) -> None:
    source = _Flaky(error, error)
    remote, stats = _remote(source)
    assert remote.fetch([(10, 5), (100, 3)], time.monotonic() + 5) == [BLOB[10:15], BLOB[100:103]]
    assert source.calls == 3 and stats.retries == 2 and stats.requests == 3


def test_failures_past_the_deadline_name_the_blob_and_attempts() -> None:
    source = _Flaky(*[httpx.ConnectError("refused")] * 100)
    remote, _ = _remote(source)
    with pytest.raises(FetchError, match=r"flaky-blob failed after \d+ attempt\(s\): refused") as exc:
        remote.fetch([(0, 10)], time.monotonic() + 0.1)
    assert isinstance(exc.value.__cause__, httpx.ConnectError)


def test_programming_errors_are_not_retried() -> None:
    source = _Flaky(KeyError("bug"))
    remote, stats = _remote(source)
    with pytest.raises(KeyError):
        remote.fetch([(0, 10)], time.monotonic() + 5)
    assert source.calls == 1 and stats.retries == 0


def test_registry_reads_are_retried_by_remote_blob_alone(fault_proxy: FaultProxy, unique_repo: str) -> None:
    """The client's own policy retries a 503 up to 5 times; on the lazy path each of RemoteBlob's tries is
    one GET, so two 503s cost three GETs, all counted in the layer's stats (and the origin probe reads the
    same way)."""
    digest = push_blob(f"http://127.0.0.1:{fault_proxy.upstream_port}", unique_repo, BLOB)
    client = RegistryClient(insecure=True)
    source = client.blob_source(parse_reference(f"{fault_proxy.host}/{unique_repo}:x"), digest, len(BLOB))
    remote, stats = _remote(source)
    try:
        fault_proxy.clear()
        fault_proxy.add(Fault("status", method="GET", path_contains="/blobs/", status=503, times=2))
        assert remote.fetch([(10, 5), (300, 7)], time.monotonic() + 10) == [BLOB[10:15], BLOB[300:307]]
        gets = [r for r in fault_proxy.requests if r.method == "GET" and "/blobs/" in r.path]
        assert len(gets) == 3 and stats.requests == 3 and stats.retries == 2
        fault_proxy.clear()
        fault_proxy.add(Fault("status", method="GET", path_contains="/blobs/", status=503, times=1))
        with pytest.raises(RegistryError, match="503"):
            source.read_ranges([(0, 4)])            # the source itself: one try
        assert len([r for r in fault_proxy.requests if r.method == "GET"]) == 1
    finally:
        client.close()


def test_a_miss_counts_in_the_servers_activity() -> None:
    """One begin/end pair counts a miss for the layer (its background fetch yields) and for the server
    (every layer's background fetch waits for quiet)."""
    activity = Activity()
    remote = RemoteBlob(_Flaky(), LayerStats("sha256:" + "a" * 64), FsConfig(background_pause=60.0),
                        activity=activity)
    assert remote.demand_quiet() and activity.quiet_remaining(5.0) == 0
    remote.demand_begin()
    assert not remote.demand_quiet() and activity.quiet_remaining(5.0) > 0
    remote.demand_end()
    assert not remote.demand_quiet(), "quiet only background_pause after the miss"
    assert 0 < activity.quiet_remaining(5.0) <= 5.0


def test_a_flip_in_a_range_asked_the_same_way_twice_is_no_proof_of_a_corrupt_blob(
        fault_proxy: FaultProxy, unique_repo: str) -> None:
    """The whole blob in one range cannot be grown into another request shape (``_reshaped``): two
    answers with the proxy's flip at the same body offset are the same wrong bytes, yet the blob is fine.
    It is asked again (not failed as corrupt in the blob) and the third, clean answer is served."""
    digest = push_blob(f"http://127.0.0.1:{fault_proxy.upstream_port}", unique_repo, BLOB)
    client = RegistryClient(insecure=True)
    source = client.blob_source(parse_reference(f"{fault_proxy.host}/{unique_repo}:x"), digest, len(BLOB))
    remote, stats = _remote(source)
    got: list[bytes] = []

    def accept(asked: list[tuple[int, int]], datas: list[bytes]) -> list[tuple[int, int]]:
        if datas[0] != BLOB:
            return asked
        got.append(datas[0])
        return []

    try:
        fault_proxy.clear()
        fault_proxy.add(Fault("flip", method="GET", path_contains="/blobs/", offset=1000, times=2))
        remote.fetch_verified([(0, len(BLOB))], time.monotonic() + 10, accept)
        assert got == [BLOB]
        assert fault_proxy.blob_gets == ["bytes=0-4095"] * 3, "asked three times, the same way"
        assert stats.requests == 3 and stats.retries == 2
    finally:
        client.close()
