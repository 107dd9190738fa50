"""The chunk cache's disk: big copies are deleted outside its lock, a closed layer's copies and a killed
server's leftovers do not stay on disk uncounted, and a big cache directory does not hold up the start
(its walk runs beside the reads, which verify what it has not indexed yet)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.fs.cache import BLOCK, DirectoryCache, LayerChunks
from lazypull.fs.fuse.ops import Negotiated, Operations
from lazypull.fs.fuse.protocol import OPEN_IN, OPEN_OUT, RELEASE_IN, Op, Request
from lazypull.fs.mount import mount_layer
from tests.reliability.test_cache import _chunk, _on_disk
from tests.snapshot.layerkit import FILES, Blob, build_blob, lookup_path, open_tree, read_all

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
            snapshots / ".trash-2-2" / "9",                     # killed while deleting a layer's copies
            tmp_path / "chunks" / LAYER[7:] / ".tmp-1-abc"]     # killed while writing a chunk
    for path in gone:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)
    held, go = held_walk
    held.add(str(snapshots))
    pruned = snapshots / ("ab" * 32) / "files" / "7"
    pruned.parent.mkdir(parents=True)
    pruned.write_bytes(b"p")
    cache = _open_in_thread(directory=tmp_path / "chunks", max_bytes=1 << 20, copies=snapshots)
    store = cache.layer(LAYER)          # mounted before the walk reaches it: its copies are its own
    cache.drop_layer("sha256:" + "ab" * 32)     # being pruned: its removal must not find it moving
    written, live = _copy(snapshots / LAYER[7:] / "files", "6", BLOCK)
    assert store.keep_file("6", written, live, pinned=True)
    go.set()
    assert cache.wait_scanned(60)
    assert [p for p in gone if p.exists()] == []
    assert live.exists() and cache.size == BLOCK
    assert sorted(p.name for p in (snapshots / OTHER[7:]).iterdir()) == []
    assert sorted(p.name for p in (snapshots / LAYER[7:]).iterdir()) == ["files"]
    assert pruned.exists(), "moved from under a prune"
    assert sorted(p.name for p in snapshots.iterdir()) == sorted([LAYER[7:], OTHER[7:], "ab" * 32])


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Blob:
    return build_blob(tmp_path_factory.mktemp("blob"))


def test_an_unregistered_backing_id_unpins_what_it_held(blob: Blob, tmp_path: Path, fuse_path: str) -> None:
    """Each idle id past the kept ones is unregistered: its copy (or chunk) may be evicted again, instead
    of staying pinned, beyond the bound's reach, until the layer is unmounted."""
    if fuse_path != "passthrough":
        pytest.skip("only passthrough registers backing ids")
    tree = open_tree(blob, tmp_path)
    cache = tree.cache
    assert isinstance(cache, LayerChunks)
    for name in ("bin/big", "etc/hello.txt"):       # 5 chunks (a copy) and 1 (the chunk itself)
        assert read_all(tree, lookup_path(tree, name)) == FILES[name]
    fuse = mount_layer(tree, tmp_path / "mnt", passthrough=True)
    try:
        assert fuse._ops is not None
        fuse._ops.backing._idle_kept = 0         # each last close unregisters its id
        for name in ("bin/big", "etc/hello.txt"):
            fd = os.open(tmp_path / "mnt" / name, os.O_RDONLY)
            try:
                assert fuse._ops.backing.is_open(lookup_path(tree, name)), "not a passthrough open"
                assert cache.cache.stats()["pinned"] == 1, f"{name}: its backing file is not pinned"
                assert os.pread(fd, 5, 0) == FILES[name][:5]
            finally:
                os.close(fd)
            deadline = 600
            while fuse._ops.backing.is_open(lookup_path(tree, name)) and deadline:   # (RELEASE is async)
                deadline -= 1
                threading.Event().wait(0.05)
            assert cache.cache.stats()["pinned"] == 0, f"{name}: still pinned after its id went"
    finally:
        fuse.stop()
        tree.close()


def test_ids_a_previous_server_registered_are_counted_until_the_layer_closes(blob: Blob,
                                                                             tmp_path: Path) -> None:
    """After a restart the kernel still holds the backing files the previous server registered (the
    copies deleted since, or chunks the cache may evict): their bytes count against the bound. Their
    open count is unknown (the kernel may hold opens made before the restart), so an adopted id never
    goes idle: opened and closed again through this server, it stays counted until the layer closes."""
    tree = open_tree(blob, tmp_path)
    cache = tree.cache
    assert isinstance(cache, LayerChunks)
    big, hello = lookup_path(tree, "bin/big"), lookup_path(tree, "etc/hello.txt")
    ops = Operations(tree, entry_timeout=1.0, attr_timeout=1.0, passthrough=True, dev_fd=-1)
    try:
        ops.resume(Negotiated(minor=41, passthrough=True, no_open=False, no_opendir=False),
                   {big: 7, hello: 8})
        held = cache.cache.stats()
        assert held["held"] == 2 and cache.size == 5 * BLOCK + BLOCK, "the adopted ids are not counted"
        ops.backing._idle_kept = 0          # an idle id would be unregistered at its last close
        status, reply = ops.open(Request(Op.OPEN, 1, big, 0, 0, 0, OPEN_IN.pack(os.O_RDONLY, 0)))
        fh, _, backing_id = OPEN_OUT.unpack(reply)
        assert status == 0 and backing_id == 7, "the adopted id is not used"
        assert ops.release(Request(Op.RELEASE, 2, big, 0, 0, 0, RELEASE_IN.pack(fh, 0, 0, 0)))[0] == 0
        assert ops.backing.is_open(big) and cache.cache.stats()["held"] == 2, "unregistered while unknown"
    finally:
        tree.close()
    assert cache.cache.stats()["held"] == 0 and cache.cache.size == 0


def test_a_layer_dropped_while_the_walk_runs_is_not_indexed_from_its_listing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prune or containerd's remove during the start walk: what the walk listed of that layer is gone."""
    directory = tmp_path / "chunks"
    first = DirectoryCache(directory, max_bytes=1 << 20)
    for n, layer in enumerate((LAYER, OTHER)):
        for i in range(3):
            assert first.layer(layer).put(*_chunk(10 * n + i))
    assert first.wait_scanned(60)
    listed: list[str] = []
    go = threading.Event()
    real = os.scandir

    def scandir(path: object = ".") -> object:
        if isinstance(path, str) and os.path.dirname(path) == str(directory):
            listed.append(os.path.basename(path))
            if len(listed) == 2:        # the first layer listed, not indexed yet: held here
                go.wait(120)
        return real(path)   # type: ignore[call-overload]

    monkeypatch.setattr(os, "scandir", scandir)
    cache = DirectoryCache(directory, max_bytes=1 << 20)
    try:
        for _ in range(1200):
            if len(listed) == 2:
                break
            threading.Event().wait(0.05)
        assert len(listed) == 2, "the walk did not reach the second layer"
        cache.drop_layer("sha256:" + listed[0])
    finally:
        go.set()
    assert cache.wait_scanned(60)
    assert cache.size == 3 * BLOCK == _on_disk(directory), "the dropped layer's listing was indexed"
    assert cache.stats()["chunks"] == 3
