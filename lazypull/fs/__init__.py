"""The lazy filesystem: FUSE server (``fuse``), layer trees (``layer``), chunk cache, config, counters.

``mount_layer`` / ``unmount`` are what the mount server (``lazypull.snapshot``) calls.
"""

from lazypull.fs.mount import clean_stale_mounts, lazypull_mounts, mount_layer, unmount

__all__ = ["clean_stale_mounts", "lazypull_mounts", "mount_layer", "unmount"]
