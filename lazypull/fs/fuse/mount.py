"""mount(2), umount2(2) and ``/proc/self/mountinfo`` for FUSE mounts, through ctypes (no fusermount).

We run as root, so the kernel mount is made directly: open ``/dev/fuse``, pass its fd in the mount
options, and the fd becomes the session's channel. Mounts are ``ro,nosuid,nodev``: a layer's setuid
programs and device nodes must not work *on the layer mount* (a path to it that leaks out of the 0700
store would otherwise give root away). Containers are not affected: overlayfs honours its own mount's
flags, not its lower layers' (exec through the overlay of a setuid-root file still runs with euid 0,
a device node there still opens, as under docker; tests/security/test_store_permissions.py checks both).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator

from lazypull.errors import MountError

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MOUNT_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV
MNT_DETACH = 2
FSTYPE = "fuse.lazypull"

# libc's functions from the symbols this process already has: find_library("c") would import
# subprocess and run ldconfig (~10 ms) in every server before its first mount (issue 14)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount_fuse(fd: int, mountpoint: str, fsname: str = "lazypull", *, readonly: bool = True) -> None:
    """Mount the FUSE channel ``fd`` read-only, nosuid, nodev at ``mountpoint`` (fstype ``fuse.lazypull``).

    ``readonly=False`` lets create/rmdir requests reach the tree (which still refuses them: the
    additional layer store, ``lazypull.store``, learns of them that way); a VFS-read-only mount answers
    EROFS before asking the server."""
    if "," in fsname or not fsname:
        raise MountError(f"invalid FUSE source name {fsname!r}")
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other"
    flags = MOUNT_FLAGS if readonly else MOUNT_FLAGS & ~MS_RDONLY
    rc = _libc.mount(fsname.encode(), os.fsencode(mountpoint), FSTYPE.encode(), flags, opts.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(f"mount of {fsname} on {mountpoint} failed: {os.strerror(err)}") from OSError(
            err, os.strerror(err), mountpoint
        )


def umount(mountpoint: str, *, detach: bool = True) -> None:
    """umount2(2); MNT_DETACH by default so a busy or dead mount goes away at once."""
    rc = _libc.umount2(os.fsencode(mountpoint), MNT_DETACH if detach else 0)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount of {mountpoint} failed: {os.strerror(err)}", mountpoint)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    out = []
    i = 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _normalise(path: str) -> str:
    """Absolute path without resolving the last component (which may be a dead FUSE mount)."""
    path = os.path.abspath(path)
    parent, base = os.path.split(path)
    return os.path.join(os.path.realpath(parent), base) if base else parent


def mountinfo() -> Iterator[tuple[str, str, str, str]]:
    """(mountpoint, fstype, source, ``major:minor``) of every mount in ``/proc/self/mountinfo``, in order."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-", 6)
            except ValueError:
                continue
            if len(fields) < sep + 3:
                continue
            yield _unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2]), fields[2]


def mount_entry(path: str) -> tuple[str, str, str] | None:
    """(fstype, source, ``major:minor``) of the topmost mount at ``path``, or None."""
    target = _normalise(path)
    found = None
    for point, fstype, source, device in mountinfo():
        if point == target:
            found = (fstype, source, device)
    return found


def is_mounted(path: str) -> bool:
    """Whether something is mounted exactly at ``path`` (works on dead FUSE mounts too)."""
    return mount_entry(path) is not None


def unmount(path: str) -> None:
    """Detach the mount at ``path``: also cleans a mount whose server died (``ENOTCONN``)."""
    if not is_mounted(path):
        raise MountError(f"nothing is mounted at {path}")
    try:
        umount(_normalise(path))
    except OSError as err:
        if err.errno == errno.EINVAL and not is_mounted(path):
            return  # raced with another unmount
        raise MountError(f"cannot unmount {path}: {err.strerror}") from err


def abort_connection(device: str) -> bool:
    """Abort a FUSE connection through fusectl (``major:minor`` of the mount); True when done.

    A detached mount whose files are still open keeps its connection; aborting it fails those reads
    with ENOTCONN and wakes the session's reader so it can stop.
    """
    conn_dir = "/sys/fs/fuse/connections"
    minor = device.split(":")[-1]
    abort = os.path.join(conn_dir, minor, "abort")
    if not os.path.exists(abort):
        rc = _libc.mount(b"fusectl", conn_dir.encode(), b"fusectl", 0, None)
        if rc != 0 and not os.path.exists(abort):
            return False
    try:
        with open(abort, "w") as f:
            f.write("1")
    except OSError:
        return False
    return True
