"""The error tree shared by everything above ``lazypull.format``.

::

    LazypullError
    ├── ReferenceError_      a malformed image reference          (lazypull.registry)
    ├── RegistryError        the registry answered with an error  (lazypull.registry)
    │   └── ...              see lazypull.registry.errors
    ├── ImageError           an image is malformed or missing     (lazypull.image)
    ├── StoreError           the local store cannot do what was asked
    ├── MountError           a layer filesystem could not be mounted or served
    └── ContainerError       runc or the container setup failed

``lazypull.format`` stands alone and has its own root, ``lazypull.format.FormatError``;
the command line reports both the same way.
"""

from __future__ import annotations


class LazypullError(Exception):
    """Root of every error lazypull raises on purpose (format errors excepted)."""


class ImageError(LazypullError):
    """An image, manifest or config is malformed, unsupported or missing."""


class StoreError(LazypullError):
    """The local content store or image index failed."""


class MountError(LazypullError):
    """A layer filesystem could not be mounted, served or unmounted."""


class ContainerError(LazypullError):
    """A container could not be created, started or removed."""
