"""Resolving a path inside a root filesystem with its symlinks scoped to that root.

One walk, one component at a time, as a process chrooted in ``root`` would see the path: an
absolute link target means ``root``, ``..`` at the top stays at the top. Used for a container's
/etc/passwd (runtime), a build step's destinations and a stage's sources (build), and, in
``strict`` mode, the build context, which a link must not leave at all. The errors raised here are
neutral; each caller turns them into its own error and message.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_SYMLINKS = 40


class TooManyLinks(Exception):
    """More than MAX_SYMLINKS links were followed (a loop, or a hostile chain)."""


class LeavesRoot(Exception):
    """``strict`` mode: a link leads out of the root.

    ``link`` is the symlink whose absolute ``target`` leaves it; None when a ``..`` climbs above it.
    """

    def __init__(self, link: Path | None = None, target: str = "") -> None:
        super().__init__(f"{link} -> {target}" if link is not None else "..")
        self.link = link
        self.target = target


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True, keep_missing: bool = True,
                    strict: bool = False) -> Path:
    """``path`` inside ``root``, its symlinks resolved in ``root``.

    ``follow_last=False`` leaves a final symlink as it is (the path names the link). A component
    that does not exist is kept as given (``keep_missing``, so the rest is appended) or its
    ``FileNotFoundError``/``NotADirectoryError`` propagates. Any other ``OSError`` of ``lstat`` or
    ``readlink`` propagates. ``strict`` refuses (``LeavesRoot``) an absolute link target or a ``..``
    above the root instead of clamping it to the root. Raises ``TooManyLinks`` past MAX_SYMLINKS.
    """
    pending = _parts(path)
    pending.reverse()
    current: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if current:
                current.pop()
            elif strict:
                raise LeavesRoot()
            continue
        candidate = root.joinpath(*current, part)
        if not pending and not follow_last:
            current.append(part)
            break
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            if not keep_missing:
                raise
            current.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise TooManyLinks(path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                if strict:
                    raise LeavesRoot(candidate, target)
                current = []
            pending.extend(reversed(_parts(target)))
            continue
        current.append(part)
    return root.joinpath(*current)
