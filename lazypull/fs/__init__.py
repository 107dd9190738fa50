"""The lazy filesystem: FUSE server (``fuse``), layer trees (``layer``), chunk cache, config, counters.

``mount_layer`` / ``unmount`` are what the mount server (``lazypull.snapshot``) calls.
"""

import typing

from lazypull._lazy import lazy_attributes as _lazy_attributes

if typing.TYPE_CHECKING:
    from lazypull.fs.mount import clean_stale_mounts as clean_stale_mounts
    from lazypull.fs.mount import lazypull_mounts as lazypull_mounts
    from lazypull.fs.mount import mount_layer as mount_layer
    from lazypull.fs.mount import unmount as unmount

__all__ = ["clean_stale_mounts", "lazypull_mounts", "mount_layer", "unmount"]

# Public name -> the submodule defining it, imported on first use: the mount server's client needs
# lazypull.fs.cache (layer paths) without loading the FUSE server that fs.mount imports.
_SOURCES: dict[str, str] = {
    "clean_stale_mounts": ".mount",
    "lazypull_mounts": ".mount",
    "mount_layer": ".mount",
    "unmount": ".mount",
}

if not typing.TYPE_CHECKING:     # mypy sees the imports above, so a misspelt name stays an error
    __getattr__, __dir__ = _lazy_attributes(__name__, globals(), _SOURCES, __all__)
