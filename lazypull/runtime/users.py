"""``USER`` of an image or ``-u``: names to numbers through the container's own /etc/passwd and /etc/group.

The files are read from the (untrusted) root filesystem with symlinks resolved *inside* it, the way
a process chrooted there would see them, so a symlinked ``/etc/passwd`` cannot make us read host files.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from lazypull.errors import ContainerError

_MAX_SYMLINKS = 40
_MAX_FILE = 4 << 20


@dataclass(frozen=True)
class ProcessUser:
    """Who the container process runs as."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


def resolve_in_root(root: Path, path: str) -> Path | None:
    """``path`` as seen from inside ``root`` (symlinks scoped to ``root``), or None if missing."""
    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()
    current: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = root.joinpath(*current, part)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                raise ContainerError(f"{path}: too many levels of symbolic links in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = []
            pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
            continue
        current.append(part)
    return root.joinpath(*current)


def read_in_root(root: Path, path: str) -> str | None:
    """The text of a regular file inside ``root`` (at most 4 MiB), or None if it is not there."""
    resolved = resolve_in_root(root, path)
    if resolved is None:
        return None
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise ContainerError(f"cannot read {path} in the image: {err}") from err
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(_MAX_FILE).decode("utf-8", "replace")


def _entries(text: str | None) -> list[list[str]]:
    if not text:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def _number(value: str) -> int | None:
    return int(value) if value.isdigit() and int(value) < 2**32 - 1 else None


def resolve_user(root: Path, spec: str) -> ProcessUser:
    """``""``, ``uid``, ``name``, ``uid:gid``, ``name:group`` ... as Docker understands them.

    A numeric uid absent from /etc/passwd is allowed (gid 0 unless given); a name must exist.
    """
    user_part, _, group_part = (spec or "0").partition(":")
    passwd = _entries(read_in_root(root, "/etc/passwd"))
    groups = _entries(read_in_root(root, "/etc/group"))

    uid = _number(user_part)
    pw = next((e for e in passwd
               if len(e) >= 4 and (e[0] == user_part or (uid is not None and e[2] == user_part))), None)
    if pw is None and uid is None:
        raise ContainerError(f"unable to find user {user_part!r}: no matching entries in the image's "
                             "/etc/passwd")
    if pw is not None:
        uid = _number(pw[2])
        if uid is None:
            raise ContainerError(f"invalid uid {pw[2]!r} for user {pw[0]!r} in the image's /etc/passwd")
    assert uid is not None
    gid = _number(pw[3]) if pw is not None else 0
    if gid is None:
        gid = 0
    home = pw[5] if pw is not None and len(pw) >= 6 and pw[5] else "/"

    if group_part:
        number = _number(group_part)
        gr = next((e for e in groups if len(e) >= 3 and (e[0] == group_part or e[2] == group_part)), None)
        if gr is None and number is None:
            raise ContainerError(f"unable to find group {group_part!r}: no matching entries in the image's "
                                 "/etc/group")
        gid = number if number is not None else int(gr[2]) if gr is not None and gr[2].isdigit() else 0

    additional: list[int] = []
    if pw is not None and not group_part:
        for entry in groups:
            if len(entry) >= 4 and pw[0] in entry[3].split(",") and entry[2].isdigit():
                number = int(entry[2])
                if number != gid and number not in additional:
                    additional.append(number)
    return ProcessUser(uid=uid, gid=gid, additional_gids=tuple(additional), home=home)
