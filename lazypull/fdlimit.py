"""The open files limit of lazypull's long-lived processes (the mount server and the connection keeper).

Each mounted layer holds a FUSE device and a request journal in the server (and its cache files, the
keeper's connection ...), and the same two in the keeper: started from a shell's soft limit of 1024,
they ran out with a few hundred layers. systemd's unit sets its own limit.
"""

from __future__ import annotations

import contextlib
import logging
import resource
from pathlib import Path

log = logging.getLogger(__name__)


def raise_fd_limit() -> None:
    """Raise the soft limit of open files to the hard one (to the kernel's ``nr_open`` ceiling when the
    hard limit is unlimited); a refusal is logged, not raised (the process runs, with fewer layers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard
    if hard == resource.RLIM_INFINITY:      # no soft limit may exceed the kernel's ceiling
        with contextlib.suppress(OSError, ValueError):
            want = int(Path("/proc/sys/fs/nr_open").read_text())
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError) as err:
        log.warning("cannot raise the open files limit from %d to %d: %s", soft, want, err)
