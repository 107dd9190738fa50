"""Manifests and indexes (OCI and Docker v2 schema 2): descriptors, validation, platform choice.

Only structure is checked here (fields, types, digest syntax, media types); what the blobs hold
is the image layer's business. Docker manifest lists and OCI indexes are treated alike, and so
are Docker and OCI image manifests.
"""

from __future__ import annotations

import json
import platform as _platform
import re
from dataclasses import dataclass, field
from typing import Any

from lazypull.registry.errors import ManifestError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
ACCEPT_MANIFESTS = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
MAX_MANIFEST_SIZE = 4 << 20

_DIGEST = re.compile(r"(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")
_MACHINE_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                 "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le",
                 "s390x": "s390x", "riscv64": "riscv64", "mips64": "mips64le", "loongarch64": "loong64"}


@dataclass(frozen=True)
class Platform:
    """``os/architecture[/variant]`` as in OCI index entries."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/arm64/v8``, ``linux/amd64``, or just an architecture (``arm64``, OS linux)."""
        parts = text.strip().lower().split("/")
        if not all(parts) or len(parts) > 3:
            raise ValueError(f"invalid platform {text!r}: want os/arch[/variant]")
        if len(parts) == 1:
            parts = ["linux", *parts]
        arch = _MACHINE_ARCH.get(parts[1], parts[1])
        variant = parts[2] if len(parts) == 3 else None
        return cls(parts[0], arch, variant)

    def normalized(self) -> Platform:
        """Variant defaults the way containerd's platform matcher applies them."""
        variant = self.variant
        if self.architecture == "arm64" and variant in (None, "v8"):
            variant = None
        if self.architecture == "amd64" and variant == "v1":
            variant = None
        return Platform(self.os, self.architecture, variant)

    def matches(self, other: Platform) -> bool:
        """Whether an index entry for ``other`` suits this wanted platform."""
        mine, theirs = self.normalized(), other.normalized()
        if (mine.os, mine.architecture) != (theirs.os, theirs.architecture):
            return False
        return mine.variant is None or mine.variant == theirs.variant

    @classmethod
    def from_json(cls, obj: object) -> Platform:
        if not isinstance(obj, dict) or not isinstance(obj.get("os"), str) \
                or not isinstance(obj.get("architecture"), str):
            raise ManifestError(f"invalid platform {obj!r}: needs string os and architecture")
        variant = obj.get("variant")
        features = obj.get("os.features") or ()
        return cls(obj["os"], obj["architecture"], variant if isinstance(variant, str) and variant else None,
                   obj.get("os.version") if isinstance(obj.get("os.version"), str) else None,
                   tuple(str(f) for f in features) if isinstance(features, list) else ())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        return out


def default_platform() -> Platform:
    """This machine's platform (linux/amd64 on x86_64, linux/arm64 on aarch64, ...)."""
    machine = _platform.machine().lower()
    arch = _MACHINE_ARCH.get(machine, machine)
    variant = "v7" if machine == "armv7l" else "v6" if machine == "armv6l" else None
    return Platform("linux", arch, variant)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, hash=False)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None

    @classmethod
    def from_json(cls, obj: object, where: str = "descriptor") -> Descriptor:
        """Validate and convert one descriptor object; ``where`` names it in errors."""
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: not an object")
        media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise ManifestError(f"{where}: missing mediaType")
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise ManifestError(f"{where}: invalid digest {digest!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ManifestError(f"{where}: invalid size {size!r}")
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
            raise ManifestError(f"{where}: annotations must map strings to strings")
        urls = obj.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ManifestError(f"{where}: urls must be a list of strings")
        plat = Platform.from_json(obj["platform"]) if obj.get("platform") is not None else None
        artifact = obj.get("artifactType")
        return cls(media_type, digest, size, dict(annotations), plat, tuple(urls),
                   artifact if isinstance(artifact, str) else None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out


@dataclass(frozen=True)
class ImageManifest:
    """An OCI or Docker v2 schema 2 image manifest."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict, hash=False)
    subject: Descriptor | None = None


@dataclass(frozen=True)
class ImageIndex:
    """An OCI index or Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict, hash=False)


def _load(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"manifest of {len(raw)} bytes exceeds {MAX_MANIFEST_SIZE}")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # RecursionError: nested too deep
        raise ManifestError(f"manifest is not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    return doc


def detect_media_type(raw: bytes, declared: str | None = None) -> str:
    """The manifest's media type: its ``mediaType`` field, else ``declared``, else by shape."""
    return _media_type_of(_load(raw), declared)


def _media_type_of(doc: dict[str, Any], declared: str | None) -> str:
    field_type = doc.get("mediaType")
    if isinstance(field_type, str) and field_type:
        return field_type
    declared = (declared or "").split(";")[0].strip()
    if declared in MANIFEST_TYPES + INDEX_TYPES:
        return declared
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    raise ManifestError("cannot tell the manifest's media type")


def is_index(media_type: str) -> bool:
    return media_type.split(";")[0].strip() in INDEX_TYPES


def _load_v2(raw: bytes, media_type: str | None, accepted: tuple[str, ...], not_accepted: str,
             list_key: str, what: str) -> tuple[str, dict[str, Any], list[Any], dict[str, str]]:
    """Checks an image manifest and an index share: media type among ``accepted``, schemaVersion 2,
    a ``list_key`` list and object annotations. Returns (media type, document, list, annotations)."""
    doc = _load(raw)
    kind = _media_type_of(doc, media_type)
    if kind not in accepted:
        raise ManifestError(f"{not_accepted} {kind!r}")
    if doc.get("schemaVersion") != 2:
        raise ManifestError(f"unsupported schemaVersion {doc.get('schemaVersion')!r}")
    items = doc.get(list_key)
    if not isinstance(items, list):
        raise ManifestError(f"{what} has no {list_key} list")
    annotations = doc.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ManifestError(f"{what} annotations must be an object")
    return kind, doc, items, {str(k): str(v) for k, v in annotations.items()}


def parse_manifest(raw: bytes, media_type: str | None = None) -> ImageManifest:
    """Validate an image manifest (OCI or Docker schema 2)."""
    return parse_manifest_document(raw, media_type)[0]


def parse_manifest_document(raw: bytes, media_type: str | None = None
                            ) -> tuple[ImageManifest, dict[str, Any]]:
    """:func:`parse_manifest`, and the decoded JSON document too: for callers that keep the document,
    so the manifest is decoded once (a 4 MiB manifest costs its parse)."""
    kind, doc, layers, annotations = _load_v2(raw, media_type, MANIFEST_TYPES,
                                              "unsupported manifest media type", "layers", "manifest")
    subject = Descriptor.from_json(doc["subject"], "subject") if doc.get("subject") else None
    return ImageManifest(
        kind, Descriptor.from_json(doc.get("config"), "config"),
        tuple(Descriptor.from_json(layer, f"layer {i}") for i, layer in enumerate(layers)),
        annotations, subject), doc


def parse_index(raw: bytes, media_type: str | None = None) -> ImageIndex:
    """Validate an OCI index or Docker manifest list."""
    kind, _, entries, annotations = _load_v2(raw, media_type, INDEX_TYPES, "not an index: media type",
                                             "manifests", "index")
    return ImageIndex(kind, tuple(Descriptor.from_json(m, f"index entry {i}") for i, m in enumerate(entries)),
                      annotations)


def select_platform(index: ImageIndex, platform: Platform | str | None = None) -> Descriptor:
    """The index entry for ``platform`` (default: this machine); raise ManifestError naming what exists.

    Entries without a platform and attestation manifests (``vnd.docker.reference.type``) are
    skipped; among matches an exact variant wins, then the first in index order.
    """
    want = Platform.parse(platform) if isinstance(platform, str) else platform or default_platform()
    candidates = [d for d in select_all(index) if d.platform is not None and want.matches(d.platform)]
    if not candidates:
        have = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
        raise ManifestError(f"no manifest for platform {want} in index (platforms: {have})")
    variant = want.normalized().variant
    exact = [d for d in candidates if d.platform and d.platform.normalized().variant == variant]
    return (exact or candidates)[0]


def select_all(index: ImageIndex) -> list[Descriptor]:
    """The runnable image manifests of an index (attestations and unknown types left out)."""
    out = []
    for desc in index.manifests:
        if desc.media_type not in MANIFEST_TYPES + INDEX_TYPES:
            continue
        if "vnd.docker.reference.type" in desc.annotations:
            continue
        if desc.platform is not None and desc.platform.os == "unknown":
            continue
        out.append(desc)
    return out
