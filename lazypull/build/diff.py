"""An overlayfs upper directory as an OCI layer tar (the changes one build step made).

overlayfs records a deletion as a character device 0/0 and a replaced directory as one carrying
``trusted.overlay.opaque=y``; the OCI layer format says ``.wh.NAME`` and ``DIR/.wh..wh..opq``. Other
extended attributes are kept (PAX ``SCHILY.xattr.``; overlayfs' own ``trusted.overlay.*`` are not),
hardlinks inside the step's changes stay hardlinks, modification times are kept (whole seconds),
owners are numeric. Entries are written in sorted order, so the same tree gives the same tar.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_OVERLAY_XATTR_PREFIX = "trusted.overlay."


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    values = {}
    for name in sorted(names):
        try:
            values[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return values


def _walk(top: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(relative name, path, lstat) of everything below ``top``, sorted, parents before children.

    Iterative: a step can leave a directory tree deeper than Python's recursion limit."""
    stack: list[tuple[str, Path]] = [("", top)]
    while stack:
        prefix, directory = stack.pop()
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for entry in entries:
            path = Path(entry.path)
            st = os.lstat(path)
            name = f"{prefix}{entry.name}"
            yield name, path, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((name + "/", path))
        stack.extend(reversed(subdirs))


def _info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    return info


def write_diff(upper: Path, out: BinaryIO, *, skip: frozenset[str] = frozenset()) -> int:
    """Write the changes in ``upper`` as an uncompressed OCI layer tar to ``out``; returns the entry count.

    ``skip``: relative names left out (with what is below them): mountpoint stubs runc made.
    """
    count = 0
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path, st in _walk(upper):
            if name in skip or any(name.startswith(s + "/") for s in skip):
                continue
            mode = st.st_mode
            parent, _, base = name.rpartition("/")
            if stat.S_ISCHR(mode) and st.st_rdev == 0:          # overlayfs whiteout
                info = _info(f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else WHITEOUT_PREFIX + base, st)
                info.type = tarfile.REGTYPE
                info.mode, info.uid, info.gid = 0o644, 0, 0
                tar.addfile(info)
                count += 1
                continue
            info = _info(name, st)
            xattrs = _xattrs(path)
            opaque = stat.S_ISDIR(mode) and xattrs.get(OVERLAY_OPAQUE_XATTR) == b"y"
            info.pax_headers = {f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
                                for key, value in xattrs.items() if not key.startswith(_OVERLAY_XATTR_PREFIX)}
            key = (st.st_dev, st.st_ino)
            if stat.S_ISREG(mode) and st.st_nlink > 1 and key in links:
                info.type = tarfile.LNKTYPE
                info.linkname = links[key]
                tar.addfile(info)
            elif stat.S_ISREG(mode):
                info.size = st.st_size
                if st.st_nlink > 1:
                    links[key] = name
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as f:
                    tar.addfile(info, f)
            elif stat.S_ISDIR(mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                if opaque:
                    marker = _info(f"{name}/{OPAQUE_MARKER}", st)
                    marker.mode, marker.uid, marker.gid = 0o644, 0, 0
                    tar.addfile(marker)
                    count += 1
            elif stat.S_ISLNK(mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISFIFO(mode):
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                tar.addfile(info)
            else:
                continue                                           # sockets
            count += 1
    return count
