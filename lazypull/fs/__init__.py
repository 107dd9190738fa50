"""The lazy filesystem: FUSE server (``fuse``), layer trees (``layer``), chunk cache, config, counters.

This is its front door: the mount server (``lazypull.snapshot``) and the podman store
(``lazypull.store``) import only the names below. ``LayerFs`` (``facade``) opens, serves and steers the
layers of one server and owns what they share; the rest are the types and helpers around it.
"""

import typing

from lazypull._lazy import lazy_attributes as _lazy_attributes

if typing.TYPE_CHECKING:
    from lazypull.fs.cache import DirectoryCache as DirectoryCache
    from lazypull.fs.cache import digest_hex as digest_hex
    from lazypull.fs.cache import stored_bytes as stored_bytes
    from lazypull.fs.config import FsConfig as FsConfig
    from lazypull.fs.config import load_config as load_config
    from lazypull.fs.facade import LayerFs as LayerFs
    from lazypull.fs.facade import LiveConnection as LiveConnection
    from lazypull.fs.fuse.mount import mount_entry as mount_entry
    from lazypull.fs.fuse.ops import Negotiated as Negotiated
    from lazypull.fs.fuse.session import FuseMount as FuseMount
    from lazypull.fs.fuse.tree import ROOT_INODE as ROOT_INODE
    from lazypull.fs.fuse.tree import Attr as Attr
    from lazypull.fs.fuse.tree import FuseError as FuseError
    from lazypull.fs.fuse.tree import StatFs as StatFs
    from lazypull.fs.layer.access import is_recording as is_recording
    from lazypull.fs.layer.access import read_access_log as read_access_log
    from lazypull.fs.layer.access import request_recording as request_recording
    from lazypull.fs.layer.access import withdraw_request as withdraw_request
    from lazypull.fs.layer.tree import LayerTree as LayerTree
    from lazypull.fs.mount import clean_stale_mounts as clean_stale_mounts
    from lazypull.fs.mount import detach as detach
    from lazypull.fs.mount import is_layer_mount as is_layer_mount
    from lazypull.fs.mount import lazypull_mounts as lazypull_mounts
    from lazypull.fs.mount import mount_layer as mount_layer
    from lazypull.fs.mount import unmount as unmount
    from lazypull.fs.remote import FileRangeSource as FileRangeSource
    from lazypull.fs.remote import RangeSource as RangeSource
    from lazypull.fs.stats import COUNTERS as COUNTERS

__all__ = [
    "COUNTERS",
    "ROOT_INODE",
    "Attr",
    "DirectoryCache",
    "FileRangeSource",
    "FsConfig",
    "FuseError",
    "FuseMount",
    "LayerFs",
    "LayerTree",
    "LiveConnection",
    "Negotiated",
    "RangeSource",
    "StatFs",
    "clean_stale_mounts",
    "detach",
    "digest_hex",
    "is_layer_mount",
    "is_recording",
    "lazypull_mounts",
    "load_config",
    "mount_entry",
    "mount_layer",
    "read_access_log",
    "request_recording",
    "stored_bytes",
    "unmount",
    "withdraw_request",
]

# Public name -> the submodule defining it, imported on first use: the mount server's client needs
# lazypull.fs.cache (layer paths) without loading the FUSE server that fs.mount imports.
_SOURCES: dict[str, str] = {
    "Attr": ".fuse.tree",
    "COUNTERS": ".stats",
    "DirectoryCache": ".cache",
    "FileRangeSource": ".remote",
    "FsConfig": ".config",
    "FuseError": ".fuse.tree",
    "FuseMount": ".fuse.session",
    "LayerFs": ".facade",
    "LayerTree": ".layer.tree",
    "LiveConnection": ".facade",
    "Negotiated": ".fuse.ops",
    "ROOT_INODE": ".fuse.tree",
    "RangeSource": ".remote",
    "StatFs": ".fuse.tree",
    "clean_stale_mounts": ".mount",
    "detach": ".mount",
    "digest_hex": ".cache",
    "is_layer_mount": ".mount",
    "is_recording": ".layer.access",
    "lazypull_mounts": ".mount",
    "load_config": ".config",
    "mount_entry": ".fuse.mount",
    "mount_layer": ".mount",
    "read_access_log": ".layer.access",
    "request_recording": ".layer.access",
    "stored_bytes": ".cache",
    "unmount": ".mount",
    "withdraw_request": ".layer.access",
}

if not typing.TYPE_CHECKING:     # mypy sees the imports above, so a misspelt name stays an error
    __getattr__, __dir__ = _lazy_attributes(__name__, globals(), _SOURCES, __all__)
