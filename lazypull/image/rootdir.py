"""The store root (``--root``, default ``/var/lib/lazypull``) is root's alone.

Everything under it is reachable only through directories of mode 0700: layers hold setuid-root
programs and device nodes (mounted lazily or extracted), the chunk cache and the blobs hold other
images' contents, and ``run/`` the server's socket. The root and its top-level directories are
created 0700 from the start (``os.mkdir`` with that mode: no window where they are wider), and a
store made wider by an older version or by hand is narrowed when it is opened (:func:`prepare_root`,
called by the store, the runtime, the mount server and its client before they create anything).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lazypull.errors import StoreError
from lazypull.layerdir import LEARNED, SNAPSHOTS

# A layer's directory (``snapshots/<hex>/``) is the shared leaf lazypull.layerdir's (fs builds it too).
from lazypull.layerdir import layer_dir as layer_dir
from lazypull.layerdir import layer_fs as layer_fs

PRIVATE_MODE = 0o700

# The top-level directories of a store (docs/architecture.md): made before anything below them, so
# the ``mkdir(parents=True)`` of a deeper path never creates one of them with the umask's mode.
TOP_DIRS = ("content", SNAPSHOTS, LEARNED, "cache", "containers", "run", "runc")


def private_dir(path: Path) -> Path:
    """Make ``path`` a directory of mode 0700 (created so, or narrowed if it exists wider).

    Missing parents are created with the umask's mode, as ``mkdir -p`` does: only ``path`` itself is
    what must stay private. Raises StoreError naming the path when it cannot be done.
    """
    try:
        try:
            os.mkdir(path, PRIVATE_MODE)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path, PRIVATE_MODE)
    except FileExistsError:
        pass
    except OSError as err:
        raise StoreError(f"cannot create the directory {path}: {err.strerror}") from err
    try:
        st = os.stat(path)
    except OSError as err:
        raise StoreError(f"cannot use the directory {path}: {err.strerror}") from err
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        # Its owner could widen it again (or swap what is inside) whenever it likes.
        raise StoreError(f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}): "
                         f"refusing to keep images there")
    if stat.S_IMODE(st.st_mode) & 0o077:
        try:
            os.chmod(path, PRIVATE_MODE)
        except OSError as err:
            raise StoreError(f"cannot make {path} private (mode 0700): {err.strerror}") from err
    return path


def prepare_root(root: Path | str) -> Path:
    """Create (or narrow) the store root and its top-level directories, all 0700; returns the root."""
    root = Path(root)
    private_dir(root)
    for name in TOP_DIRS:
        private_dir(root / name)
    return root


__all__ = ["PRIVATE_MODE", "TOP_DIRS", "prepare_root", "private_dir"]
