"""Generic ``Image``/``ImageIndex``/``Layer`` implementations over any blob source.

A source (store, OCI layout, registry) only implements :class:`BlobProvider` (read a small blob whole,
open a large one as a stream); everything else — manifest parsing and checking, config, layers,
DiffIDs — is done once here (the ``partial`` idea of go-containerregistry).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any, BinaryIO, ClassVar, Protocol

from lazypull.format.annotations import UNCOMPRESSED_DIGEST_ANNOTATION
from lazypull.image import mediatypes as mt
from lazypull.image.compression import decompressed
from lazypull.image.digest import check_digest, sha256_bytes
from lazypull.image.errors import DigestMismatchError, ImageError, UnsupportedMediaTypeError
from lazypull.image.model import Image, ImageIndex, Layer, Root
from lazypull.image.platform import config_platform
from lazypull.registry import MAX_MANIFEST_SIZE, Descriptor, ManifestError, Platform
from lazypull.registry import parse_index as registry_parse_index
from lazypull.registry import parse_manifest_document as registry_parse_manifest_document

MAX_CONFIG_SIZE = 16 << 20


class BlobProvider(Protocol):
    """The minimal core a source implements."""

    def read_blob(self, desc: Descriptor) -> bytes:
        """The whole blob; implementations check digest and size."""
        ...

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """A stream of the blob (the consumer verifies what it reads)."""
        ...


def kind_of(desc: Descriptor) -> str:
    """What a descriptor points at, for messages: index, manifest, config or blob."""
    if mt.is_index(desc.media_type):
        return "index"
    if mt.is_manifest(desc.media_type):
        return "manifest"
    if desc.media_type in mt.CONFIG_TYPES:
        return "config"
    return "layer" if mt.is_layer(desc.media_type) else "blob"


def verify_bytes(data: bytes, desc: Descriptor, what: str) -> bytes:
    """Return ``data`` if it matches ``desc`` (size and digest), else raise DigestMismatchError."""
    if len(data) != desc.size:
        raise DigestMismatchError(f"{what} {desc.digest}: size {len(data)} does not match descriptor size "
                                  f"{desc.size}")
    actual = sha256_bytes(data)
    if actual != desc.digest:
        raise DigestMismatchError(f"{what} {desc.digest}: content has digest {actual}")
    return data


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Decode a JSON object, naming ``what`` when it is not one."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # RecursionError: nested too deep
        raise ImageError(f"{what} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise ImageError(f"{what} is not a JSON object")
    return value


def _structure_error(err: ManifestError, desc: Descriptor, what: str) -> ManifestError:
    """``registry``'s structure error, naming the document's digest."""
    return ManifestError(f"{what} {desc.digest}: {err}")


def _check_media_type(media_type: str, desc: Descriptor, what: str) -> None:
    """The document's own ``mediaType`` must be the one of the descriptor that pointed at it."""
    if media_type != desc.media_type:
        raise ImageError(f"{what} {desc.digest}: mediaType {media_type!r} differs from descriptor's "
                         f"{desc.media_type!r}")


def parse_manifest(raw: bytes, desc: Descriptor) -> tuple[dict[str, Any], Descriptor, list[Descriptor]]:
    """Check an image manifest; returns (document, config descriptor, layer descriptors). The JSON is
    decoded once: the document returned is the one ``registry`` checked."""
    try:
        manifest, document = registry_parse_manifest_document(raw, desc.media_type)
    except ManifestError as err:
        raise _structure_error(err, desc, "manifest") from err
    _check_media_type(manifest.media_type, desc, "manifest")
    return document, manifest.config, list(manifest.layers)


def parse_index(raw: bytes, desc: Descriptor) -> list[Descriptor]:
    """Check an index / manifest list; returns its entries."""
    try:
        index = registry_parse_index(raw, desc.media_type)
    except ManifestError as err:
        raise _structure_error(err, desc, "index") from err
    _check_media_type(index.media_type, desc, "index")
    return list(index.manifests)


def parse_config(raw: bytes, desc: Descriptor) -> dict[str, Any]:
    """Check an image config (rootfs.diff_ids are digests)."""
    doc = parse_json_object(raw, f"config {desc.digest}")
    rootfs = doc.get("rootfs")
    if rootfs is not None:
        if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids", []), list):
            raise ImageError(f"config {desc.digest}: rootfs.diff_ids must be a list")
        for i, d in enumerate(rootfs.get("diff_ids", [])):
            check_digest(d, f"config {desc.digest} rootfs.diff_ids[{i}]")
    return doc


def check_declared_diff_ids(layers: Sequence[Descriptor], diff_ids: Sequence[str]) -> None:
    """Refuse an image whose layer descriptors declare a DiffID (``containerd.io/uncompressed``) other
    than the config's ``rootfs.diff_ids`` entry for that layer.

    A lazy pull never hashes whole layers, so the DiffID it cannot compute is checked where the image
    states it twice: an image that contradicts itself is refused (by both pulls, before it is named),
    as a full pull refuses a layer whose DiffID differs from the config's."""
    for index, desc in enumerate(layers):
        declared = (desc.annotations or {}).get(UNCOMPRESSED_DIGEST_ANNOTATION)
        expected = diff_ids[index] if index < len(diff_ids) else None
        if declared and expected and declared != expected:
            raise ImageError(f"layer {desc.digest}: its {UNCOMPRESSED_DIGEST_ANNOTATION} annotation "
                             f"{declared[:80]!r} does not match the config's DiffID {expected}")


def diff_id_of(stream: BinaryIO, compression: str, what: str) -> tuple[str, int]:
    """DiffID and uncompressed size of a compressed layer stream (the stream is closed)."""
    import hashlib

    from lazypull.format.compression import DECOMPRESS_ERRORS

    h = hashlib.sha256()
    n = 0
    reader = decompressed(stream, compression)  # type: ignore[arg-type]
    try:
        with reader:
            while chunk := reader.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
    except DECOMPRESS_ERRORS as err:
        raise ImageError(f"{what}: cannot decompress: {err}") from err
    return "sha256:" + h.hexdigest(), n


class BlobLayer:
    """A layer read through a BlobProvider; the DiffID comes from the config when known."""

    def __init__(self, provider: BlobProvider, desc: Descriptor, diff_id: str | None = None) -> None:
        if not mt.is_layer(desc.media_type):
            raise UnsupportedMediaTypeError(f"layer {desc.digest}: unsupported media type "
                                            f"{desc.media_type!r}")
        self._provider = provider
        self._desc = desc
        self._diff_id = diff_id

    def descriptor(self) -> Descriptor:
        return self._desc

    def digest(self) -> str:
        return self._desc.digest

    def diff_id(self) -> str:
        if self._diff_id is None:
            self._diff_id, _ = diff_id_of(self.compressed(), mt.layer_compression(self._desc.media_type),
                                          f"layer {self._desc.digest}")
        return self._diff_id

    def size(self) -> int:
        return self._desc.size

    def media_type(self) -> str:
        return self._desc.media_type

    def annotations(self) -> dict[str, str]:
        return dict(self._desc.annotations)

    def compressed(self) -> BinaryIO:
        return self._provider.open_blob(self._desc)

    def uncompressed(self) -> BinaryIO:
        return decompressed(self.compressed(), mt.layer_compression(self._desc.media_type))


class _ManifestBlob:
    """What an image manifest and an index share: the descriptor and the raw, verified document.

    ``_KIND`` names the document in messages ("manifest" / "index"); ``_accepts`` is its media-type test.
    """

    _KIND: ClassVar[str]

    @staticmethod
    def _accepts(media_type: str) -> bool:
        raise NotImplementedError

    def __init__(self, provider: BlobProvider, desc: Descriptor, raw: bytes | None = None) -> None:
        if not self._accepts(desc.media_type):
            raise UnsupportedMediaTypeError(f"{self._KIND} {desc.digest}: unsupported media type "
                                            f"{desc.media_type!r}")
        self._provider = provider
        self._desc = desc
        self._raw = verify_bytes(raw, desc, self._KIND) if raw is not None else None

    def descriptor(self) -> Descriptor:
        return self._desc

    def digest(self) -> str:
        return self._desc.digest

    def media_type(self) -> str:
        return self._desc.media_type

    def raw_manifest(self) -> bytes:
        if self._raw is None:
            if self._desc.size > MAX_MANIFEST_SIZE:
                raise ImageError(f"{self._KIND} {self._desc.digest}: size {self._desc.size} exceeds "
                                 f"{MAX_MANIFEST_SIZE}")
            self._raw = verify_bytes(self._provider.read_blob(self._desc), self._desc, self._KIND)
        return self._raw

    def manifest(self) -> dict[str, Any]:
        return parse_json_object(self.raw_manifest(), f"{self._KIND} {self._desc.digest}")


class ManifestImage(_ManifestBlob):
    """An image manifest read through a BlobProvider."""

    _KIND = "manifest"
    _accepts = staticmethod(mt.is_manifest)

    @functools.cached_property
    def _parsed(self) -> tuple[dict[str, Any], Descriptor, list[Descriptor]]:
        return parse_manifest(self.raw_manifest(), self._desc)

    def parsed_manifest(self) -> tuple[dict[str, Any], Descriptor, list[Descriptor]]:
        """:func:`parse_manifest` of this image, done once for all its accessors: (document, config
        descriptor, layer descriptors)."""
        document, config, layers = self._parsed
        return document, config, list(layers)

    def config_descriptor(self) -> Descriptor:
        return self._parsed[1]

    def layer_descriptors(self) -> list[Descriptor]:
        """The layer descriptors (without building Layer objects)."""
        return list(self._parsed[2])

    @functools.cached_property
    def _raw_config(self) -> bytes:
        desc = self.config_descriptor()
        if desc.size > MAX_CONFIG_SIZE:
            raise ImageError(f"config {desc.digest}: size {desc.size} exceeds {MAX_CONFIG_SIZE}")
        return verify_bytes(self._provider.read_blob(desc), desc, "config")

    def raw_config(self) -> bytes:
        return self._raw_config

    @functools.cached_property
    def _config(self) -> dict[str, Any]:
        return parse_config(self._raw_config, self.config_descriptor())

    def config(self) -> dict[str, Any]:
        return parse_json_object(self._raw_config, f"config {self.config_descriptor().digest}")

    def diff_ids(self) -> list[str]:
        """The config's rootfs.diff_ids (may be empty for non-image artifacts)."""
        rootfs = self._config.get("rootfs") or {}
        return list(rootfs.get("diff_ids") or [])

    def layers(self) -> list[Layer]:
        descs = self._parsed[2]
        diff_ids = self.diff_ids()
        if diff_ids and len(diff_ids) != len(descs):
            raise ImageError(f"manifest {self._desc.digest}: {len(descs)} layers but config lists "
                             f"{len(diff_ids)} diff_ids")
        return [BlobLayer(self._provider, d, diff_ids[i] if diff_ids else None) for i, d in enumerate(descs)]

    def platform(self) -> Platform:
        return config_platform(self._config)


class ManifestIndex(_ManifestBlob):
    """An index / manifest list read through a BlobProvider."""

    _KIND = "index"
    _accepts = staticmethod(mt.is_index)

    @functools.cached_property
    def _parsed(self) -> list[Descriptor]:
        return parse_index(self.raw_manifest(), self._desc)

    def manifests(self) -> list[Descriptor]:
        return list(self._parsed)

    def image(self, desc: Descriptor) -> Image:
        return ManifestImage(self._provider, desc)

    def index(self, desc: Descriptor) -> ImageIndex:
        return ManifestIndex(self._provider, desc)


def open_root(provider: BlobProvider, desc: Descriptor, raw: bytes | None = None) -> Root:
    """The image or index a descriptor points at (media type decides; unknown types are refused)."""
    if mt.is_index(desc.media_type):
        return ManifestIndex(provider, desc, raw)
    if mt.is_manifest(desc.media_type):
        return ManifestImage(provider, desc, raw)
    raise UnsupportedMediaTypeError(f"{desc.digest}: unsupported manifest media type {desc.media_type!r}")
