"""Images: the read-only ``Image``/``Layer`` model, the local store, OCI layouts, pull, push, convert.

Sources (each returns an ``Image`` or ``ImageIndex``): :func:`remote_root` (a registry),
:class:`Layout` (``oci:DIR[:TAG]``), :class:`Store` (named local images). Conversion is a function from
an image to a new image (:func:`convert_image`).
"""

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
    "convert_image",
    "copy_into_store",
    "layout_root",
    "normalize_name",
    "pull_image",
    "push_image",
    "remote_root",
]
