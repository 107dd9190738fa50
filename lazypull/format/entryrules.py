"""What a layer entry may be: one verdict for both ways of reading a layer.

A layer is read either lazily (its TOC, served by ``lazypull.fs.layer``) or whole (its tar, extracted by
``lazypull.runtime.extract``). Both ask this module, so the same layer is accepted or refused the same
way whichever snapshotter runs it, and what overlayfs is shown is the same.

Refused (``UnsafeEntryError``, naming the entry): absolute names and names with a ``..`` component (a
TOC reader would quietly fold them into the layer; extraction cannot), NUL bytes in names, link targets
or xattr names, a component over ``NAME_MAX`` bytes or a name over ``PATH_MAX``, whiteouts of nothing
(``.wh.``, ``.wh..``, ``.wh...``), a whiteout used as a directory, owner ids and device numbers Linux
cannot hold, xattr names or values over the kernel's limits. Dropped quietly: aufs metadata
(``.wh..wh.*`` other than the opaque marker, and anything below it) and the xattrs overlayfs reads as
instructions (``trusted.overlay.*``, ``user.overlay.*``): a layer must not forge a redirect, metacopy or
opaque flag; opaque directories come only from the ``.wh..wh..opq`` marker.

``./a``, ``a/``, ``a//b`` and ``.`` stay acceptable spellings (tar files are written so).
"""

from __future__ import annotations

from typing import Literal

from lazypull.format.errors import FormatError

NAME_MAX = 255
"""Bytes in one path component (Linux ``NAME_MAX``): longer ones cannot be created on disk."""
PATH_MAX = 4096
"""Bytes in a whole name, NUL included (Linux ``PATH_MAX``)."""
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
ID_MAX = (1 << 32) - 2
"""Largest uid/gid: ``uid_t`` is 32 bits, and ``(uid_t) -1`` means "unchanged" to chown."""
DEV_MAJOR_MAX = (1 << 12) - 1
DEV_MINOR_MAX = (1 << 20) - 1
"""Largest device major and minor the kernel keeps (``MINORBITS`` 20 of a 32-bit ``dev_t``)."""

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
"""xattrs overlayfs takes as instructions (its ``trusted`` namespace, and ``user`` with ``userxattr``)."""

WhiteoutKind = Literal["opaque", "meta", "whiteout"]


class UnsafeEntryError(FormatError):
    """A layer entry that neither way of reading a layer accepts."""


def _bytes_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def split_name(name: str) -> list[str]:
    """The path components of an entry name inside the layer (``[]`` for the root); refuses the unsafe.

    ``./a//b/`` is ``["a", "b"]``. The message says what is wrong, not which entry (callers add that).
    """
    if "\x00" in name:
        raise UnsafeEntryError("name contains a NUL byte")
    if name.startswith("/"):
        raise UnsafeEntryError("absolute name")
    if len(name) >= PATH_MAX // 4 and _bytes_len(name) >= PATH_MAX:
        raise UnsafeEntryError(f"name is {_bytes_len(name)} bytes long (the limit is {PATH_MAX - 1})")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    for part in parts:
        if part == "..":
            raise UnsafeEntryError("name has a '..' component")
        if len(part) > NAME_MAX // 4 and _bytes_len(part) > NAME_MAX:
            raise UnsafeEntryError(f"a name component is {_bytes_len(part)} bytes long (the limit is "
                                   f"{NAME_MAX})")
    for part in parts[:-1]:
        if part.startswith(WHITEOUT_PREFIX) and not part.startswith(WHITEOUT_META_PREFIX):
            raise UnsafeEntryError(f"whiteout {part!r} used as a directory")
    if parts:
        whiteout_kind(parts[-1])    # refuses malformed whiteouts
    return parts


def is_dropped(parts: list[str]) -> bool:
    """Whether an entry (split by :func:`split_name`) is aufs metadata, which neither reader shows."""
    if any(p.startswith(WHITEOUT_META_PREFIX) for p in parts[:-1]):
        return True
    return bool(parts) and parts[-1].startswith(WHITEOUT_META_PREFIX) and parts[-1] != WHITEOUT_OPAQUE


def whiteout_kind(base: str) -> WhiteoutKind | None:
    """What a base name means to overlayfs: ``"opaque"`` marker, aufs ``"meta"``data, a ``"whiteout"``
    of ``base[4:]``, or None (an ordinary name). A whiteout of nothing is refused."""
    if not base.startswith(WHITEOUT_PREFIX):
        return None
    if base == WHITEOUT_OPAQUE:
        return "opaque"
    if base.startswith(WHITEOUT_META_PREFIX):
        return "meta"
    if base[len(WHITEOUT_PREFIX):] in ("", ".", ".."):
        raise UnsafeEntryError(f"malformed whiteout {base!r}")
    return "whiteout"


def check_link_target(target: str, *, hardlink: bool) -> list[str] | None:
    """Refuse a link target no file system can hold; a hardlink's target is split as a name."""
    if hardlink:
        try:
            parts = split_name(target)
        except UnsafeEntryError as err:
            raise UnsafeEntryError(f"hardlink target {target!r}: {err}") from err
        if not parts:
            raise UnsafeEntryError("hardlink to the layer root")
        return parts
    if "\x00" in target:
        raise UnsafeEntryError("symlink target contains a NUL byte")
    if len(target) >= PATH_MAX // 4 and _bytes_len(target) >= PATH_MAX:
        raise UnsafeEntryError(f"symlink target is {_bytes_len(target)} bytes long")
    return None


def check_owner(uid: int, gid: int) -> None:
    """Refuse owner ids no file can have."""
    for field, value in (("uid", uid), ("gid", gid)):
        if not 0 <= value <= ID_MAX:
            raise UnsafeEntryError(f"{field} {str(value)[:40]!r} is out of range")


def check_device(major: int, minor: int) -> None:
    """Refuse device numbers ``makedev`` cannot hold."""
    if not (0 <= major <= DEV_MAJOR_MAX and 0 <= minor <= DEV_MINOR_MAX):
        raise UnsafeEntryError(f"device number {major}:{minor} is out of range")


def is_overlay_xattr(name: str | bytes) -> bool:
    """Whether an xattr is one of overlayfs's own (dropped: a layer must not instruct overlayfs)."""
    text = name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name
    return text.startswith(OVERLAY_XATTR_PREFIXES)


def check_xattr(name: str, value: bytes) -> None:
    """Refuse an xattr the kernel would refuse (so both readers refuse it the same way)."""
    if not name or "\x00" in name:
        raise UnsafeEntryError(f"xattr name {name!r} is empty or contains a NUL byte")
    if _bytes_len(name) > XATTR_NAME_MAX:
        raise UnsafeEntryError(f"xattr name {name[:40]!r}... is over {XATTR_NAME_MAX} bytes")
    if len(value) > XATTR_SIZE_MAX:
        raise UnsafeEntryError(f"xattr {name!r} has a {len(value)}-byte value (limit {XATTR_SIZE_MAX})")
