"""Mounting a layer tree with the FUSE server, and finding lazypull mounts left by a dead server."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

from lazypull.errors import MountError
from lazypull.fs.fuse import FuseMount, Tree
from lazypull.fs.fuse import unmount as fuse_unmount
from lazypull.fs.fuse.mount import FSTYPE, mount_entry, mountinfo

if TYPE_CHECKING:
    from lazypull.fs.fuse.ops import Negotiated

log = logging.getLogger(__name__)


def mount_layer(tree: Tree, mountpoint: Path, *, fsname: str = "lazypull", passthrough: bool = True,
                workers: tuple[int, int] = (1, 8), on_backing: Callable[[int, int], None] | None = None
                ) -> FuseMount:
    """Serve ``tree`` at ``mountpoint`` (created if missing); returns the running mount."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(mountpoint) or _mounted_at(mountpoint):
        raise MountError(f"something is already mounted at {mountpoint}")
    mount = FuseMount(tree, mountpoint, fsname=fsname, passthrough=passthrough, workers=workers)
    mount.on_backing = on_backing
    return mount.start()


def resume_layer(tree: Tree, mountpoint: Path, fd: int, state: Negotiated, backing: dict[int, int], *,
                 fsname: str = "lazypull", passthrough: bool = True, workers: tuple[int, int] = (1, 8),
                 journal: int | None = None) -> FuseMount:
    """Serve ``tree`` on the live connection ``fd`` of the mount at ``mountpoint`` (after a restart),
    with the passthrough ids (``ino -> id``) the previous server registered on it and its request
    journal's memfd ``journal`` (what it read and did not answer is answered from there)."""
    mount = FuseMount(tree, mountpoint, fsname=fsname, passthrough=passthrough, workers=workers)
    return mount.resume(fd, state, backing, journal)


def unmount(mount: FuseMount) -> None:
    """Stop serving and detach the mount."""
    mount.stop()


def detach(mountpoint: Path | str) -> None:
    """Detach whatever FUSE mount is at ``mountpoint`` (one a dead server left; ``MountError``)."""
    fuse_unmount(str(mountpoint))


def is_layer_mount(mountpoint: Path | str) -> bool:
    """Whether the topmost mount at ``mountpoint`` is a lazypull layer (live or left by a dead server)."""
    entry = mount_entry(str(mountpoint))
    return entry is not None and entry[0] == FSTYPE


def lazypull_mounts(under: Path | None = None) -> list[Path]:
    """Mountpoints of ``fuse.lazypull`` filesystems (under ``under`` if given), from mountinfo."""
    prefix = os.path.realpath(under) if under is not None else None
    return [Path(point) for point, fstype, _, _ in mountinfo()
            if fstype == FSTYPE and (prefix is None or point == prefix or point.startswith(prefix + "/"))]


def _mounted_at(path: Path) -> bool:
    target = os.path.realpath(path.parent) + "/" + path.name
    return any(str(p) == target for p in lazypull_mounts())


def clean_stale_mounts(under: Path, keep: Collection[Path] = ()) -> list[Path]:
    """Detach every lazypull mount under ``under`` (left by a server that died) but those in ``keep``
    (live connections a new server takes over); the paths detached."""
    cleaned: list[Path] = []
    kept = {os.path.realpath(p.parent) + "/" + p.name for p in keep}
    for point in sorted(lazypull_mounts(under), key=lambda p: len(str(p)), reverse=True):
        if str(point) in kept:
            continue
        try:
            fuse_unmount(str(point))
            cleaned.append(point)
        except MountError as err:
            log.warning("could not detach stale mount %s: %s", point, err)
    return cleaned
