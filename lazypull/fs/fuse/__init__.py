"""A FUSE server speaking the kernel protocol on ``/dev/fuse`` directly (no libfuse), serving a read-only
:class:`Tree`: ``protocol`` (bytes), ``session`` (the mount and its replies), ``workers`` (the threads
reading requests), ``ops`` (requests -> Tree calls), ``mount`` (mount(2)/umount2), ``passthrough``
(backing files for FUSE passthrough).
"""

import typing

from lazypull._lazy import lazy_attributes as _lazy_attributes

if typing.TYPE_CHECKING:
    from lazypull.fs.fuse.mount import is_mounted as is_mounted
    from lazypull.fs.fuse.mount import unmount as unmount
    from lazypull.fs.fuse.session import DAY as DAY
    from lazypull.fs.fuse.session import FuseMount as FuseMount
    from lazypull.fs.fuse.tree import ROOT_INODE as ROOT_INODE
    from lazypull.fs.fuse.tree import Attr as Attr
    from lazypull.fs.fuse.tree import FuseError as FuseError
    from lazypull.fs.fuse.tree import InodeId as InodeId
    from lazypull.fs.fuse.tree import StatFs as StatFs
    from lazypull.fs.fuse.tree import Tree as Tree

__all__ = [
    "DAY",
    "ROOT_INODE",
    "Attr",
    "FuseError",
    "FuseMount",
    "InodeId",
    "StatFs",
    "Tree",
    "is_mounted",
    "unmount",
]

# Public name -> the submodule defining it, imported on first use: checking or undoing a mount
# (fuse.mount) must not load the request loop and protocol tables (fuse.session).
_SOURCES: dict[str, str] = {
    "Attr": ".tree",
    "DAY": ".session",
    "FuseError": ".tree",
    "FuseMount": ".session",
    "InodeId": ".tree",
    "ROOT_INODE": ".tree",
    "StatFs": ".tree",
    "Tree": ".tree",
    "is_mounted": ".mount",
    "unmount": ".mount",
}

if not typing.TYPE_CHECKING:     # mypy sees the imports above, so a misspelt name stays an error
    __getattr__, __dir__ = _lazy_attributes(__name__, globals(), _SOURCES, __all__)
