"""Images: the read-only ``Image``/``Layer`` model, the local store, OCI layouts, pull, push, convert.

Sources (each returns an ``Image`` or ``ImageIndex``): :func:`remote_root` (a registry),
:class:`Layout` (``oci:DIR[:TAG]``), :class:`Store` (named local images). Conversion is a function from
an image to a new image (:func:`convert_image`).
"""

import typing

from lazypull._lazy import lazy_attributes as _lazy_attributes

if typing.TYPE_CHECKING:
    from lazypull.image.blobs import BlobInfo as BlobInfo
    from lazypull.image.convert import ConvertOptions as ConvertOptions
    from lazypull.image.convert import ConvertResult as ConvertResult
    from lazypull.image.convert import convert_image as convert_image
    from lazypull.image.errors import BlobNotFoundError as BlobNotFoundError
    from lazypull.image.errors import DigestMismatchError as DigestMismatchError
    from lazypull.image.errors import ImageNotFoundError as ImageNotFoundError
    from lazypull.image.errors import PlatformNotFoundError as PlatformNotFoundError
    from lazypull.image.errors import UnsupportedMediaTypeError as UnsupportedMediaTypeError
    from lazypull.image.layout import Layout as Layout
    from lazypull.image.layout import layout_root as layout_root
    from lazypull.image.model import Image as Image
    from lazypull.image.model import ImageIndex as ImageIndex
    from lazypull.image.model import Layer as Layer
    from lazypull.image.model import Root as Root
    from lazypull.image.progress import NULL_PROGRESS as NULL_PROGRESS
    from lazypull.image.progress import Progress as Progress
    from lazypull.image.pull import complete_image as complete_image
    from lazypull.image.pull import copy_into_store as copy_into_store
    from lazypull.image.pull import pull_image as pull_image
    from lazypull.image.push import PushResult as PushResult
    from lazypull.image.push import push_image as push_image
    from lazypull.image.registry import remote_root as remote_root
    from lazypull.image.store import ImageRecord as ImageRecord
    from lazypull.image.store import ResolvedImage as ResolvedImage
    from lazypull.image.store import Store as Store
    from lazypull.image.store import normalize_name as normalize_name

__all__ = [
    "NULL_PROGRESS",
    "BlobInfo",
    "BlobNotFoundError",
    "ConvertOptions",
    "ConvertResult",
    "DigestMismatchError",
    "Image",
    "ImageIndex",
    "ImageNotFoundError",
    "ImageRecord",
    "Layer",
    "Layout",
    "PlatformNotFoundError",
    "Progress",
    "PushResult",
    "ResolvedImage",
    "Root",
    "Store",
    "UnsupportedMediaTypeError",
    "complete_image",
    "convert_image",
    "copy_into_store",
    "layout_root",
    "normalize_name",
    "pull_image",
    "push_image",
    "remote_root",
]

# Public name -> the submodule defining it, imported on first use: resolving an image in the store
# (create, run) needs neither conversion (the format writer) nor pull/push (httpx).
_SOURCES: dict[str, str] = {
    "BlobInfo": ".blobs",
    "BlobNotFoundError": ".errors",
    "ConvertOptions": ".convert",
    "ConvertResult": ".convert",
    "DigestMismatchError": ".errors",
    "Image": ".model",
    "ImageIndex": ".model",
    "ImageNotFoundError": ".errors",
    "ImageRecord": ".store",
    "Layer": ".model",
    "Layout": ".layout",
    "NULL_PROGRESS": ".progress",
    "PlatformNotFoundError": ".errors",
    "Progress": ".progress",
    "PushResult": ".push",
    "ResolvedImage": ".store",
    "Root": ".model",
    "Store": ".store",
    "UnsupportedMediaTypeError": ".errors",
    "convert_image": ".convert",
    "complete_image": ".pull",
    "copy_into_store": ".pull",
    "layout_root": ".layout",
    "normalize_name": ".store",
    "pull_image": ".pull",
    "push_image": ".push",
    "remote_root": ".registry",
}

if not typing.TYPE_CHECKING:     # mypy sees the imports above, so a misspelt name stays an error
    __getattr__, __dir__ = _lazy_attributes(__name__, globals(), _SOURCES, __all__)
