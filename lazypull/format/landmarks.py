"""Landmark files and the prioritised order of entries (format.md 1.9).

``.prefetch.landmark`` follows the prioritised entries, so a reader prefetches blob bytes
``[0, landmark offset)``; ``.no.prefetch.landmark`` as the first entry says "nothing to prefetch".
Both hold the single byte ``0x0f``.

Ordering is Go's ``sortEntries``/``moveRec``: each prioritised name (cleaned) pulls in first its parent
directory entries up to the root and, for a hardlink, its target; every entry appears once; existing
landmarks are dropped; a duplicate name keeps only its last occurrence, at that position. One
deliberate improvement: a parent directory that is not in the tar (implied) does not make the name
"missed" — it is simply skipped and the file is still prioritised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from lazypull.format.errors import FormatError
from lazypull.format.names import clean_entry_name

PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENTS = b"\x0f"
LANDMARKS = frozenset({PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})

T = TypeVar("T")


class _NotFound(Exception):
    pass


def prioritize(
    entries: Sequence[tuple[str, str, str, T]], prioritized: Sequence[str]
) -> tuple[list[T], list[T], list[str]]:
    """Split ``entries`` (raw name, typeflag, linkname, item) into (prioritised, rest, missed names).

    Landmark entries are dropped and duplicates resolved (last wins) in both lists.
    """
    pool: dict[str, tuple[str, str, T]] = {}
    for name, flag, link, item in entries:
        key = clean_entry_name(name)
        if key in LANDMARKS:
            continue
        pool.pop(key, None)
        pool[key] = (flag, link, item)
    moved: dict[str, T] = {}
    missed: list[str] = []
    active: set[str] = set()

    def take(key: str) -> None:
        """Move one entry (its hardlink target first) from the pool to the prioritised list."""
        found = pool.get(key)
        if found is not None and found[0] == "1":
            move(found[1], implied_ok=False)
        found = pool.pop(key, None)
        if found is not None:
            moved[key] = found[2]

    def move(name: str, *, implied_ok: bool) -> None:
        key = clean_entry_name(name)
        if key in active:
            return  # a hardlink loop (Go would recurse forever)
        if key == "":
            if "" in pool:
                moved[""] = pool.pop("")[2]
            return
        if key not in pool and key not in moved:
            if implied_ok:
                return
            raise _NotFound(key)
        active.add(key)
        try:
            if "" in pool:
                moved[""] = pool.pop("")[2]
            parts = key.split("/")
            for i in range(1, len(parts)):  # ancestors top-down, iteratively: names can be deep
                take("/".join(parts[:i]))
            take(key)
        finally:
            active.discard(key)

    for name in prioritized:
        try:
            move(name, implied_ok=False)
        except _NotFound:
            missed.append(name)
        except RecursionError as err:
            raise FormatError(f"prioritized file {name!r}: hardlink chain too long") from err
    return list(moved.values()), [v[2] for v in pool.values()], missed
