"""The chunk cache's counting where the kernel, a closing layer and the start walk cross: a file opened
again while its old backing id goes stays pinned, a copy kept or a hold taken as its layer is released is
not left behind, an adopted one-chunk file counts once, a layer whose tree failed to open is not left
open, and a stale ``.trash-`` name of the same pid does not keep a killed server's copies."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from lazypull.fs.cache import BLOCK, DirectoryCache, LayerChunks
from lazypull.fs.config import FsConfig
from lazypull.fs.fuse.ops import Negotiated, Operations
from lazypull.fs.layer.open import open_layer_tree
from lazypull.fs.mount import mount_layer
from lazypull.fs.remote import FileRangeSource
from tests.snapshot.layerkit import FILES, Blob, build_blob, lookup_path, open_tree, read_all

LAYER = "sha256:" + "cd" * 32
OTHER = "sha256:" + "ef" * 32
RESUMED = Negotiated(minor=41, passthrough=True, no_open=False, no_opendir=False)


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Blob:
    return build_blob(tmp_path_factory.mktemp("blob"))


def _copy(files: Path, name: str, size: int) -> tuple[Path, Path]:
    """A whole-file copy just assembled (``.tmp-`` name) and its final name."""
    files.mkdir(parents=True, exist_ok=True)
    written = files / f".tmp-{name}"
    written.write_bytes(b"c" * size)
    return written, files / name


def _copy_pins(store: LayerChunks, ino: int) -> int:
    """Pins of the whole-file copy of ``ino`` (not the count of every pinned key: the assembler
    started by an earlier read pins chunks for a moment)."""
    with store.cache._lock:
        return store.cache._pins.get(store._file_key(str(ino)), 0)


@pytest.mark.parametrize("window", ["keeper note", "tree news"])
def test_a_file_opened_again_while_its_id_goes_is_never_held_unpinned(
        blob: Blob, tmp_path: Path, fuse_path: str, window: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last close unregisters the idle id, tells the keeper, then tells the tree (which unpins the
    copy): an open in between registered a new id for the same copy (the tree, still pinning it, did
    nothing), and the stale news unpinned it while the kernel held it. Now that open waits until the
    news is told, then asks the tree again (which pins the copy again)."""
    if fuse_path != "passthrough":
        pytest.skip("only passthrough registers backing ids")
    tree = open_tree(blob, tmp_path)
    cache = tree.cache
    assert isinstance(cache, LayerChunks)
    big = lookup_path(tree, "bin/big")
    assert read_all(tree, big) == FILES["bin/big"]
    path = tmp_path / "mnt" / "bin/big"
    fuse = mount_layer(tree, tmp_path / "mnt", passthrough=True)
    try:
        ops = fuse._ops
        assert ops is not None
        backing = ops.backing
        backing._idle_kept = 0         # each last close unregisters its id
        reached, released = threading.Event(), threading.Event()
        again: list[int] = []
        real_acquire, real_release, real_closed = backing.acquire, backing.release, backing.on_closed
        real_wait = backing.wait_closed
        assert real_closed is not None

        def acquire(ino: int, backing_path: str | None) -> int:
            reached.set()
            return real_acquire(ino, backing_path)

        def wait_closed(ino: int) -> None:
            if ino == big and backing.is_closing(ino):
                reached.set()
            real_wait(ino)

        def release(ino: int) -> None:
            real_release(ino)
            released.set()

        def open_again(ino: int) -> None:
            if ino == big and not again:    # its old id is going: open it again
                threading.Thread(target=lambda: again.append(os.open(path, os.O_RDONLY)),
                                 daemon=True).start()
                assert reached.wait(60), "the second open did not get as far as the backing ids"

        def told(ino: int, backing_id: int) -> None:
            if window == "keeper note" and backing_id == 0:
                open_again(ino)

        def closed(ino: int) -> None:
            if window == "tree news":
                open_again(ino)
            real_closed(ino)

        monkeypatch.setattr(backing, "acquire", acquire)
        monkeypatch.setattr(backing, "release", release)
        monkeypatch.setattr(backing, "wait_closed", wait_closed)
        backing.on_change = told
        backing.on_closed = closed
        fd = os.open(path, os.O_RDONLY)
        assert backing.is_open(big) and _copy_pins(cache, big) == 1, "not a passthrough open"
        reached.clear()
        os.close(fd)
        assert released.wait(60), "no RELEASE"
        for _ in range(1200):
            if again:
                break
            threading.Event().wait(0.05)
        assert again, "the second open was not answered"
        try:
            held = backing.is_open(big)
            assert _copy_pins(cache, big) == held, "the kernel holds a copy the cache may evict"
            assert backing.is_open(big), "not a passthrough open"
            assert os.pread(again[0], 8, 100) == FILES["bin/big"][100:108]
        finally:
            os.close(again[0])
    finally:
        fuse.stop()
        tree.close()


def test_a_copy_kept_as_its_layer_is_released_is_not_left(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """keep_file checked ``released`` without the cache's lock: a release between the check and the
    rename left the copy on disk, counted and (for passthrough) pinned for good."""
    cache = DirectoryCache(tmp_path / "chunks", max_bytes=1 << 20)
    assert cache.wait_scanned(60)
    store = cache.layer(LAYER)
    written, final = _copy(tmp_path / "snapshots" / LAYER[7:] / "files", "7", 3 * BLOCK)
    real = cache._keep_file

    def late(*args: object) -> object:      # the layer is released between the check and the lock
        store.release()
        return real(*args)      # type: ignore[arg-type]

    monkeypatch.setattr(cache, "_keep_file", late)
    assert not store.keep_file("7", written, final, pinned=True)
    assert not final.exists(), "a released layer's copy was kept"
    assert cache.size == 0 and cache.stats()["files"] == 0 and cache.stats()["pinned"] == 0


def test_a_hold_taken_as_its_layer_is_released_is_not_counted(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cache = DirectoryCache(tmp_path / "chunks", max_bytes=1 << 20)
    assert cache.wait_scanned(60)
    store = cache.layer(LAYER)
    real = cache._hold

    def late(*args: object) -> None:
        store.release()
        real(*args)     # type: ignore[arg-type]

    monkeypatch.setattr(cache, "_hold", late)
    store.hold("9", 3 * BLOCK)
    assert cache.size == 0 and cache.stats()["held"] == 0 and cache.stats()["pinned"] == 0, \
        "a released layer's hold is counted (and pinned) for good"


def test_a_pin_taken_as_its_layer_is_released_is_undone(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """pin checked nothing about the release: one between the cache's pin and the layer's count was
    in neither the swapped-out counts (undone) nor the new ones (never undone): the chunk stayed
    pinned, never evicted."""
    cache = DirectoryCache(tmp_path / "chunks", max_bytes=1 << 20)
    assert cache.wait_scanned(60)
    store = cache.layer(LAYER)
    digest = "sha256:" + hashlib.sha256(b"p" * 100).hexdigest()
    assert store.put(digest, b"p" * 100)
    real = cache._pin

    def late(*args: object) -> str | None:     # the layer is released once the cache pinned it
        path = real(*args)      # type: ignore[arg-type]
        store.release()
        return path

    monkeypatch.setattr(cache, "_pin", late)
    assert store.pin(digest, 100) is None, "a released layer's chunk was pinned"
    assert cache.stats()["pinned"] == 0, "a pin nothing undoes"
    assert cache.stats()["chunks"] == 1, "the chunk itself stays cached (evictable)"


def test_a_chunk_put_as_its_layer_is_released_is_not_counted(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """put checked ``released`` before writing: a release meanwhile (its namespace deleted next)
    still had the chunk written and counted."""
    cache = DirectoryCache(tmp_path / "chunks", max_bytes=1 << 20)
    assert cache.wait_scanned(60)
    store = cache.layer(LAYER)
    digest = "sha256:" + hashlib.sha256(b"q" * 100).hexdigest()
    real = cache._write

    def late(final: Path, data: bytes) -> None:     # released while the chunk is being written
        store.release()
        real(final, data)

    monkeypatch.setattr(cache, "_write", late)
    assert not store.put(digest, b"q" * 100), "a released layer's chunk was cached"
    assert cache.size == 0 and cache.stats()["chunks"] == 0
    assert not store.path(digest).exists(), "left on disk uncounted"


def test_a_late_put_of_a_released_layer_leaves_the_file_of_the_layer_opened_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer is released while a put of it writes a chunk, and opened again at once; its new store
    writes the same chunk and counts it after the late put looked: the late put leaves the file (before,
    it moved it to the trash, and the new store counted a chunk no longer on disk)."""
    cache = DirectoryCache(tmp_path / "chunks", max_bytes=1 << 20)
    assert cache.wait_scanned(60)
    old = cache.layer(LAYER)
    digest = "sha256:" + hashlib.sha256(b"q" * 100).hexdigest()
    real = cache._write
    written, go = threading.Event(), threading.Event()
    again: list[LayerChunks] = []
    results: list[bool] = []

    def put_again() -> None:
        results.append(again[0].put(digest, b"q" * 100))

    def late(final: Path, data: bytes) -> None:
        if threading.current_thread().name == "put-again":
            real(final, data)       # the new store's copy, counted once the late put has looked
            written.set()
            assert go.wait(60)
            return
        old.release()
        again.append(cache.layer(LAYER))
        threading.Thread(target=put_again, name="put-again").start()
        assert written.wait(60)
        real(final, data)           # the late put's own write (the same bytes)

    monkeypatch.setattr(cache, "_write", late)
    try:
        assert not old.put(digest, b"q" * 100), "a released layer's chunk was cached"
    finally:
        go.set()
    for thread in threading.enumerate():
        if thread.name == "put-again":
            thread.join(60)
    assert results == [True]
    assert cache.stats()["chunks"] == 1
    assert again[0].path(digest).exists(), "the chunk the layer opened again counts is not on disk"
    assert again[0].get(digest, 100) == b"q" * 100
    again[0].release()


def test_an_adopted_one_chunk_file_is_counted_once(blob: Blob, tmp_path: Path) -> None:
    """Its backing file is the chunk's own file: counted as the chunk, pinned while the id may last."""
    tree = open_tree(blob, tmp_path)
    cache = tree.cache
    assert isinstance(cache, LayerChunks)
    hello = lookup_path(tree, "etc/hello.txt")
    assert read_all(tree, hello) == FILES["etc/hello.txt"]      # its chunk is stored
    assert cache.size == BLOCK
    ops = Operations(tree, entry_timeout=1.0, attr_timeout=1.0, passthrough=True, dev_fd=-1)
    try:
        ops.resume(RESUMED, {hello: 8})
        stats = cache.cache.stats()
        assert cache.size == BLOCK, "the chunk the kernel holds is counted twice"
        assert stats["held"] == 0 and stats["pinned"] == 1 and stats["chunks"] == 1
    finally:
        tree.close()
    assert cache.cache.stats()["pinned"] == 0


def test_a_layer_whose_tree_fails_to_open_is_not_left_open(blob: Blob, tmp_path: Path) -> None:
    """The layer's open count was taken before the tree's constructor ran: its failure left the layer
    open for good (its copies never swept by a later start walk of this cache)."""
    config = FsConfig(prefetch=False, background_fetch=False, read_deadline=5.0)
    cache = DirectoryCache(config.chunk_dir(tmp_path), config.cache_max_bytes)
    files = tmp_path / "snapshots" / blob.digest[7:] / "files"
    files.parent.mkdir(parents=True)
    files.write_bytes(b"not a directory")           # the tree cannot make its files/ directory
    with pytest.raises(OSError):
        open_layer_tree(blob.digest, blob.annotations, FileRangeSource(blob.path), root=tmp_path,
                        config=config, cache=cache)
    assert blob.digest[7:] not in cache._open, "the layer stays open"


def test_a_stale_trash_name_of_the_same_pid_does_not_keep_a_killed_servers_copies(tmp_path: Path) -> None:
    """A ``.trash-<pid>-1`` left by an earlier boot's process of this pid: renaming ``files/`` onto it
    failed (ENOTEMPTY), so the copies stayed on disk, uncounted."""
    snapshots = tmp_path / "snapshots"
    stale = snapshots / f".trash-{os.getpid()}-1" / "5"
    copy = snapshots / OTHER[7:] / "files" / "5"
    for path in (stale, copy):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x" * 100)
    cache = DirectoryCache(tmp_path / "chunks", max_bytes=1 << 20, copies=snapshots)
    assert cache.wait_scanned(60)
    assert not copy.exists(), "a killed server's copy stayed"
    assert sorted(p.name for p in snapshots.iterdir()) == [OTHER[7:]]
