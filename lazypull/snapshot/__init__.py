"""The mount server (``lazypull daemon``) and its client: keeps the lazy layer filesystems mounted.

``MountClient(root)`` is the API the CLI and the runtime use (docs/architecture.md, "snapshot").
Its names load on first use: the connection keeper (``snapshot.keeper``) and the mount server are
fresh interpreters in this package that never use the client, and importing it cost them ~30 ms of
their start (issue 14).
"""

import typing

from lazypull._lazy import lazy_attributes as _lazy_attributes

if typing.TYPE_CHECKING:
    from lazypull.snapshot.client import MountClient as MountClient
    from lazypull.snapshot.client import daemon_pid as daemon_pid
    from lazypull.snapshot.protocol import LayerMount as LayerMount
    from lazypull.snapshot.protocol import MountInfo as MountInfo
    from lazypull.snapshot.protocol import PulledImage as PulledImage

__all__ = ["LayerMount", "MountClient", "MountInfo", "PulledImage", "daemon_pid"]

# Public name -> the submodule defining it, imported on first use.
_SOURCES: dict[str, str] = {
    "LayerMount": ".protocol",
    "MountClient": ".client",
    "MountInfo": ".protocol",
    "PulledImage": ".protocol",
    "daemon_pid": ".client",
}

if not typing.TYPE_CHECKING:     # mypy sees the imports above, so a misspelt name stays an error
    __getattr__, __dir__ = _lazy_attributes(__name__, globals(), _SOURCES, __all__)
