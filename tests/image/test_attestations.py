"""Indexes with buildx attestation manifests (in-toto layers, platform unknown/unknown): copied verbatim
when every platform is pulled (so the index stays pushable), skipped for one platform, dropped by convert."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.image import (
    ConvertOptions,
    Layout,
    Store,
    convert_image,
    copy_into_store,
    pull_image,
    push_image,
)
from lazypull.image import mediatypes as mt
from lazypull.registry import Platform, RegistryClient
from tests.helpers.images import BuiltLayout, file, make_oci_layout, sample_layers, sha256
from tests.helpers.registry import RegistryServer


def _blob(path: Path, data: bytes) -> dict[str, object]:
    digest = sha256(data)
    (path / "blobs/sha256" / digest[7:]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _with_attestation(tmp_path: Path, owner: str) -> tuple[BuiltLayout, str]:
    layers = sample_layers()[:1]
    layers[0].append(file("owner", owner))
    built = make_oci_layout(tmp_path / "layout", layers, tag="m", platforms=["linux/amd64", "linux/arm64"])
    statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "subject": owner}).encode()
    layer = {"mediaType": "application/vnd.in-toto+json", **_blob(built.path, statement),
             "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"}}
    config = {"mediaType": mt.OCI_CONFIG, **_blob(built.path, b"{}")}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": config,
                           "layers": [layer]}).encode()
    att = {"mediaType": mt.OCI_MANIFEST, **_blob(built.path, manifest),
           "platform": {"architecture": "unknown", "os": "unknown"},
           "annotations": {"vnd.docker.reference.digest": built.images[0].manifest_digest,
                           "vnd.docker.reference.type": "attestation-manifest"}}
    index_path = built.path / "blobs/sha256" / built.root_digest[7:]
    index = json.loads(index_path.read_bytes())
    index["manifests"].append(att)
    raw = json.dumps(index).encode()
    root = _blob(built.path, raw)
    (built.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": mt.OCI_INDEX, **root, "annotations": {mt.REF_NAME: "m"}}]}))
    built.root_digest, built.root_size = str(root["digest"]), len(raw)
    return built, str(att["digest"])


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(insecure=True) as c:
        yield c


def test_attestations_through_store_registry_and_convert(tmp_path: Path, registry: RegistryServer,
                                                         unique_repo: str, client: RegistryClient) -> None:
    built, attestation = _with_attestation(tmp_path, unique_repo)
    layout = Layout(built.path)
    one = Store(tmp_path / "one")
    copy_into_store(one, layout.root("m"), layout, "example.com/a:1", source=None,
                    platforms=[Platform("linux", "amd64")])
    assert not one.has_blob(attestation)
    every = Store(tmp_path / "all")
    name = f"{registry.host}/{unique_repo}:m"
    copy_into_store(every, layout.root("m"), layout, name, source=None, platforms=None)
    assert every.has_blob(attestation)
    assert push_image(every, client, name).digest == built.root_digest
    again = Store(tmp_path / "again")
    pull_image(again, client, name, all_platforms=True)
    assert again.has_blob(attestation)
    with every.lease():
        result = convert_image(every.open(every.get_image(name).target), every,
                               ConvertOptions("estargz", oci=True))
    entries = json.loads(every.read_blob(result.root.digest))["manifests"]
    assert [e["platform"]["architecture"] for e in entries] == ["amd64", "arm64"]
    assert all(mt.DOCKER_REFERENCE_TYPE not in e.get("annotations", {}) for e in entries)
