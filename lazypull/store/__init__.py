"""The additional layer store (``lazypull store``): containers/storage (podman, buildah, CRI-O) reads
lazy layers from a FUSE directory the mount server serves (docs/podman.md).

``names`` (directory names <-> references and digests, ``info``), ``catalog`` (what an image's layers
are, from its registry), ``auth`` (the credential files podman uses), ``tree`` (the FUSE tree),
``service`` (the store in the mount server: layer mounts, use counts, release after a grace period).
"""

import typing

from lazypull._lazy import lazy_attributes as _lazy_attributes

if typing.TYPE_CHECKING:
    from lazypull.store.auth import auth_files as auth_files
    from lazypull.store.names import decode_ref as decode_ref
    from lazypull.store.names import encode_ref as encode_ref
    from lazypull.store.service import Stores as Stores
    from lazypull.store.service import StoreSpec as StoreSpec
    from lazypull.store.tree import StoreTree as StoreTree

__all__ = ["StoreSpec", "StoreTree", "Stores", "auth_files", "decode_ref", "encode_ref"]

# Public name -> the submodule defining it, imported on first use: the CLI needs auth_files without
# loading the FUSE server and the mount server's manager that the service imports.
_SOURCES: dict[str, str] = {
    "StoreSpec": ".service",
    "StoreTree": ".tree",
    "Stores": ".service",
    "auth_files": ".auth",
    "decode_ref": ".names",
    "encode_ref": ".names",
}

if not typing.TYPE_CHECKING:     # mypy sees the imports above, so a misspelt name stays an error
    __getattr__, __dir__ = _lazy_attributes(__name__, globals(), _SOURCES, __all__)
