"""``DeferredSource``: the registry blob source of a layer is made at its first read, once however many
reads come at once, never for what needs no read (size, description, a warm-up asked before it); an
error making it reaches the read that needed it, and the next read tries again. Over the real registry
(through the recording proxy: the warm-up's HEADs are counted there)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from lazypull.errors import MountError
from lazypull.registry import NotFoundError, RegistryBlobSource, RegistryClient, RetryPolicy, parse_reference
from lazypull.snapshot.deferred import DeferredSource
from tests.helpers.registry import FaultProxy
from tests.snapshot.layerkit import push_blob

DATA = os.urandom(300_000)


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(insecure=True, retry=RetryPolicy(attempts=1)) as made:
        yield made


def _heads(proxy: FaultProxy) -> int:
    return sum(1 for r in proxy.requests if r.method == "HEAD" and "/blobs/" in r.path)


class Maker:
    """``make`` for a DeferredSource: counts its calls; ``fail`` makes the next ones raise."""

    def __init__(self, client: RegistryClient, ref: str, digest: str, *, first_waits: bool = False) -> None:
        self.client, self.ref, self.digest = client, parse_reference(ref), digest
        self.calls = 0
        self.fail: str | None = None
        self._lock = threading.Lock()
        self._second = threading.Event()
        self._first_waits = first_waits

    def __call__(self) -> RegistryBlobSource:
        with self._lock:
            self.calls += 1
            calls = self.calls
        if calls > 1:
            self._second.set()
        elif self._first_waits:     # a second make (none must come) would end the wait at once
            self._second.wait(1.0)
        if self.fail is not None:
            raise MountError(self.fail)
        return self.client.blob_source(self.ref, self.digest, len(DATA))


def _pushed(proxy: FaultProxy, repo: str) -> tuple[str, str]:
    digest = push_blob(f"http://127.0.0.1:{proxy.upstream_port}", repo, DATA)
    return f"{proxy.host}/{repo}:1", digest


def test_made_at_the_first_read_and_a_warm_up_waits_for_it(fault_proxy: FaultProxy, unique_repo: str,
                                                           client: RegistryClient) -> None:
    ref, digest = _pushed(fault_proxy, unique_repo)
    maker = Maker(client, ref, digest)
    source = DeferredSource(maker, parse_reference(ref), digest, len(DATA))
    fault_proxy.clear()
    assert (source.size, source.describe()) == (len(DATA), f"{parse_reference(ref)}@{digest}")
    assert source.warm(2, interval=0.0) is False, "nothing to warm before the source is made"
    assert (maker.calls, source.made, fault_proxy.requests) == (0, False, [])
    assert source.read_ranges([(0, 100), (200_000, 50)]) == [DATA[:100], DATA[200_000:200_050]]
    assert (maker.calls, source.made) == (1, True)
    assert any(r.method == "GET" and digest in r.path for r in fault_proxy.requests), "read from the registry"
    assert source.read_ranges([(299_990, 10)]) == [DATA[-10:]]
    assert maker.calls == 1
    # the warm-up asked for before the first read was done right after the source was made (its HEADs
    # come from threads of their own: waited for, then counted)
    _wait(lambda: _heads(fault_proxy) >= 2, "the remembered warm-up")
    assert _heads(fault_proxy) == 2


def test_concurrent_first_reads_make_it_once(fault_proxy: FaultProxy, unique_repo: str,
                                             client: RegistryClient) -> None:
    ref, digest = _pushed(fault_proxy, unique_repo)
    maker = Maker(client, ref, digest, first_waits=True)
    source = DeferredSource(maker, parse_reference(ref), digest, len(DATA))
    start = threading.Barrier(8)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def read(i: int) -> None:
        start.wait()
        try:
            results.append(source.read_ranges([(i * 1000, 1000)])[0])
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and maker.calls == 1
    assert sorted(results) == sorted(DATA[i * 1000:(i + 1) * 1000] for i in range(8))


def test_an_error_making_it_reaches_the_read_and_the_next_read_retries(
        fault_proxy: FaultProxy, unique_repo: str, client: RegistryClient) -> None:
    ref, digest = _pushed(fault_proxy, unique_repo)
    maker = Maker(client, ref, digest)
    maker.fail = "no registry client: credentials unreadable"
    source = DeferredSource(maker, parse_reference(ref), digest, len(DATA))
    with pytest.raises(MountError, match=r"^no registry client: credentials unreadable$"):
        source.read_ranges([(0, 10)])
    assert not source.made
    maker.fail = None
    assert source.read_ranges([(0, 10)]) == [DATA[:10]]
    assert (maker.calls, source.made) == (2, True)
    missing = DeferredSource(Maker(client, ref, "sha256:" + "0" * 64), parse_reference(ref),
                             "sha256:" + "0" * 64, 10)
    with pytest.raises(NotFoundError, match=r"^reading ranges of blob sha256:0{64} .* status 404"):
        missing.read_ranges([(0, 10)])          # the source's own error, unchanged


def _wait(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
