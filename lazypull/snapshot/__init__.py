"""The mount server (``lazypull daemon``) and its client: keeps the lazy layer filesystems mounted.

``MountClient(root)`` is the API the CLI and the runtime use (docs/architecture.md, "snapshot").
"""

from lazypull.snapshot.client import MountClient, daemon_pid
from lazypull.snapshot.protocol import LayerMount, MountInfo, PulledImage

__all__ = ["LayerMount", "MountClient", "MountInfo", "PulledImage", "daemon_pid"]
