"""The disk usage of a directory tree a container, a build step or a layer wrote (``du``'s count): any
depth, never through a mount (usable by every layer above ``format``).

The walk is the one of :mod:`lazypull.removetree`: a loop holding one directory descriptor at a time,
entries named relative to it (a tree a few thousand levels deep, which any ``RUN`` can make, neither
recurses nor passes PATH_MAX), the way back up (``..``) checked against the directory entered; a
directory moved meanwhile ends the walk with what was counted so far (a usage figure, not a check).
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Usage:
    """What a tree holds below its top: ``disk`` bytes in allocated blocks, ``apparent`` bytes (the sum
    of the regular files' and symlinks' sizes, as a layer's files count) and ``inodes`` (a file with
    several links counted once)."""

    disk: int = 0
    apparent: int = 0
    inodes: int = 0


def tree_usage(top: Path | str) -> Usage:
    """The usage of the tree at ``top`` (zero when it is absent or not a directory); other filesystems
    mounted below it are not entered, and entries that vanish meanwhile are not counted."""
    try:
        fd = os.open(top, _DIR_FLAGS)
    except OSError:
        return Usage()
    disk = apparent = inodes = 0
    seen: set[tuple[int, int]] = set()      # files with several links: counted once

    def scan(fd: int) -> list[str]:
        nonlocal disk, apparent, inodes
        subdirs = []
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                if st.st_nlink > 1 and not is_dir:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                inodes += 1
                disk += st.st_blocks * 512
                if is_dir:
                    if st.st_dev == device:
                        subdirs.append(entry.name)
                elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    apparent += st.st_size
        return subdirs

    try:
        st = os.fstat(fd)
        device = st.st_dev
        levels: list[tuple[tuple[int, int], list[str]]] = [((st.st_dev, st.st_ino), scan(fd))]
        while levels:
            pending = levels[-1][1]
            if pending:
                try:
                    child = os.open(pending.pop(), _DIR_FLAGS, dir_fd=fd)
                except OSError:         # gone, or replaced by a file or a link meanwhile
                    continue
                child_st = os.fstat(child)
                if child_st.st_dev != device:   # mounted there meanwhile
                    os.close(child)
                    continue
                os.close(fd)
                fd = child
                levels.append(((child_st.st_dev, child_st.st_ino), scan(fd)))
                continue
            levels.pop()
            if not levels:
                break
            up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            up_st = os.fstat(fd)
            if (up_st.st_dev, up_st.st_ino) != levels[-1][0]:
                break                   # moved while walked: what was counted
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return Usage(disk, apparent, inodes)
