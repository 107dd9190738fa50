"""Media types and annotation keys of OCI and Docker images, and the eStargz / zstd:chunked additions.

Only the types lazypull understands are listed; anything else is refused with an error naming it.
"""

from __future__ import annotations

from typing import Literal

from lazypull.format import annotations as _annotations

# Manifest, index and config types are registry's (re-exported here beside the layer types).
from lazypull.registry import DOCKER_CONFIG as DOCKER_CONFIG
from lazypull.registry import DOCKER_MANIFEST as DOCKER_MANIFEST
from lazypull.registry import DOCKER_MANIFEST_LIST as DOCKER_MANIFEST_LIST
from lazypull.registry import OCI_CONFIG as OCI_CONFIG
from lazypull.registry import OCI_INDEX as OCI_INDEX
from lazypull.registry import OCI_MANIFEST as OCI_MANIFEST
from lazypull.registry import is_index as is_index

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})

_LAYER_COMPRESSION: dict[str, Literal["none", "gzip", "zstd"]] = {
    OCI_LAYER: "none", OCI_LAYER_GZIP: "gzip", OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_ND: "none", OCI_LAYER_ND_GZIP: "gzip", OCI_LAYER_ND_ZSTD: "zstd",
    DOCKER_LAYER: "none", DOCKER_LAYER_GZIP: "gzip", DOCKER_LAYER_ZSTD: "zstd",
    DOCKER_FOREIGN_LAYER: "gzip",
}
NON_DISTRIBUTABLE = frozenset({OCI_LAYER_ND, OCI_LAYER_ND_GZIP, OCI_LAYER_ND_ZSTD, DOCKER_FOREIGN_LAYER})

_DOCKER_TO_OCI = {
    DOCKER_MANIFEST_LIST: OCI_INDEX,
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER: OCI_LAYER,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_LAYER_ZSTD: OCI_LAYER_ZSTD,
    DOCKER_FOREIGN_LAYER: OCI_LAYER_ND_GZIP,
}

# Annotations (format.md 1.11, 2.3, 3.1): the layer ones are format.annotations'.
TOC_DIGEST = _annotations.TOC_DIGEST_ANNOTATION
UNCOMPRESSED_SIZE = _annotations.UNCOMPRESSED_SIZE_ANNOTATION
ZSTD_MANIFEST_CHECKSUM = _annotations.MANIFEST_CHECKSUM_ANNOTATION
ZSTD_MANIFEST_POSITION = _annotations.MANIFEST_POSITION_ANNOTATION
TOC_LAYER_DIGEST = _annotations.TOC_LAYER_DIGEST_ANNOTATION
TOC_IMAGE_SUFFIX = _annotations.TOC_IMAGE_SUFFIX
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_IMAGE_NAME = "io.containerd.image.name"
DOCKER_REFERENCE_TYPE = "vnd.docker.reference.type"    # buildx marks attestation manifests with it


def is_attestation(annotations: dict[str, str] | None) -> bool:
    """An index entry that is a buildx attestation (in-toto layers), not a runnable image."""
    return (annotations or {}).get(DOCKER_REFERENCE_TYPE) == "attestation-manifest"


def is_manifest(media_type: str) -> bool:
    """An OCI or Docker v2 schema 2 image manifest."""
    return media_type in MANIFEST_TYPES


def is_layer(media_type: str) -> bool:
    """A filesystem layer lazypull can read (tar, tar+gzip, tar+zstd; OCI or Docker)."""
    return media_type in _LAYER_COMPRESSION


def layer_compression(media_type: str) -> Literal["none", "gzip", "zstd"]:
    """How a layer of this media type is compressed; raises KeyError for non-layer types."""
    return _LAYER_COMPRESSION[media_type]


def to_oci(media_type: str) -> str:
    """The OCI equivalent of a Docker media type (OCI and unknown types unchanged)."""
    return _DOCKER_TO_OCI.get(media_type, media_type)


def with_compression(media_type: str, compression: Literal["none", "gzip", "zstd"]) -> str:
    """The layer media type of the same family (OCI/Docker, distributable or not) with another compression.

    Docker has no official uncompressed-zstd type; the containerd converters use ``.tar.zstd``.
    """
    if media_type.startswith("application/vnd.docker."):
        if media_type == DOCKER_FOREIGN_LAYER:
            base = "application/vnd.docker.image.rootfs.foreign.diff.tar"
        else:
            base = DOCKER_LAYER
        return base if compression == "none" else f"{base}.{compression}"
    base = OCI_LAYER_ND if "nondistributable" in media_type else OCI_LAYER
    return base if compression == "none" else f"{base}+{compression}"
