"""Helpers shared by the registry client tests: small images made of random blobs."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lazypull.registry import OCI_CONFIG, OCI_MANIFEST, RegistryClient, RetryPolicy

FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, deadline=10.0)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class TestImage:
    """An OCI image manifest with its config and layers, all in memory."""

    manifest: bytes
    config: bytes
    layers: list[bytes]

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


def make_image(layer_sizes: tuple[int, ...] = (1000, 5000), arch: str = "amd64",
               annotations: dict[str, str] | None = None) -> TestImage:
    """Layers are gzip members of random bytes (what their media type says; tools sniff it)."""
    raw = [os.urandom(n) for n in layer_sizes]
    layers = [gzip.compress(b, mtime=0) for b in raw]
    config = json.dumps({"architecture": arch, "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha256(b) for b in raw]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(b),
                    "size": len(b), **({"annotations": annotations} if annotations else {})} for b in layers],
    }).encode()
    return TestImage(manifest, config, layers)


def push_image(client: RegistryClient, ref: str, image: TestImage) -> str:
    for blob in [image.config, *image.layers]:
        client.push_blob(ref, sha256(blob), len(blob), blob)
    return client.put_manifest(ref, image.manifest, OCI_MANIFEST)


@pytest.fixture
def fast_client() -> Iterator[RegistryClient]:
    """An anonymous client with short retry delays, for the plain registry (insecure: plain HTTP)."""
    client = RegistryClient(insecure=True, retry=FAST_RETRY)
    yield client
    client.close()
