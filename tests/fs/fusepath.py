"""Which FUSE read path the tests exercise: passthrough (kernel 6.9+) and/or served.

On a kernel that offers passthrough both paths run: "passthrough" mounts ask for it and must get it,
"served" mounts switch it off (what ``passthrough = false`` in config.toml does). On a kernel without it
only "served" runs, and its mounts still ask for passthrough, so they check the real fallback (the
kernel's FUSE_INIT offer lacks it and every read is served). ``LAZYPULL_TEST_FUSE_PATHS=served`` runs
only the served path on any kernel (what an older kernel's CI sees).
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

from lazypull.fs.fuse import FuseMount
from tests.fs.memtree import MemTree

PATHS_ENV = "LAZYPULL_TEST_FUSE_PATHS"


@functools.cache
def kernel_offers_passthrough() -> bool:
    """Mounts an empty tree once and asks whether the kernel accepted passthrough."""
    try:
        with tempfile.TemporaryDirectory(prefix="lazypull-probe-") as tmp, \
                FuseMount(MemTree(), Path(tmp)) as mount:
            return mount.passthrough_active
    except Exception:  # no /dev/fuse, not root: the FUSE tests report that themselves
        return False


def fuse_paths() -> list[str]:
    """The paths to test here, passthrough first."""
    wanted = os.environ.get(PATHS_ENV, "passthrough,served").split(",")
    offered = ["passthrough", "served"] if kernel_offers_passthrough() else ["served"]
    return [p for p in offered if p in wanted] or ["served"]


def ask_passthrough(path: str) -> bool:
    """The ``passthrough=`` argument a mount on ``path`` gets (see the module docstring)."""
    return path == "passthrough" or not kernel_offers_passthrough()


def describe() -> str:
    """One line for the test report's header."""
    release = os.uname().release
    offered = "offered" if kernel_offers_passthrough() else "not offered"
    paths = ", ".join(fuse_paths())
    return f"FUSE passthrough: {offered} by kernel {release}; FUSE tests run the path(s): {paths}"
