"""The reader's tree, the one the lazy mount shows: hardlink chains resolved in work proportional to
the entries (a hostile chain cost n**2 steps: 20,000 links took 28 s, a TOC of a million hours), and the
link counts a file system shows."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from lazypull.format import FileSource, LayerReader, open_layer
from lazypull.format import reader as reader_module
from lazypull.format.entryrules import UnsafeEntryError
from tests.security.tockit import toc_blob


def _chain(n: int, forward: bool) -> list[dict[str, Any]]:
    """``f`` and n hardlinks, each to the one before (``forward``: listed last first, as Go allows)."""
    links = [{"name": f"l{i}", "type": "hardlink", "linkName": f"l{i - 1}" if i else "f"} for i in range(n)]
    entries = [{"name": "f", "type": "reg"}, *links]
    return entries[::-1] if forward else entries


def _lines_run(build: Callable[[], LayerReader]) -> tuple[LayerReader, int]:
    """``build()`` and how many lines of the reader module it ran (work, counted without a clock)."""
    count = 0
    source = reader_module.__file__

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code.co_filename == source else None

    sys.settrace(calls)
    try:
        reader = build()
    finally:
        sys.settrace(None)
    return reader, count


@pytest.mark.parametrize("forward,strict", [(False, False), (True, False), (False, True)],
                         ids=["go-rules", "go-rules-forward", "strict"])
def test_a_hardlink_chain_costs_work_proportional_to_its_length(tmp_path: Path, forward: bool,
                                                                strict: bool) -> None:
    n = 2000
    layer = toc_blob(tmp_path, _chain(n, forward))
    reader, lines = _lines_run(lambda: open_layer(FileSource(layer.path), strict=strict))
    f = reader.lookup("f")
    assert f is not None and reader.lookup(f"l{n - 1}") is f and f.num_link == n + 1
    assert all(reader.resolve(e) is f for e in reader.entries() if e.type == "hardlink")
    assert lines < 200 * (n + 1), f"{lines} lines run for {n + 1} entries"   # (n**2 steps: 12 million)


def test_forward_hardlinks_are_go_rules_only(tmp_path: Path) -> None:
    """Go's reader finds a hardlink's target anywhere in the TOC; extraction (and a strict reader, which
    must agree with it) only among the entries before."""
    layer = toc_blob(tmp_path, _chain(3, forward=True))
    assert open_layer(FileSource(layer.path)).lookup("l0") is not None
    refused = r"TOC entry 0 \('l2'\): hardlink target 'l1' is not in the layer"
    with pytest.raises(UnsafeEntryError, match=refused):
        open_layer(FileSource(layer.path), strict=True)


@pytest.mark.parametrize("listed", [True, False], ids=["root-listed", "root-implied"])
def test_link_counts_as_a_file_system_shows_them(tmp_path: Path, listed: bool) -> None:
    entries = [{"name": "./", "type": "dir"}] if listed else []
    entries += [{"name": "a/", "type": "dir"}, {"name": "a/b/c", "type": "reg"},
                {"name": "h", "type": "hardlink", "linkName": "a/b/c"}]
    reader = open_layer(FileSource(toc_blob(tmp_path, entries).path), strict=True)
    root = reader.lookup("")
    assert root is not None and reader.link_count(root) == 3          # ., .., a
    assert root.num_link == (2 if listed else 3), "Go's count (the oracle compares it) is kept"
    counts = {e.name: reader.link_count(e) for e in reader.entries() if e.type != "hardlink"}
    assert counts == {"": 3, "a": 3, "a/b": 2, "a/b/c": 2}
    assert [(d.name, sorted(kids)) for d, kids in reader.directories()] == [
        ("", ["a", "h"]), ("a", ["b"]), ("a/b", ["c"])]
