"""Media types and annotation keys of OCI and Docker images, and the eStargz / zstd:chunked additions.

Only the types lazypull understands are listed; anything else is refused with an error naming it.
"""

from __future__ import annotations

from typing import Literal

from lazypull.format import annotations as _annotations

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
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

# Annotations (format.md 1.11, 2.3, 3.1).
TOC_DIGEST = _annotations.TOC_DIGEST_ANNOTATION
UNCOMPRESSED_SIZE = _annotations.UNCOMPRESSED_SIZE_ANNOTATION
ZSTD_MANIFEST_CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
ZSTD_MANIFEST_POSITION = "io.containers.zstd-chunked.manifest-position"
TOC_LAYER_DIGEST = "containerd.io/snapshot/stargz/layer.digest"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_IMAGE_NAME = "io.containerd.image.name"

TOC_IMAGE_SUFFIX = "-esgztoc"
DOCKER_REFERENCE_TYPE = "vnd.docker.reference.type"    # buildx marks attestation manifests with it


def is_attestation(annotations: dict[str, str] | None) -> bool:
    """An index entry that is a buildx attestation (in-toto layers), not a runnable image."""
    return (annotations or {}).get(DOCKER_REFERENCE_TYPE) == "attestation-manifest"


def is_index(media_type: str) -> bool:
    """An OCI index or a Docker manifest list."""
    return media_type in INDEX_TYPES


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
