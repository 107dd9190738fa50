"""What an interrupted extraction leaves under the store root, and its removal.

A layer is extracted into a hidden sibling of its final directory, ``.<name>.partial-<pid>-<random>``,
renamed into place when complete. A pull killed meanwhile leaves that sibling (hundreds of MB); the pid
in its name tells an abandoned one (process gone) from one in progress. Removed before each extraction
into the same directory and by the mount server at start (issue 10 item 7).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from lazypull.layerdir import snapshots_dir
from lazypull.removetree import remove_tree

log = logging.getLogger(__name__)

_MARK = ".partial-"


def partial_prefix(dest: Path) -> str:
    """The name prefix of a temporary sibling for ``dest`` made by this process."""
    return f".{dest.name}{_MARK}{os.getpid()}-"


def clean_partials(parent: Path) -> list[Path]:
    """Remove the partial directories in ``parent`` whose process is gone; the paths removed."""
    removed: list[Path] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(".") or _MARK not in name:
            continue
        owner = name.rsplit(_MARK, 1)[1].split("-", 1)[0]
        if owner.isdigit() and (int(owner) == os.getpid() or os.path.exists(f"/proc/{owner}")):
            continue                     # in progress, here or in another process
        path = parent / name             # a dead process's, or named before pids were (no owner)
        with contextlib.suppress(OSError):      # any depth: a layer's tree can be deeper than rmtree goes
            remove_tree(path)
        if not os.path.lexists(path):
            removed.append(path)
            log.warning("removed %s, left by an interrupted extraction", path)
    return removed


def clean_all_partials(root: Path) -> list[Path]:
    """:func:`clean_partials` in every ``snapshots/<hex>/`` of the store root."""
    removed: list[Path] = []
    try:
        layers = list(os.scandir(snapshots_dir(root)))
    except OSError:
        return removed
    for entry in layers:
        if entry.is_dir(follow_symlinks=False):
            removed += clean_partials(Path(entry.path))
    return removed
