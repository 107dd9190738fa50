"""Faults between client and the real registry (a proxy of the tests' own), and blob redirects."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.registry import (
    DigestMismatchError,
    NotFoundError,
    RegistryClient,
    RegistryConnectionError,
    RegistryError,
    RetryPolicy,
    StaticAuth,
    TooLargeError,
)
from tests.helpers.registry import (
    TEST_PASSWORD,
    TEST_USER,
    AuthRegistry,
    Fault,
    FaultProxy,
    RegistryServer,
    StaticFileServer,
    make_htpasswd,
)
from tests.registry.conftest import FAST_RETRY, make_image, push_image, sha256

Setup = tuple[RegistryClient, str]

BLOB = os.urandom(200_000)
BLOB_DIGEST = sha256(BLOB)


@pytest.fixture
def setup(fault_proxy: FaultProxy, unique_repo: str) -> Iterator[Setup]:
    """A client talking through the proxy, and a reference whose repository holds BLOB."""
    client = RegistryClient(insecure=True, retry=FAST_RETRY)
    ref = f"{fault_proxy.host}/{unique_repo}:v1"
    client.push_blob(ref, BLOB_DIGEST, len(BLOB), BLOB)
    fault_proxy.clear()
    yield client, ref
    client.close()


def _blob_gets(proxy: FaultProxy) -> list[tuple[str | None, int, str | None]]:
    return [(r.headers.get("Range"), r.status, r.fault) for r in proxy.requests
            if r.method == "GET" and "/blobs/" in r.path]


def test_server_error_then_success_is_retried(setup: Setup, fault_proxy: FaultProxy) -> None:
    client, ref = setup
    fault_proxy.add(Fault("status", method="GET", path_contains="/blobs/", times=2, status=503))
    out = io.BytesIO()
    client.get_blob(ref, BLOB_DIGEST, out)
    assert out.getvalue() == BLOB
    assert [s for _, s, _ in _blob_gets(fault_proxy)] == [503, 503, 200]


def test_persistent_server_error_gives_up(setup: Setup, fault_proxy: FaultProxy,
                                          tmp_path: Path) -> None:
    client, ref = setup
    fault_proxy.add(Fault("status", method="GET", path_contains="/blobs/", times=-1, status=500,
                          body=b'{"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}' + b" " * 200_000))
    with pytest.raises(RegistryError) as info:
        client.get_blob(ref, BLOB_DIGEST, tmp_path / "blob")
    err = info.value
    assert err.status == 500 and err.temporary and "disk on fire" in str(err)
    assert len(str(err)) < 1000
    assert len(_blob_gets(fault_proxy)) == FAST_RETRY.attempts
    assert list(tmp_path.iterdir()) == []


def test_not_found_is_not_retried(setup: Setup, fault_proxy: FaultProxy) -> None:
    client, ref = setup
    with pytest.raises(NotFoundError):
        client.get_blob(ref, sha256(b"absent"), io.BytesIO())
    assert len(_blob_gets(fault_proxy)) == 1


def test_rate_limit_honours_retry_after(setup: Setup, fault_proxy: FaultProxy) -> None:
    client, ref = setup
    fault_proxy.add(Fault("status", method="GET", path_contains="/manifests/", status=429,
                          headers={"Retry-After": "1"},
                          body=b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'))
    image = make_image((10,))
    push_image(client, ref, image)
    start = time.monotonic()
    assert client.get_manifest(ref)[0] == image.manifest
    assert time.monotonic() - start >= 0.9


def test_dropped_connection_resumes_with_range(setup: Setup,
                                               fault_proxy: FaultProxy) -> None:
    client, ref = setup
    fault_proxy.add(Fault("truncate", method="GET", path_contains="/blobs/", after_bytes=70_000))
    out = io.BytesIO()
    client.get_blob(ref, BLOB_DIGEST, out)
    assert out.getvalue() == BLOB
    gets = _blob_gets(fault_proxy)
    assert gets[0] == (None, 200, "truncate")
    assert gets[1][0] == "bytes=70000-" and gets[1][1] == 206


def test_resume_ignored_by_server_starts_over(setup: Setup, fault_proxy: FaultProxy) -> None:
    client, ref = setup
    fault_proxy.add(Fault("truncate", method="GET", path_contains="/blobs/", after_bytes=50_000))
    fault_proxy.add(Fault("no_range", method="GET", path_contains="/blobs/"))
    out = io.BytesIO()
    client.get_blob(ref, BLOB_DIGEST, out)
    assert out.getvalue() == BLOB
    assert [(s, f) for _, s, f in _blob_gets(fault_proxy)] == [(200, "truncate"), (200, "no_range")]


def test_resume_ignored_into_unseekable_destination(setup: Setup, fault_proxy: FaultProxy) -> None:
    client, ref = setup

    class Sink:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, chunk: bytes) -> int:
            self.data += chunk
            return len(chunk)

    fault_proxy.add(Fault("truncate", method="GET", path_contains="/blobs/", after_bytes=50_000))
    fault_proxy.add(Fault("no_range", method="GET", path_contains="/blobs/"))
    with pytest.raises(RegistryError, match="cannot be rewound"):
        client.get_blob(ref, BLOB_DIGEST, Sink())  # type: ignore[arg-type]


def test_persistent_truncation_leaves_nothing(setup: Setup, fault_proxy: FaultProxy,
                                              tmp_path: Path) -> None:
    client, ref = setup
    fault_proxy.add(Fault("truncate", method="GET", path_contains="/blobs/", times=-1, after_bytes=0))
    with pytest.raises(RegistryConnectionError, match=BLOB_DIGEST):
        client.get_blob(ref, BLOB_DIGEST, tmp_path / "blob")
    assert list(tmp_path.iterdir()) == []
    buf = io.BytesIO(b"prefix")
    buf.seek(0, io.SEEK_END)
    with pytest.raises(RegistryConnectionError):
        client.get_blob(ref, BLOB_DIGEST, buf)
    assert buf.getvalue() == b"prefix"


def test_flipped_bytes_are_a_digest_error(setup: Setup, fault_proxy: FaultProxy,
                                          tmp_path: Path) -> None:
    client, ref = setup
    fault_proxy.add(Fault("flip", method="GET", path_contains="/blobs/", offset=1234))
    with pytest.raises(DigestMismatchError) as info:
        client.get_blob(ref, BLOB_DIGEST, tmp_path / "blob")
    assert info.value.expected == BLOB_DIGEST and info.value.actual != BLOB_DIGEST
    assert list(tmp_path.iterdir()) == []
    # the next download, unharmed, works
    client.get_blob(ref, BLOB_DIGEST, tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == BLOB


def test_flipped_manifest_fetched_by_digest(setup: Setup, fault_proxy: FaultProxy) -> None:
    client, ref = setup
    image = make_image((10,))
    digest = push_image(client, ref, image)
    fault_proxy.add(Fault("flip", method="GET", path_contains="/manifests/", offset=5))
    with pytest.raises(DigestMismatchError, match=digest):
        client.get_manifest(ref.rsplit(":", 1)[0] + "@" + digest)


def test_ranges_when_server_ignores_range(setup: Setup, fault_proxy: FaultProxy) -> None:
    client, ref = setup
    fault_proxy.add(Fault("no_range", method="GET", path_contains="/blobs/", times=2))
    wanted = [(100, 50), (1000, 10), (150_000, 100)]
    assert client.read_ranges(ref, BLOB_DIGEST, wanted) == [BLOB[o:o + n] for o, n in wanted]
    assert client.read_range(ref, BLOB_DIGEST, 5, 5) == BLOB[5:10]
    gets = _blob_gets(fault_proxy)
    assert [s for _, s, _ in gets] == [200, 200]
    assert gets[0][0] == "bytes=100-149,1000-1009,150000-150099"


def test_multi_range_ignored_falls_back_to_single_ranges(fault_proxy: FaultProxy, unique_repo: str) -> None:
    ref = f"{fault_proxy.host}/{unique_repo}:v1"
    big = os.urandom(3 << 20)
    wanted = [(10, 10), (2 << 20, 100), ((3 << 20) - 5, 5)]
    with RegistryClient(insecure=True, retry=FAST_RETRY) as client:
        client.push_blob(ref, sha256(big), len(big), big)
        fault_proxy.clear()
        fault_proxy.add(Fault("no_multirange", method="GET", path_contains="/blobs/", times=-1))
        assert client.read_ranges(ref, sha256(big), wanted) == [big[o:o + n] for o, n in wanted]
        assert client.read_ranges(ref, sha256(big), wanted) == [big[o:o + n] for o, n in wanted]
    gets = _blob_gets(fault_proxy)
    # one abandoned multi-range answer, then single ranges only (the host is remembered)
    assert [s for _, s, _ in gets] == [200] + [206] * 6
    assert all("," not in (r or "") for r, _, _ in gets[1:])


def test_truncated_range_answer_is_retried(setup: Setup, fault_proxy: FaultProxy) -> None:
    client, ref = setup
    fault_proxy.add(Fault("truncate", method="GET", path_contains="/blobs/", after_bytes=10))
    wanted = [(0, 100), (5000, 100)]
    assert client.read_ranges(ref, BLOB_DIGEST, wanted) == [BLOB[o:o + n] for o, n in wanted]
    assert [f for _, _, f in _blob_gets(fault_proxy)] == ["truncate", None]


def test_upload_retried_after_server_error(fault_proxy: FaultProxy, unique_repo: str) -> None:
    ref = f"{fault_proxy.host}/{unique_repo}:v1"
    blob = os.urandom(5000)
    fault_proxy.add(Fault("status", method="PUT", path_contains="/blobs/uploads/", status=500))
    with RegistryClient(insecure=True, retry=FAST_RETRY) as client:
        client.push_blob(ref, sha256(blob), len(blob), blob)
        assert client.read_range(ref, sha256(blob), 0, 5000) == blob
    puts = [(r.status, r.fault) for r in fault_proxy.requests if r.method == "PUT"]
    assert puts == [(500, "status"), (201, None)]


def test_chunked_upload_restarts_after_failed_patch(fault_proxy: FaultProxy, unique_repo: str) -> None:
    ref = f"{fault_proxy.host}/{unique_repo}:v1"
    blob = os.urandom(20_000)
    fault_proxy.add(Fault("status", method="PATCH", path_contains="/blobs/uploads/", status=502))
    with RegistryClient(insecure=True, retry=FAST_RETRY, chunk_size=8192) as client:
        client.push_blob(ref, sha256(blob), len(blob), blob)
        assert client.read_range(ref, sha256(blob), 0, 20_000) == blob
    calls = [(r.method, r.fault) for r in fault_proxy.requests if r.method != "GET"]
    assert calls == [("HEAD", None), ("POST", None), ("PATCH", "status"), ("DELETE", None),
                     ("POST", None), ("PATCH", None), ("PATCH", None), ("PATCH", None), ("PUT", None)]


def test_connection_refused_is_clear() -> None:
    from tests.helpers.registry import free_port

    host = f"127.0.0.1:{free_port()}"
    policy = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.01, deadline=5)
    with RegistryClient(insecure=True, retry=policy) as client, \
            pytest.raises(RegistryConnectionError, match=host):
        client.get_manifest(f"{host}/a/b:c")


# -- redirects --------------------------------------------------------------------------------------

def test_blob_redirect_is_followed(registry_redirect: AuthRegistry, unique_repo: str) -> None:
    reg = registry_redirect
    ref = f"{reg.host}/{unique_repo}:v1"
    blob = os.urandom(50_000)
    with RegistryClient(insecure=True, retry=FAST_RETRY) as client:
        client.push_blob(ref, sha256(blob), len(blob), blob)
        assert client.blob_size(ref, sha256(blob)) == len(blob)
        seen = len(reg.redirect_server.requests)
        out = io.BytesIO()
        client.get_blob(ref, sha256(blob), out)
        assert out.getvalue() == blob
        assert client.read_range(ref, sha256(blob), 100, 10) == blob[100:110]
        wanted = [(0, 10), (40_000, 10)]
        assert client.read_ranges(ref, sha256(blob), wanted) == [blob[o:o + n] for o, n in wanted]
    served = reg.redirect_server.requests[seen:]
    assert [m for m, _, _ in served] == ["GET", "GET", "GET"]
    assert served[1][2].get("Range") == "bytes=100-109"


@pytest.fixture(scope="module")
def auth_redirect_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """Basic auth (plain HTTP) + redirect middleware: the Authorization header must stay home."""
    work = tmp_path_factory.mktemp("registry-auth-redirect")
    storage = work / "reg" / "storage"
    storage.mkdir(parents=True)
    files = StaticFileServer(storage).start()
    htpasswd = make_htpasswd(work / "htpasswd", {TEST_USER: TEST_PASSWORD})
    server = RegistryServer(work / "reg", redirect_base=files.url + "/",
                            auth={"htpasswd": {"realm": "t", "path": str(htpasswd)}}).start()
    yield AuthRegistry(server, extras={"redirect_server": files})
    server.stop()
    files.stop()


def test_redirect_does_not_leak_authorization(auth_redirect_registry: AuthRegistry, unique_repo: str) -> None:
    reg = auth_redirect_registry
    ref = f"{reg.host}/{unique_repo}:v1"
    blob = os.urandom(1000)
    with RegistryClient(insecure=True, auth=StaticAuth(reg.username, reg.password)) as client:
        client.push_blob(ref, sha256(blob), len(blob), blob)
        out = io.BytesIO()
        client.get_blob(ref, sha256(blob), out)
        assert out.getvalue() == blob
    served = reg.redirect_server.requests
    assert served and all("Authorization" not in headers for _, _, headers in served)


# -- hostile or odd answers ---------------------------------------------------------------------------

def test_oversized_manifest_is_refused(setup: Setup, fault_proxy: FaultProxy) -> None:
    client, ref = setup
    fault_proxy.add(Fault("status", method="GET", path_contains="/manifests/", status=200,
                          headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                          body=b"{" + b" " * (5 << 20) + b"}"))
    with pytest.raises(TooLargeError, match="exceeds"):
        client.get_manifest(ref)


def test_oversized_range_answer_is_refused(setup: Setup, fault_proxy: FaultProxy) -> None:
    client, ref = setup
    fault_proxy.add(Fault("status", method="GET", path_contains="/blobs/", status=206, times=-1,
                          headers={"Content-Type": "multipart/byteranges; boundary=x"},
                          body=b"--x\r\n" + b"A" * (1 << 20)))
    with pytest.raises(RegistryConnectionError, match="larger than"):
        client.read_ranges(ref, BLOB_DIGEST, [(0, 10), (100, 10)])


def test_not_a_registry(registry_redirect: AuthRegistry) -> None:
    # The redirect fixture's static file server answers 404 to /v2/.
    host = registry_redirect.redirect_server.url.removeprefix("http://")
    with RegistryClient(insecure=True, retry=FAST_RETRY) as client, \
            pytest.raises(NotFoundError, match=r"/v2/ check.*status 404"):
        client.get_manifest(f"{host}/a/b:c")


def test_concurrent_reads_share_one_client(registry: RegistryServer, unique_repo: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ref = f"{registry.host}/{unique_repo}:v1"
    with RegistryClient(insecure=True) as client:
        client.push_blob(ref, BLOB_DIGEST, len(BLOB), BLOB)
        src = client.blob_source(ref, BLOB_DIGEST, len(BLOB))
        offsets = [(i * 7919) % len(BLOB) for i in range(64)]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda o: src.read_at(o, 1000), offsets))
    assert got == [BLOB[o:o + 1000] for o in offsets]
