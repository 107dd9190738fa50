"""The container root filesystem: overlayfs over the image's layer directories.

The lower directories (FUSE mountpoints of lazy layers, extracted directories of the others) are
reached through short numbered symlinks in ``<container>/l/`` and the mount is made from that
directory with relative paths, so that hundreds of layers fit in mount(2)'s one-page option string
(Docker's overlay2 driver does the same). Overlay allows at most 500 lower layers.

Options: ``index=off`` and ``metacopy=off`` because FUSE lowers cannot give the file handles those
need; ``redirect_dir=off`` so renaming a lower directory copies it (EXDEV to userspace) rather than
writing redirect xattrs that point into the layers.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from lazypull.errors import ContainerError

log = logging.getLogger(__name__)

MAX_LOWER_LAYERS = 500
OVERLAY_OPTIONS = ("index=off", "metacopy=off", "redirect_dir=off")
_MNT_DETACH = 2
_PAGE = 4096



@functools.cache
def _libc() -> ctypes.CDLL:
    """libc's functions, from the symbols this process already has: ``find_library("c")`` would run
    ldconfig (~2 ms) in every ``lazypull`` process that imports this module."""
    return ctypes.CDLL(None, use_errno=True)


def mountpoints() -> set[str]:
    """Every mountpoint of this mount namespace (from /proc/self/mountinfo, octal escapes decoded)."""
    points = set()
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            if len(fields) > 4:
                points.add(_unescape(fields[4]))
    return points


def _unescape(raw: bytes) -> str:
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 3 < len(raw) and raw[i + 1:i + 4].isdigit():
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def is_mountpoint(path: Path) -> bool:
    """Whether ``path`` itself has something mounted on it (mount table, or a device change)."""
    path = Path(os.path.abspath(path))
    if str(path) in mountpoints() or str(path.resolve()) in mountpoints():
        return True
    try:
        return os.lstat(path).st_dev != os.lstat(path.parent).st_dev
    except OSError:
        return False


def mount_overlay(lowers_top_first: Sequence[Path], upper: Path, work: Path, target: Path,
                  link_dir: Path, *, volatile: bool = False) -> None:
    """Mount overlayfs at ``target``; ``link_dir`` receives the numbered lower-dir symlinks.
    ``volatile``: no syncs of the upper filesystem (fsync, syncfs, unmount); a writable layer that
    need not survive a host crash."""
    if not lowers_top_first:
        raise ContainerError("an overlay needs at least one lower directory")
    if len(lowers_top_first) > MAX_LOWER_LAYERS:
        raise ContainerError(f"image has {len(lowers_top_first)} layers; overlayfs allows {MAX_LOWER_LAYERS}")
    for directory in (upper, work, target, link_dir):
        directory.mkdir(parents=True, exist_ok=True)
    names = []
    for index, lower in enumerate(lowers_top_first):
        if not lower.is_dir():
            raise ContainerError(f"layer directory {lower} is missing")
        link = link_dir / str(index)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(lower.resolve())
        names.append(str(index))
    options = ",".join([
        "lowerdir=" + ":".join(names),
        f"upperdir={os.path.relpath(upper, link_dir)}",
        f"workdir={os.path.relpath(work, link_dir)}",
        *OVERLAY_OPTIONS,
        *(["volatile"] if volatile else []),
    ])
    if volatile:
        # The kernel refuses a second volatile mount of the same workdir while this marker of the
        # first one exists (its upper may be inconsistent after a crash); we accept that risk.
        shutil.rmtree(work / "work" / "incompat" / "volatile", ignore_errors=True)
    if len(options) >= _PAGE:
        raise ContainerError(f"overlay mount options too long ({len(options)} bytes) for {target}")
    # mount(8) in a child process: relative lowerdirs resolve against *its* cwd, not ours.
    result = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)],
                            cwd=link_dir, capture_output=True, text=True)
    if result.returncode != 0:
        raise ContainerError(f"mounting the overlay rootfs at {target} failed: {result.stderr.strip()} "
                             f"(lowers: {', '.join(str(p) for p in lowers_top_first)})")
    log.debug("mounted overlay at %s over %d layers", target, len(lowers_top_first))


def sync_filesystem(path: Path) -> None:
    """syncfs(2) for the filesystem holding ``path``: what was written there is on the disk.

    After a full pull's extraction, so that the image survives a crash as its blobs do; and so that
    the first container does not pay for it, since unmounting an overlay syncs its upper filesystem.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc().syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise ContainerError(f"syncing the filesystem of {path} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def unmount(target: Path, *, retries: int = 20) -> None:
    """Unmount ``target`` if mounted; busy mounts are retried, then detached lazily."""
    for attempt in range(retries):
        if not is_mountpoint(target):
            return
        if _libc().umount2(os.fsencode(str(target)), 0) == 0:
            continue
        err = ctypes.get_errno()
        if err == errno.EINVAL:  # not a mountpoint (any more)
            return
        if err != errno.EBUSY:
            raise ContainerError(f"unmounting {target} failed: {os.strerror(err)}")
        time.sleep(0.05 * (attempt + 1))
    if is_mountpoint(target) and _libc().umount2(os.fsencode(str(target)), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise ContainerError(f"unmounting {target} failed: {os.strerror(err)}")
