"""``USER`` of an image or ``-u``: names to numbers through the container's own /etc/passwd and /etc/group.

The files are read from the (untrusted) root filesystem with symlinks resolved *inside* it, the way
a process chrooted there would see them, so a symlinked ``/etc/passwd`` cannot make us read host files.
Only regular files of at most 4 MiB are read: a FIFO would block us, and opening a device node can
act on the host's device (a watchdog, a tape), so anything else is refused before it is opened.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from lazypull import rootpath
from lazypull.errors import ContainerError

_MAX_FILE = 4 << 20
# A uid or gid: ASCII digits only (str.isdigit() also takes "²" and "٣"), below 2**32 - 1 ((uid_t) -1).
_ID = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True)
class ProcessUser:
    """Who the container process runs as."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


def resolve_in_root(root: Path, path: str) -> Path | None:
    """``path`` as seen from inside ``root`` (symlinks scoped to ``root``), or None if missing."""
    try:
        return rootpath.resolve_in_root(root, path, keep_missing=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except rootpath.TooManyLinks:
        raise ContainerError(f"{path}: too many levels of symbolic links in the image") from None
    except OSError as err:  # a 300-byte name from a symlink: ENAMETOOLONG, ...
        raise ContainerError(f"cannot read {path} in the image: {err.strerror}") from err


def read_in_root(root: Path, path: str) -> str | None:
    """The text of a regular file inside ``root`` (at most 4 MiB), or None if it is not there.

    Raises ContainerError if it is something else (FIFO, device, directory) or larger.
    """
    resolved = resolve_in_root(root, path)
    if resolved is None:
        return None
    try:
        # Checked before opening: opening a FIFO or a device node already does something.
        if not stat.S_ISREG(os.lstat(resolved).st_mode):
            raise ContainerError(f"{path} in the image is not a regular file")
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise ContainerError(f"cannot read {path} in the image: {err.strerror}") from err
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):  # replaced between lstat and open
            raise ContainerError(f"{path} in the image is not a regular file")
        if st.st_size > _MAX_FILE:
            raise ContainerError(f"{path} in the image is larger than {_MAX_FILE} bytes")
        try:
            data = f.read(_MAX_FILE + 1)
        except OSError as err:
            raise ContainerError(f"cannot read {path} in the image: {err.strerror}") from err
    if len(data) > _MAX_FILE:
        raise ContainerError(f"{path} in the image is larger than {_MAX_FILE} bytes")
    return data.decode("utf-8", "replace")


def _entries(text: str | None) -> list[list[str]]:
    if not text:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def _number(value: str) -> int | None:
    """A uid or gid written in decimal, or None if ``value`` is not one."""
    return int(value) if _ID.fullmatch(value) and int(value) < 2**32 - 1 else None


def _shown(value: str) -> str:
    """``value`` quoted for a message, cut short (a hostile file may hold a 5000-digit "uid")."""
    return repr(value) if len(value) <= 40 else repr(value[:40]) + "..."


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
        raise ContainerError(f"unable to find user {_shown(user_part)}: no matching entries in the image's "
                             "/etc/passwd")
    if pw is not None:
        uid = _number(pw[2])
        if uid is None:
            raise ContainerError(f"invalid uid {_shown(pw[2])} for user {_shown(pw[0])} in the image's "
                                 "/etc/passwd")
    assert uid is not None
    gid = _number(pw[3]) if pw is not None else 0
    if gid is None:
        gid = 0
    home = pw[5] if pw is not None and len(pw) >= 6 and pw[5] else "/"
    if "\x00" in home:
        raise ContainerError(f"invalid home directory for user {_shown(user_part)} in the image's "
                             "/etc/passwd")

    if group_part:
        number = _number(group_part)
        gr = next((e for e in groups if len(e) >= 3 and (e[0] == group_part or e[2] == group_part)), None)
        if gr is None and number is None:
            raise ContainerError(f"unable to find group {_shown(group_part)}: no matching entries in the "
                                 "image's /etc/group")
        if number is None:
            assert gr is not None
            number = _number(gr[2])
            if number is None:
                raise ContainerError(f"invalid gid {_shown(gr[2])} for group {_shown(gr[0])} in the image's "
                                     "/etc/group")
        gid = number

    additional: list[int] = []
    if pw is not None and not group_part:
        for entry in groups:
            if len(entry) >= 4 and pw[0] in entry[3].split(",") and _number(entry[2]) is not None:
                number = int(entry[2])
                if number != gid and number not in additional:
                    additional.append(number)
    return ProcessUser(uid=uid, gid=gid, additional_gids=tuple(additional), home=home)
