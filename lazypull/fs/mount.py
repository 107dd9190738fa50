"""Mounting a layer tree with the FUSE server, and finding lazypull mounts left by a dead server."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lazypull.errors import MountError
from lazypull.fs.fuse import FuseMount, Tree
from lazypull.fs.fuse import unmount as fuse_unmount
from lazypull.fs.fuse.mount import FSTYPE

log = logging.getLogger(__name__)


def mount_layer(tree: Tree, mountpoint: Path, *, fsname: str = "lazypull", passthrough: bool = True,
                workers: tuple[int, int] = (1, 8)) -> FuseMount:
    """Serve ``tree`` at ``mountpoint`` (created if missing); returns the running mount."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(mountpoint) or _mounted_at(mountpoint):
        raise MountError(f"something is already mounted at {mountpoint}")
    return FuseMount(tree, mountpoint, fsname=fsname, passthrough=passthrough, workers=workers).start()


def unmount(mount: FuseMount) -> None:
    """Stop serving and detach the mount."""
    mount.stop()


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def lazypull_mounts(under: Path | None = None) -> list[Path]:
    """Mountpoints of ``fuse.lazypull`` filesystems (under ``under`` if given), from mountinfo."""
    found: list[Path] = []
    prefix = os.path.realpath(under) if under is not None else None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            fields = line.split()
            try:
                sep = fields.index("-", 6)
            except ValueError:
                continue
            if fields[sep + 1] != FSTYPE:
                continue
            point = _unescape(fields[4])
            if prefix is None or point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return found


def _mounted_at(path: Path) -> bool:
    target = os.path.realpath(path.parent) + "/" + path.name
    return any(str(p) == target for p in lazypull_mounts())


def clean_stale_mounts(under: Path) -> list[Path]:
    """Detach every lazypull mount under ``under`` (left by a server that died); the paths detached."""
    cleaned: list[Path] = []
    for point in sorted(lazypull_mounts(under), key=lambda p: len(str(p)), reverse=True):
        try:
            fuse_unmount(str(point))
            cleaned.append(point)
        except MountError as err:
            log.warning("could not detach stale mount %s: %s", point, err)
    return cleaned
