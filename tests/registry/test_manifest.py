"""Manifest/index validation and platform selection (pure, no server)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lazypull.registry import (
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ManifestError,
    Platform,
    default_platform,
    parse_index,
    parse_manifest,
    select_all,
    select_platform,
)

D1, D2, D3, D4 = ("sha256:" + c * 64 for c in "1234")


def _desc(digest: str, **extra: Any) -> dict[str, Any]:
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": 100, **extra}


def _index(*entries: dict[str, Any], media_type: str = OCI_INDEX) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": list(entries)}).encode()


def test_descriptor_round_trip() -> None:
    obj = {"mediaType": "x/y", "digest": D1, "size": 5, "annotations": {"a": "b"}, "urls": ["http://u"],
           "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}
    desc = Descriptor.from_json(obj)
    assert desc.platform == Platform("linux", "arm64", "v8")
    assert desc.to_json() == obj


@pytest.mark.parametrize(("obj", "message"), [
    ("nope", "not an object"),
    ({"digest": D1, "size": 1}, "missing mediaType"),
    ({"mediaType": "x", "digest": "sha256:zz", "size": 1}, "invalid digest"),
    ({"mediaType": "x", "digest": D1, "size": -1}, "invalid size"),
    ({"mediaType": "x", "digest": D1, "size": True}, "invalid size"),
    ({"mediaType": "x", "digest": D1, "size": 1, "annotations": {"a": 1}}, "annotations"),
    ({"mediaType": "x", "digest": D1, "size": 1, "platform": {"os": "linux"}}, "platform"),
])
def test_bad_descriptors(obj: object, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Descriptor.from_json(obj)


@pytest.mark.parametrize(("raw", "message"), [
    (b"\xff", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"schemaVersion": 1, "mediaType": "' + OCI_MANIFEST.encode() + b'", "config": {}, "layers": []}',
     "schemaVersion"),
    (b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "layers": []}', "config"),
    (b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "config": {}}', "layers"),
    (b'{"schemaVersion": 2, "mediaType": "' + OCI_INDEX.encode() + b'", "manifests": []}',
     "unsupported manifest media type"),
    (b" " * (4 << 20) + b"{}", "exceeds"),
])
def test_bad_manifests(raw: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(raw)


def test_manifest_without_media_type_field_uses_declared_type() -> None:
    raw = json.dumps({"schemaVersion": 2, "config": _desc(D1), "layers": [_desc(D2)]}).encode()
    assert parse_manifest(raw).media_type == OCI_MANIFEST
    with pytest.raises(ManifestError, match="not an index"):
        parse_index(raw)


def test_platform_parse_and_match() -> None:
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert Platform.parse("aarch64") == Platform("linux", "arm64")
    assert Platform.parse("linux/x86_64") == Platform("linux", "amd64")
    assert Platform.parse("linux/arm64").matches(Platform("linux", "arm64", "v8"))
    assert not Platform.parse("linux/arm/v7").matches(Platform("linux", "arm", "v6"))
    assert default_platform().os == "linux"
    for bad in ("", "a/b/c/d", "linux//v7"):
        with pytest.raises(ValueError, match="invalid platform"):
            Platform.parse(bad)


def test_select_platform() -> None:
    raw = _index(
        _desc(D1, platform={"os": "linux", "architecture": "amd64"}),
        _desc(D2, platform={"os": "linux", "architecture": "arm", "variant": "v6"}),
        _desc(D3, platform={"os": "linux", "architecture": "arm", "variant": "v7"}),
        _desc(D4, platform={"os": "unknown", "architecture": "unknown"},
              annotations={"vnd.docker.reference.type": "attestation-manifest"}),
        media_type=DOCKER_MANIFEST_LIST)
    index = parse_index(raw)
    assert index.media_type == DOCKER_MANIFEST_LIST
    assert select_platform(index, "linux/amd64").digest == D1
    assert select_platform(index, "linux/arm/v7").digest == D3
    assert select_platform(index, "linux/arm").digest == D2
    assert [d.digest for d in select_all(index)] == [D1, D2, D3]
    with pytest.raises(ManifestError, match=r"linux/riscv64.*linux/amd64"):
        select_platform(index, "linux/riscv64")
