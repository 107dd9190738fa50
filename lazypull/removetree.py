"""Deleting a directory tree a container, a build step or a layer wrote: any depth, never through a link
or a mount (usable by every layer above ``format``).

``shutil.rmtree`` recurses (Python 3.11: a tree a few thousand levels deep, which any ``RUN`` can
make, raises RecursionError) and ``os.walk`` too; full paths stop working past PATH_MAX. Here the
walk is a loop holding one directory descriptor at a time, entries are named relative to it, and the
way back up (``..``) is checked against the directory that was entered, so a directory moved
meanwhile stops the removal instead of redirecting it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(top: Path | str, *, dir_fd: int | None = None) -> None:
    """Delete ``top`` (a file, a link or a directory and everything below it); absent is fine.
    ``dir_fd``: ``top`` is a name in that directory (as ``os.unlink``'s ``dir_fd``).

    Raises OSError if a directory below ``top`` is on another filesystem (a mount: nothing is
    deleted through it) or was moved while being emptied.
    """
    top = Path(top)
    try:
        st = os.lstat(top, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(top, dir_fd=dir_fd)
        return
    if dir_fd is not None:
        if len(top.parts) != 1 or top.name in (".", ".."):
            raise ValueError(f"remove_tree: {top} is not a name in the directory dir_fd")
        _remove_below(dir_fd, top)
        return
    parent = os.open(top.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _remove_below(parent, top)
    finally:
        os.close(parent)


def _open_dir(name: str, dir_fd: int) -> tuple[int, os.stat_result]:
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    return fd, os.fstat(fd)


def _empty_files(fd: int) -> list[str]:
    """Delete the non-directories of the directory ``fd``; its subdirectories' names."""
    subdirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=fd)
    return subdirs


def _remove_below(parent: int, top: Path) -> None:
    fd, st = _open_dir(top.name, parent)
    device = st.st_dev
    # the directories from top down to the current one: (name, (dev, ino), subdirectories left)
    levels: list[tuple[str, tuple[int, int], list[str]]] = []
    try:
        levels.append((top.name, (st.st_dev, st.st_ino), _empty_files(fd)))
        while levels:
            pending = levels[-1][2]
            if pending:
                name = pending.pop()
                try:
                    child, child_st = _open_dir(name, fd)
                except FileNotFoundError:
                    continue
                except OSError as err:
                    if err.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    os.unlink(name, dir_fd=fd)      # replaced by a file or a link meanwhile
                    continue
                if child_st.st_dev != device:
                    os.close(child)
                    raise OSError(errno.EXDEV, f"{top}: a directory below it ({name}) is a mount point; "
                                  "not removing through it")
                os.close(fd)
                fd = child
                levels.append((name, (child_st.st_dev, child_st.st_ino), _empty_files(fd)))
                continue
            name, _ident, _ = levels.pop()
            if not levels:
                os.rmdir(name, dir_fd=parent)
                break
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = up
            up_st = os.fstat(fd)
            if (up_st.st_dev, up_st.st_ino) != levels[-1][1]:
                raise OSError(errno.ESTALE, f"{top}: a directory below it moved while being removed")
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
