"""Lock files: ``flock`` on a file that may be left behind, so a killed holder never blocks the next
one (the kernel lets go of the lock with the holder's last fd; the file itself means nothing)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def flocked(path: Path, operation: int) -> Iterator[bool]:
    """Hold ``flock(operation)`` on ``path`` (created if missing) for the block.

    Yields False instead of blocking when ``operation`` has LOCK_NB and the lock is taken.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            held = False
        else:
            held = True
        yield held
    finally:
        os.close(fd)


__all__ = ["flocked"]
