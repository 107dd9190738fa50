"""Prioritised ordering (Go sortEntries/moveRec semantics plus the implied-parent improvement)."""

from __future__ import annotations

from lazypull.format.landmarks import prioritize


def _entries(*specs: tuple[str, str, str]) -> list[tuple[str, str, str, str]]:
    return [(name, flag, link, name) for name, flag, link in specs]


def test_parents_and_hardlink_targets_first_landmarks_dropped_duplicates_last() -> None:
    entries = _entries(("./", "5", ""), ("a/", "5", ""), ("a/f", "0", ""), ("b/", "5", ""),
                       ("b/h", "1", "a/f"), (".prefetch.landmark", "0", ""), ("c", "0", ""), ("c", "0", ""),
                       ("x/y/z", "0", ""))
    first, rest, missed = prioritize(entries, ["/b/h", "../x/y/z", "nope", "c"])
    assert first == ["./", "b/", "a/", "a/f", "b/h", "x/y/z", "c"]
    assert rest == []
    assert missed == ["nope"]


def test_deep_names_and_hardlink_loops_are_handled() -> None:
    deep = "/".join(f"d{i}" for i in range(3000))
    entries = _entries(*[("/".join(f"d{i}" for i in range(k)) + "/", "5", "") for k in range(1, 3000)],
                       (deep, "0", ""), ("self", "1", "self"), ("l1", "1", "l2"), ("l2", "1", "l1"))
    first, _, missed = prioritize(entries, [deep, "self", "l1"])
    assert first[-4:] == [deep, "self", "l2", "l1"] and len(first) == 3003 and missed == []


def test_hardlink_to_missing_target_is_missed() -> None:
    first, rest, missed = prioritize(_entries(("h", "1", "gone"), ("f", "0", "")), ["h", "f"])
    assert (first, rest, missed) == (["f"], ["h"], ["h"])
