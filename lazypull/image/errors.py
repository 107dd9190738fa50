"""Errors of the image package, all under ``lazypull.errors.ImageError`` / ``StoreError``."""

from __future__ import annotations

from lazypull.errors import ImageError, StoreError
from lazypull.registry.errors import DigestMismatchError  # the one class for registry and image content


class ImageNotFoundError(ImageError):
    """No image of that name is in the store or layout."""


class BlobNotFoundError(StoreError):
    """A blob the operation needs is not in the store or layout."""


class UnsupportedMediaTypeError(ImageError):
    """A manifest, config or layer has a media type lazypull does not handle."""


class PlatformNotFoundError(ImageError):
    """An index has no manifest for the requested platform."""


__all__ = [
    "BlobNotFoundError",
    "DigestMismatchError",
    "ImageError",
    "ImageNotFoundError",
    "PlatformNotFoundError",
    "StoreError",
    "UnsupportedMediaTypeError",
]
