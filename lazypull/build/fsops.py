"""File operations inside a root filesystem being built (COPY, ADD, WORKDIR), never outside it.

Every destination path is resolved with its symlinks scoped to the root (an absolute link in the
image means the image's root, as for a process chrooted there), one component at a time; files are
created with ``O_NOFOLLOW``. A source tree is copied as Docker does: regular files, directories,
symlinks (as links, never followed), hardlinks within the tree, FIFOs and device nodes; modes,
times and extended attributes (not overlayfs' own) kept; owners as given.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lazypull.build.errors import BuildError
from lazypull.removetree import remove_tree
from lazypull.rootpath import TooManyLinks, resolve_in_root

_SKIPPED_XATTR_PREFIXES = ("trusted.overlay.", "security.selinux")


def scoped_path(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """``path`` inside ``root`` with symlinks resolved in ``root``; missing parts are appended as given."""
    try:
        return resolve_in_root(root, path, follow_last=follow_last)
    except TooManyLinks:
        raise BuildError(f"{path}: too many levels of symbolic links") from None


def make_dirs(root: Path, path: str, *, uid: int = 0, gid: int = 0, mode: int = 0o755) -> Path:
    """Create the directory ``path`` (and missing parents) in ``root``; returns its real location."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done = ""
    for part in parts:
        done = f"{done}/{part}"
        real = scoped_path(root, done)
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            os.mkdir(real, mode)
            os.chown(real, uid, gid)
            os.chmod(real, mode)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise BuildError(f"cannot create directory {done}: a file of that name is in the image")
    return scoped_path(root, path)


@dataclass(frozen=True)
class CopyAttrs:
    """What COPY sets on what it writes: owner (None: the source's) and mode bits (None: the source's)."""

    uid: int | None = None
    gid: int | None = None
    mode: int | None = None


def _copy_xattrs(src: str, dest: Path) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith(_SKIPPED_XATTR_PREFIXES):
            continue
        try:
            os.setxattr(dest, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
        except OSError as err:
            raise BuildError(f"cannot set extended attribute {name} on {dest.name}: {err.strerror}") from err


def open_dir_beneath(anchor: Path, path: Path) -> int:
    """A descriptor of the directory ``path`` below ``anchor``, opened one component at a time without
    following links: whoever can write in a build context cannot swap a directory on the way for a
    link to the host's files between our checks and our reads."""
    fd = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in path.relative_to(anchor).parts:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as err:
        os.close(fd)
        raise BuildError(f"{path}: changed while being read ({err.strerror})") from err
    return fd


def open_source_file(anchor: Path, path: Path) -> BinaryIO:
    """The regular file ``path`` below ``anchor``, opened as :func:`open_dir_beneath` opens directories."""
    parent = open_dir_beneath(anchor, path.parent)
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    except OSError as err:
        raise BuildError(f"{path}: cannot be read ({err.strerror})") from err
    finally:
        os.close(parent)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BuildError(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _remove(path: Path) -> None:
    remove_tree(path)


class TreeCopier:
    """Copies source entries into a root filesystem; remembers inodes to keep hardlinks."""

    def __init__(self, root: Path, attrs: CopyAttrs, *, source: Path,
                 skip: Callable[[Path], bool] | None = None) -> None:
        self.root = root
        self.source = source            # sources are read below it (see open_dir_beneath)
        self.attrs = attrs
        self.skip = skip
        self.links: dict[tuple[int, int], Path] = {}

    def _finish(self, src_st: os.stat_result, dest: Path, src: str) -> None:
        uid = src_st.st_uid if self.attrs.uid is None else self.attrs.uid
        gid = src_st.st_gid if self.attrs.gid is None else self.attrs.gid
        os.chown(dest, uid, gid, follow_symlinks=False)
        if not stat.S_ISLNK(src_st.st_mode):
            _copy_xattrs(src, dest)
            mode = stat.S_IMODE(src_st.st_mode) if self.attrs.mode is None else self.attrs.mode
            os.chmod(dest, mode)
        else:
            _copy_xattrs(src, dest)
        os.utime(dest, ns=(src_st.st_atime_ns, src_st.st_mtime_ns), follow_symlinks=False)

    def copy(self, src: Path, dest: Path) -> None:
        """Copy ``src`` (not following it if a link) to the real path ``dest`` whose parent exists."""
        parent = open_dir_beneath(self.source, src.parent)
        try:
            self._copy_at(parent, src, dest)
        finally:
            os.close(parent)

    def _copy_at(self, parent: int, src: Path, dest: Path) -> None:
        name = src.name
        ref = f"/proc/self/fd/{parent}/{name}"          # the entry itself, for its xattrs (not followed)
        st = os.lstat(name, dir_fd=parent)
        mode = st.st_mode
        existing: os.stat_result | None
        try:
            existing = os.lstat(dest)
        except FileNotFoundError:
            existing = None
        if stat.S_ISDIR(mode):
            if existing is not None and stat.S_ISLNK(existing.st_mode):
                real = scoped_path(self.root, "/" + str(dest.relative_to(self.root)))
                if real.is_dir() and not real.is_symlink():
                    dest, existing = real, os.lstat(real)
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                _remove(dest)
                existing = None
            if existing is None:
                os.mkdir(dest, 0o700)
            self.copy_children(src, dest)
            if existing is None:            # a directory of the image keeps its own owner and mode
                self._finish(st, dest, ref)
            return
        if existing is not None:
            _remove(dest)
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            os.link(self.links[key], dest, follow_symlinks=False)
            return
        if stat.S_ISREG(mode):
            src_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
            try:
                if os.fstat(src_fd).st_ino != st.st_ino:
                    raise BuildError(f"{src} changed while being copied")
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                dest_fd = os.open(dest, flags, 0o600)
                try:
                    while True:
                        copied = os.sendfile(dest_fd, src_fd, None, 1 << 30)
                        if copied == 0:
                            break
                finally:
                    os.close(dest_fd)
            finally:
                os.close(src_fd)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=parent), dest)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(dest, 0o600)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            os.mknod(dest, stat.S_IFMT(mode) | 0o600, st.st_rdev)
        else:
            return                                  # sockets are not copied (as Docker)
        if st.st_nlink > 1:
            self.links[key] = dest
        self._finish(st, dest, ref)

    def copy_children(self, src: Path, dest: Path) -> None:
        """Copy what is in the directory ``src`` into the existing directory ``dest``."""
        fd = open_dir_beneath(self.source, src)
        try:
            with os.scandir(fd) as entries:
                names = sorted(entry.name for entry in entries)
        finally:
            os.close(fd)
        for name in names:
            child = src / name
            if self.skip is not None and self.skip(child):
                continue
            self.copy(child, dest / name)
