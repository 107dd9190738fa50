"""The read-only ``Layer``, ``Image`` and ``ImageIndex`` protocols every source and sink speaks.

Getters only (in the go-containerregistry style), so implementations may compute values lazily and
cache them; "changing" an image means building a new one. Sources: :mod:`lazypull.image.registry`
(remote), :mod:`lazypull.image.layout` (OCI layout), :mod:`lazypull.image.store` (local store).
"""

from __future__ import annotations

from typing import Any, BinaryIO, Protocol, runtime_checkable

from lazypull.registry import Descriptor, Platform


@runtime_checkable
class Layer(Protocol):
    """One filesystem layer blob."""

    def descriptor(self) -> Descriptor:
        """The descriptor the manifest lists (media type, digest, size, annotations)."""
        ...

    def digest(self) -> str:
        """sha256 of the compressed blob."""
        ...

    def diff_id(self) -> str:
        """sha256 of the uncompressed tar (from the config when known, else computed)."""
        ...

    def size(self) -> int:
        """Compressed size in bytes."""
        ...

    def media_type(self) -> str:
        """The layer media type."""
        ...

    def annotations(self) -> dict[str, str]:
        """The descriptor's annotations (copy)."""
        ...

    def compressed(self) -> BinaryIO:
        """The blob as stored (a fresh stream each call; the caller closes it)."""
        ...

    def uncompressed(self) -> BinaryIO:
        """The tar stream (a fresh stream each call; the caller closes it)."""
        ...


@runtime_checkable
class Image(Protocol):
    """A single-platform image: a manifest, its config, its layers."""

    def descriptor(self) -> Descriptor:
        """Descriptor of the manifest (with platform when known from an index)."""
        ...

    def digest(self) -> str:
        """Digest of the manifest bytes."""
        ...

    def media_type(self) -> str:
        """The manifest media type (OCI or Docker)."""
        ...

    def raw_manifest(self) -> bytes:
        """The manifest bytes exactly as stored."""
        ...

    def manifest(self) -> dict[str, Any]:
        """The parsed manifest."""
        ...

    def config_descriptor(self) -> Descriptor:
        """The manifest's config descriptor."""
        ...

    def raw_config(self) -> bytes:
        """The config blob bytes (digest verified)."""
        ...

    def config(self) -> dict[str, Any]:
        """The parsed config."""
        ...

    def layers(self) -> list[Layer]:
        """The layers, bottom first."""
        ...

    def platform(self) -> Platform:
        """The platform the config declares."""
        ...


@runtime_checkable
class ImageIndex(Protocol):
    """A multi-platform image: an OCI index or Docker manifest list."""

    def descriptor(self) -> Descriptor:
        """Descriptor of the index."""
        ...

    def digest(self) -> str:
        """Digest of the index bytes."""
        ...

    def media_type(self) -> str:
        """The index media type."""
        ...

    def raw_manifest(self) -> bytes:
        """The index bytes exactly as stored."""
        ...

    def manifest(self) -> dict[str, Any]:
        """The parsed index."""
        ...

    def manifests(self) -> list[Descriptor]:
        """The entries of the index."""
        ...

    def image(self, desc: Descriptor) -> Image:
        """The image an entry points at."""
        ...

    def index(self, desc: Descriptor) -> ImageIndex:
        """A nested index an entry points at."""
        ...


Root = Image | ImageIndex
"""What a name or tag points at."""
