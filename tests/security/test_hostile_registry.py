"""A hostile or broken registry: bad auth challenges, answers that trickle or stall.

The registry is the real docker-registry behind the tests' own :class:`FaultProxy`, which plays the
hostile part (a challenge naming ``file:///etc/shadow``, a body sent one byte at a time, a connection
that stops answering). Each case must end in one clear error naming what was wrong, and must not
change how the same client treats the registry once it behaves again.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.registry import (
    AuthError,
    NetLimits,
    RegistryClient,
    RegistryConnectionError,
    RegistryError,
    RetryPolicy,
)
from tests.helpers.registry import Fault, FaultProxy, free_port
from tests.registry.conftest import make_image, push_image, sha256

ONE_TRY = RetryPolicy(attempts=1, base_delay=0.01, max_delay=0.01, deadline=10.0)
BLOB = os.urandom(50_000)
BLOB_DIGEST = sha256(BLOB)

Setup = tuple[RegistryClient, str]


@pytest.fixture
def setup(fault_proxy: FaultProxy, unique_repo: str) -> Iterator[Setup]:
    """A client through the proxy (one try per request), and a tag whose repository holds an image."""
    client = RegistryClient(insecure=True, retry=ONE_TRY)
    ref = f"{fault_proxy.host}/{unique_repo}:v1"
    push_image(client, ref, make_image((100,)))
    client.push_blob(ref, BLOB_DIGEST, len(BLOB), BLOB)
    fault_proxy.clear()
    yield client, ref
    client.close()


def _challenge(realm: str) -> Fault:
    return Fault("status", method="GET", path_contains="/manifests/", status=401, times=-1,
                 headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="evil"'},
                 body=b'{"errors":[{"code":"UNAUTHORIZED"}]}')


# -- auth challenges (issue 9, finding 12) ------------------------------------------------------------

@pytest.mark.parametrize("realm", ["file:///etc/shadow", "ftp://127.0.0.1/token", "http:///no-host",
                                   "/relative/token"])
def test_non_http_realm_is_a_clear_error_and_poisons_nothing(setup: Setup, fault_proxy: FaultProxy,
                                                             realm: str) -> None:
    client, ref = setup
    fault = fault_proxy.add(_challenge(realm))
    with pytest.raises(AuthError, match="not an http\\(s\\) URL") as info:
        client.get_manifest(ref)
    assert "\n" not in str(info.value) and "/manifests/" in str(info.value)
    # nothing but the registry was asked: no token request went anywhere
    assert {r.path.split("?")[0].rsplit("/", 1)[0] for r in fault_proxy.requests} == {
        f"/v2/{ref.split('/', 1)[1].split(':')[0]}/manifests"}
    fault.times = 0                  # the registry behaves again: the same client works at once
    assert client.get_manifest(ref)[0]


def test_failing_realm_is_not_cached(setup: Setup, fault_proxy: FaultProxy) -> None:
    client, ref = setup
    dead = f"http://127.0.0.1:{free_port()}/token"
    fault = fault_proxy.add(_challenge(dead))
    with pytest.raises(RegistryError, match=f"127.0.0.1:{dead.split(':')[2].split('/')[0]}/token"):
        client.get_manifest(ref)
    fault.times = 0
    raw, _, _ = client.get_manifest(ref)           # asked without a token, as the registry now wants
    assert raw
    out = io.BytesIO()
    client.get_blob(ref, BLOB_DIGEST, out)
    assert out.getvalue() == BLOB
    gets = [r for r in fault_proxy.requests if r.fault is None]
    assert gets and all("Authorization" not in r.headers for r in gets)


def test_bad_challenge_at_the_ping_is_not_kept(fault_proxy: FaultProxy, unique_repo: str) -> None:
    ref = f"{fault_proxy.host}/{unique_repo}:v1"
    with RegistryClient(insecure=True, retry=ONE_TRY) as client:
        push_image(client, ref, make_image((100,)))
    # a fresh client, whose first contact (the /v2/ ping) gets the hostile challenge
    fault_proxy.clear()
    fault_proxy.add(Fault("status", method="GET", path_contains="/v2/", status=401, times=1,
                          headers={"WWW-Authenticate": 'Bearer realm="file:///etc/shadow"'}))
    with RegistryClient(insecure=True, retry=ONE_TRY) as client:
        assert client.get_manifest(ref)[0]
    assert [r.fault for r in fault_proxy.requests][-2:] == ["status", None]


# -- answers that trickle or stall (issue 9, finding 8) -----------------------------------------------

#: small limits, so that each case ends within a second or two; the defaults are minutes
LIMITS = NetLimits(deadline=2.0, min_rate=5000.0, rate_window=1.0)


@pytest.fixture
def slow_setup(fault_proxy: FaultProxy, unique_repo: str) -> Iterator[Setup]:
    client = RegistryClient(insecure=True, retry=ONE_TRY, limits=LIMITS)
    ref = f"{fault_proxy.host}/{unique_repo}:v1"
    client.push_blob(ref, BLOB_DIGEST, len(BLOB), BLOB)
    fault_proxy.clear()
    yield client, ref
    client.close()


def _blob_gets(proxy: FaultProxy) -> list[str | None]:
    return [r.fault for r in proxy.requests if r.method == "GET" and "/blobs/" in r.path]


@pytest.mark.parametrize(("fault", "message"), [
    (Fault("trickle", method="GET", path_contains="/blobs/", after_bytes=100, interval=0.05),
     "slower than the minimum rate of 5000 bytes/s"),
    (Fault("stall", method="GET", path_contains="/blobs/", after_bytes=100),
     "slower than the minimum rate of 5000 bytes/s"),
    (Fault("trickle_headers", method="GET", path_contains="/blobs/", interval=0.01),
     "slower than the minimum rate of 5000 bytes/s"),
    (Fault("trickle_headers", method="GET", path_contains="/blobs/", interval=30),
     "no complete answer within this request's deadline of 2.0s"),
], ids=["trickle", "stall", "trickled-headers", "no-answer"])
def test_blob_download_that_crawls_ends_with_a_clear_error(
        slow_setup: Setup, fault_proxy: FaultProxy, tmp_path: Path, fault: Fault, message: str) -> None:
    client, ref = slow_setup
    fault_proxy.add(fault)
    with pytest.raises(RegistryConnectionError) as info:
        client.get_blob(ref, BLOB_DIGEST, tmp_path / "blob")
    text = str(info.value)
    assert message in text and f"/blobs/{BLOB_DIGEST}" in text and "\n" not in text
    assert _blob_gets(fault_proxy) == [fault.kind]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["trickle", "stall"])
def test_range_read_that_crawls_ends_and_the_next_one_works(slow_setup: Setup, fault_proxy: FaultProxy,
                                                            kind: str) -> None:
    client, ref = slow_setup
    fault_proxy.add(Fault(kind, method="GET", path_contains="/blobs/", after_bytes=10, interval=0.05))
    with pytest.raises(RegistryConnectionError, match="minimum rate"):
        client.read_ranges(ref, BLOB_DIGEST, [(0, 20_000), (30_000, 10_000)], retry=False)
    assert client.read_range(ref, BLOB_DIGEST, 100, 50, retry=False) == BLOB[100:150]
    assert _blob_gets(fault_proxy) == [kind, None]


def test_caller_deadline_bounds_a_request(slow_setup: Setup, fault_proxy: FaultProxy) -> None:
    client, ref = slow_setup
    fault_proxy.add(Fault("stall", method="GET", path_contains="/blobs/", after_bytes=0))
    with pytest.raises(RegistryConnectionError, match=r"deadline of 0\.3s"):
        client.read_range(ref, BLOB_DIGEST, 0, 1000, retry=False, deadline=time.monotonic() + 0.3)


def test_slow_answer_above_the_floor_finishes_past_the_base_deadline(fault_proxy: FaultProxy,
                                                                    unique_repo: str, tmp_path: Path) -> None:
    """The deadline grows with the size: 50 kB at ~40 kB/s take longer than the 0.3 s base deadline,
    yet stay above the 5 kB/s floor; the same answer slowed to a trickle fails."""
    limits = NetLimits(deadline=0.3, min_rate=5000.0, rate_window=1.0)
    with RegistryClient(insecure=True, retry=ONE_TRY, limits=limits) as client:
        ref = f"{fault_proxy.host}/{unique_repo}:v1"
        client.push_blob(ref, BLOB_DIGEST, len(BLOB), BLOB)
        fault_proxy.clear()
        fault_proxy.add(Fault("trickle", method="GET", path_contains="/blobs/", interval=0.05,
                              chunk_size=2000))
        client.get_blob(ref, BLOB_DIGEST, tmp_path / "blob", size=len(BLOB))
        assert (tmp_path / "blob").read_bytes() == BLOB
        fault_proxy.add(Fault("trickle", method="GET", path_contains="/blobs/", interval=0.05, chunk_size=20))
        with pytest.raises(RegistryConnectionError, match="minimum rate"):
            client.get_blob(ref, BLOB_DIGEST, tmp_path / "again", size=len(BLOB))


def test_first_contact_ping_that_crawls_ends_with_a_clear_error(fault_proxy: FaultProxy) -> None:
    """The /v2/ ping that learns a host's scheme and auth has the same limits as every request."""
    fault_proxy.add(Fault("trickle_headers", method="GET", path_contains="/v2/", times=-1, interval=0.01))
    with RegistryClient(insecure=True, retry=ONE_TRY, limits=LIMITS) as client, \
            pytest.raises(RegistryConnectionError, match="minimum rate") as info:
        client.get_manifest(f"{fault_proxy.host}/some/repo:v1")
    assert f"GET http://{fault_proxy.host}/v2/" in str(info.value)
