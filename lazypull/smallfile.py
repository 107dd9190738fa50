"""Reading a small input file whose path the command was given: an OCI layout's ``index.json``, an
``--env-file``, an external TOC.

Such a path may name anything: ``/dev/zero`` (never ends), a FIFO nobody writes (``open`` waits for
ever), a directory. Only a regular file (and, where a shell's ``<(...)`` is usual, a pipe) is read,
and never more than ``limit`` bytes; anything else is one error naming the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lazypull.errors import LazypullError


def read_small(path: str | Path, limit: int, what: str, error: type[LazypullError], *,
               pipes: bool = False) -> bytes | None:
    """The bytes of the regular file (or, with ``pipes``, the pipe) at ``path``; None if missing.

    Raises ``error("[<what> ]<path> ...")`` if it is something else, larger than ``limit`` bytes, or
    unreadable. Opened non-blocking (a FIFO without writer does not wait); a pipe is then read to
    its end, up to the limit.
    """
    named = f"{what} {path}" if what else str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise error(f"cannot read {named}: {err.strerror}") from err
    try:
        mode = os.fstat(fd).st_mode
    except OSError as err:
        os.close(fd)
        raise error(f"cannot read {named}: {err.strerror}") from err
    if not (stat.S_ISREG(mode) or (pipes and stat.S_ISFIFO(mode))):
        os.close(fd)        # (before fdopen, which refuses a directory with its own error)
        raise error(f"{named} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            os.set_blocking(fd, True)
            data = f.read(limit + 1)
        except OSError as err:
            raise error(f"cannot read {named}: {err.strerror}") from err
    if len(data) > limit:
        raise error(f"{named} is larger than {limit} bytes")
    return data


__all__ = ["read_small"]
