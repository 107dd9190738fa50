"""RegistryClient against the real docker-registry over plain HTTP: manifests, blobs, ranges."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from lazypull.registry import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    DigestMismatchError,
    NotFoundError,
    RegistryClient,
    parse_manifest,
)
from tests.helpers.registry import RegistryServer
from tests.registry.conftest import make_image, push_image, sha256


def test_push_and_pull_manifest_and_blobs(registry: RegistryServer, unique_repo: str,
                                          fast_client: RegistryClient) -> None:
    ref = f"{registry.host}/{unique_repo}:v1"
    image = make_image()
    digest = push_image(fast_client, ref, image)
    assert digest == image.digest
    raw, media_type, got_digest = fast_client.get_manifest(ref)
    assert (raw, media_type, got_digest) == (image.manifest, OCI_MANIFEST, image.digest)
    by_digest = fast_client.get_manifest(f"{registry.host}/{unique_repo}@{digest}")
    assert by_digest[0] == image.manifest
    manifest = parse_manifest(raw, media_type)
    for desc, blob in zip(manifest.layers, image.layers, strict=True):
        assert fast_client.blob_size(ref, desc.digest) == len(blob)
        out = io.BytesIO()
        fast_client.get_blob(ref, desc.digest, out)
        assert out.getvalue() == blob
    assert fast_client.fetch_blob(ref, manifest.config.digest) == image.config
    assert fast_client.list_tags(ref) == ["v1"]
    assert fast_client.head_manifest(ref).digest == digest


def test_push_skips_existing_blobs(registry: RegistryServer, unique_repo: str,
                                   fast_client: RegistryClient) -> None:
    ref = f"{registry.host}/{unique_repo}:v1"
    blob = os.urandom(3000)
    fast_client.push_blob(ref, sha256(blob), len(blob), blob)
    mark = registry.log_mark()
    fast_client.push_blob(ref, sha256(blob), len(blob), blob)
    assert [(e.method, e.status) for e in registry.access_log(mark)] == [("HEAD", 200)]


def test_chunked_upload(registry: RegistryServer, unique_repo: str) -> None:
    ref = f"{registry.host}/{unique_repo}:v1"
    blob = os.urandom(300_000)
    with RegistryClient(insecure=True, chunk_size=64 << 10) as client:
        client.ping(registry.host)
        mark = registry.log_mark()
        client.push_blob(ref, sha256(blob), len(blob), lambda: io.BytesIO(blob))
        methods = [e.method for e in registry.access_log(mark)]
        assert methods == ["HEAD", "POST"] + ["PATCH"] * 5 + ["PUT"]
        assert registry.blob_path(sha256(blob)).read_bytes() == blob


def test_push_refuses_content_not_matching_digest(registry: RegistryServer, unique_repo: str,
                                                  fast_client: RegistryClient) -> None:
    ref = f"{registry.host}/{unique_repo}:v1"
    blob = os.urandom(100)
    wrong = sha256(b"something else")
    with pytest.raises(DigestMismatchError, match=wrong):
        fast_client.push_blob(ref, wrong, len(blob), blob)
    assert not fast_client.blob_exists(ref, wrong)


def test_cross_repository_mount(registry: RegistryServer, unique_repo: str,
                                fast_client: RegistryClient) -> None:
    source = f"{registry.host}/{unique_repo}-src:v1"
    target = f"{registry.host}/{unique_repo}-dst:v1"
    blob = os.urandom(2000)
    fast_client.push_blob(source, sha256(blob), len(blob), blob)
    mark = registry.log_mark()
    fast_client.push_blob(target, sha256(blob), len(blob), b"never read", mount_from=[f"{unique_repo}-src"])
    log = registry.access_log(mark)
    assert [(e.method, e.status) for e in log] == [("HEAD", 404), ("POST", 201)]
    assert "mount=" in log[1].path
    assert fast_client.blob_size(target, sha256(blob)) == 2000


def test_ranges(registry: RegistryServer, unique_repo: str, fast_client: RegistryClient) -> None:
    ref = f"{registry.host}/{unique_repo}:v1"
    blob = os.urandom(100_000)
    digest = sha256(blob)
    fast_client.push_blob(ref, digest, len(blob), blob)
    assert fast_client.read_range(ref, digest, 10, 20) == blob[10:30]
    assert fast_client.read_range(ref, digest, 99_990, 100) == blob[99_990:]
    assert fast_client.read_range(ref, digest, 200_000, 10) == b""
    mark = registry.log_mark()
    wanted = [(0, 10), (50_000, 1000), (99_000, 1000), (5, 10), (70_000, 0), (20, 30)]
    got = fast_client.read_ranges(ref, digest, wanted)
    assert got == [blob[o:o + n] for o, n in wanted]
    log = registry.access_log(mark)
    assert [(e.method, e.status) for e in log] == [("GET", 206)]


def test_blob_source_reads_like_a_file(registry: RegistryServer, unique_repo: str,
                                       fast_client: RegistryClient) -> None:
    ref = f"{registry.host}/{unique_repo}:v1"
    blob = os.urandom(10_000)
    fast_client.push_blob(ref, sha256(blob), len(blob), blob)
    src = fast_client.blob_source(ref, sha256(blob))
    assert src.size == 10_000
    assert src.read_at(9_990, 100) == blob[9_990:]
    assert src.read_at(10_000, 5) == b""
    assert src.read_at(123, 456) == blob[123:579]


def test_missing_things_are_not_found(registry: RegistryServer, unique_repo: str,
                                      fast_client: RegistryClient) -> None:
    ref = f"{registry.host}/{unique_repo}:nope"
    with pytest.raises(NotFoundError) as info:
        fast_client.get_manifest(ref)
    assert info.value.status == 404 and info.value.codes
    assert "MANIFEST_UNKNOWN" in str(info.value) or "NAME_UNKNOWN" in str(info.value)
    with pytest.raises(NotFoundError):
        fast_client.get_blob(ref, sha256(b"x"), io.BytesIO())


def test_get_blob_to_path_is_atomic_and_checked(registry: RegistryServer, unique_repo: str,
                                                fast_client: RegistryClient, tmp_path: Path) -> None:
    ref = f"{registry.host}/{unique_repo}:v1"
    blob = os.urandom(5000)
    fast_client.push_blob(ref, sha256(blob), len(blob), blob)
    dest = tmp_path / "blob"
    fast_client.get_blob(ref, sha256(blob), dest)
    assert dest.read_bytes() == blob
    # Corrupt the stored blob behind the registry's back: the download must fail, leaving nothing.
    registry.blob_path(sha256(blob)).write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    dest2 = tmp_path / "blob2"
    with pytest.raises(DigestMismatchError, match=sha256(blob)):
        fast_client.get_blob(ref, sha256(blob), dest2)
    assert list(tmp_path.iterdir()) == [dest]
    buf = io.BytesIO(b"keep")
    buf.seek(4)
    with pytest.raises(DigestMismatchError):
        fast_client.get_blob(ref, sha256(blob), buf)
    assert buf.getvalue() == b"keep"


def _index(entries: list[tuple[str, int, str, str | None]], media_type: str = OCI_INDEX) -> bytes:
    manifests = []
    for digest, size, arch, variant in entries:
        plat = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
        kind = OCI_MANIFEST if media_type == OCI_INDEX else DOCKER_MANIFEST
        manifests.append({"mediaType": kind, "digest": digest, "size": size, "platform": plat})
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}).encode()


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_MANIFEST_LIST], ids=["oci", "docker"])
def test_index_and_platform_selection(registry: RegistryServer, unique_repo: str,
                                      fast_client: RegistryClient, media_type: str) -> None:
    ref = f"{registry.host}/{unique_repo}:multi"
    amd, arm = make_image(arch="amd64"), make_image(arch="arm64")
    push_image(fast_client, f"{registry.host}/{unique_repo}:amd", amd)
    push_image(fast_client, f"{registry.host}/{unique_repo}:arm", arm)
    index = _index([(amd.digest, len(amd.manifest), "amd64", None),
                    (arm.digest, len(arm.manifest), "arm64", "v8")], media_type)
    fast_client.put_manifest(ref, index, media_type)
    raw, got_type, _ = fast_client.get_manifest(ref)
    assert (raw, got_type) == (index, media_type)
    assert fast_client.resolve_image(ref, "linux/arm64")[0] == arm.manifest
    assert fast_client.resolve_image(ref, "linux/arm64/v8")[2] == arm.digest
    assert fast_client.resolve_image(ref, "linux/amd64")[0] == amd.manifest
    with pytest.raises(Exception, match="linux/s390x"):
        fast_client.resolve_image(ref, "linux/s390x")


def test_connections_are_kept_alive(registry: RegistryServer, unique_repo: str,
                                    fast_client: RegistryClient) -> None:
    ref = f"{registry.host}/{unique_repo}:v1"
    blob = os.urandom(1000)
    fast_client.push_blob(ref, sha256(blob), len(blob), blob)
    mark = registry.log_mark()
    for i in range(10):
        assert fast_client.read_range(ref, sha256(blob), i, 1) == blob[i:i + 1]
    log = registry.access_log(mark)
    assert len(log) == 10 and len({e.remote for e in log}) == 1


def test_many_ranges_are_batched(registry: RegistryServer, unique_repo: str,
                                 fast_client: RegistryClient) -> None:
    ref = f"{registry.host}/{unique_repo}:v1"
    blob = os.urandom(100_000)
    fast_client.push_blob(ref, sha256(blob), len(blob), blob)
    wanted = [(i * 997, 10) for i in range(100)]
    mark = registry.log_mark()
    assert fast_client.read_ranges(ref, sha256(blob), wanted) == [blob[o:o + n] for o, n in wanted]
    assert [(e.method, e.status) for e in registry.access_log(mark)] == [("GET", 206), ("GET", 206)]
