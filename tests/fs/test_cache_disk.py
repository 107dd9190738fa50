"""The chunk cache's disk: big copies are deleted outside its lock, a closed layer's copies and a killed
server's leftovers do not stay on disk uncounted, and a big cache directory does not hold up the start
(its walk runs beside the reads, which verify what it has not indexed yet)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.fs.cache import BLOCK, DirectoryCache
from tests.reliability.test_cache import _chunk, _on_disk

LAYER = "sha256:" + "cd" * 32
OTHER = "sha256:" + "ef" * 32


def _copy(files: Path, name: str, size: int) -> tuple[Path, Path]:
    """A whole-file copy just assembled (``.tmp-`` name) and its final name."""
    files.mkdir(parents=True, exist_ok=True)
    written = files / f".tmp-{name}"
    written.write_bytes(b"c" * size)
    return written, files / name


def test_an_evicted_copy_is_deleted_after_the_lock_is_released(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read takes the cache's lock: unlinking a copy of hundreds of MB under it stalls them all."""
    cache = DirectoryCache(tmp_path / "chunks", max_bytes=16 * BLOCK)
    assert cache.wait_scanned(60)
    store = cache.layer(LAYER)
    files = tmp_path / "snapshots" / LAYER[7:] / "files"
    written, final = _copy(files, "7", 8 * BLOCK)
    assert store.keep_file("7", written, final, pinned=False)
    unlinked: list[tuple[str, bool]] = []
    real = os.unlink

    def watched(path: object, *args: object, **kwargs: object) -> None:
        unlinked.append((str(path), cache._lock.locked()))
        real(path, *args, **kwargs)     # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", watched)
    for i in range(12):                  # past the bound: the copy is the least recently used
        assert store.put(*_chunk(i))
    assert not final.exists() and cache.stats()["files"] == 0
    assert [p for p in files.iterdir()] == [], "the copy's trash name is left"
    assert unlinked and not [p for p, locked in unlinked if locked], "unlinked under the cache's lock"
    assert cache.size == _on_disk(tmp_path / "chunks") + _on_disk(files)


def test_a_closed_layer_leaves_no_copy_on_disk(tmp_path: Path) -> None:
    """Before, release() only stopped counting them: on disk, uncounted, until the layer's next mount."""
    cache = DirectoryCache(tmp_path / "chunks", max_bytes=1 << 20)
    store = cache.layer(LAYER)
    files = tmp_path / "snapshots" / LAYER[7:] / "files"
    for name, pinned in (("3", True), ("4", False)):
        written, final = _copy(files, name, 3 * BLOCK)
        assert store.keep_file(name, written, final, pinned=pinned)
    assert store.pin_file("4") is not None      # a passthrough open holds it
    digest, data = _chunk(1)
    assert store.put(digest, data)
    assert cache.size == 7 * BLOCK
    store.release()
    assert list(files.iterdir()) == [], "a closed layer's copies stayed on disk"
    assert cache.size == BLOCK == _on_disk(tmp_path / "chunks")
    assert cache.stats()["files"] == 0 and cache.stats()["pinned"] == 0


@pytest.fixture
def held_walk(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[set[str], threading.Event]]:
    """Listing one of the paths put in the set waits for the event (the start walk held there)."""
    held: set[str] = set()
    go = threading.Event()
    real = os.scandir

    def scandir(path: object = ".") -> object:
        if str(path) in held:
            held.discard(str(path))
            go.wait(120)
        return real(path)   # type: ignore[call-overload]

    monkeypatch.setattr(os, "scandir", scandir)
    try:
        yield held, go
    finally:
        go.set()


def _open_in_thread(**kwargs: object) -> DirectoryCache:
    """The cache's constructor, which must return while its start walk is held."""
    made: list[DirectoryCache] = []
    thread = threading.Thread(target=lambda: made.append(DirectoryCache(**kwargs)),  # type: ignore[arg-type]
                              daemon=True)
    thread.start()
    thread.join(60)     # (a hang guard: the constructor waits for nothing but a mkdir)
    assert made, "opening the cache waited for the walk of its directory"
    return made[0]


def test_the_cache_serves_before_its_directory_is_walked(
        tmp_path: Path, held_walk: tuple[set[str], threading.Event]) -> None:
    directory = tmp_path / "chunks"
    first = DirectoryCache(directory, max_bytes=1 << 20)
    store = first.layer(LAYER)
    chunks = [_chunk(i) for i in range(4)]
    for digest, data in chunks:
        assert store.put(digest, data)
    damaged = store.path(chunks[1][0])
    damaged.write_bytes(bytes(BLOCK))                   # same size, other bytes
    assert first.wait_scanned(60)
    held, go = held_walk
    held.add(str(directory))
    cache = _open_in_thread(directory=directory, max_bytes=1 << 20)
    assert not cache.wait_scanned(0) and cache.size == 0
    store = cache.layer(LAYER)
    assert store.get(chunks[0][0], BLOCK) == chunks[0][1], "an intact chunk not walked yet is served"
    assert store.get(chunks[1][0], BLOCK) is None and cache.corrupt == 1, "served unverified"
    assert not damaged.exists()
    new = _chunk(9)
    assert store.put(*new)
    assert store.put(*chunks[2])                        # stored again (it was not indexed): once
    go.set()
    assert cache.wait_scanned(60)
    kept = [chunks[0], chunks[2], chunks[3], new]
    assert all(store.get(d, len(b)) == b for d, b in kept)
    assert cache.size == len(kept) * BLOCK == _on_disk(directory), "counted twice, or not at all"
    assert cache.stats()["chunks"] == len(kept)


def test_a_killed_servers_copies_and_trash_go_at_start_a_live_layers_stay(
        tmp_path: Path, held_walk: tuple[set[str], threading.Event]) -> None:
    snapshots = tmp_path / "snapshots"
    gone = [snapshots / OTHER[7:] / "files" / "5",             # a copy of a layer not mounted (yet)
            snapshots / OTHER[7:] / "files" / ".trash-1-1",     # killed between rename and unlink
            snapshots / LAYER[7:] / ".trash-2-2" / "9",         # killed while deleting a layer's copies
            tmp_path / "chunks" / LAYER[7:] / ".tmp-1-abc"]     # killed while writing a chunk
    for path in gone:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)
    held, go = held_walk
    held.add(str(snapshots))
    cache = _open_in_thread(directory=tmp_path / "chunks", max_bytes=1 << 20, copies=snapshots)
    store = cache.layer(LAYER)          # mounted before the walk reaches it: its copies are its own
    written, live = _copy(snapshots / LAYER[7:] / "files", "6", BLOCK)
    assert store.keep_file("6", written, live, pinned=True)
    go.set()
    assert cache.wait_scanned(60)
    assert [p for p in gone if p.exists()] == []
    assert live.exists() and cache.size == BLOCK
    assert sorted(p.name for p in (snapshots / OTHER[7:]).iterdir()) == []
    assert sorted(p.name for p in (snapshots / LAYER[7:]).iterdir()) == ["files"]
