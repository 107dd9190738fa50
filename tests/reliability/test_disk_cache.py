"""Issue 10 item 6, the bound as a bound: the whole-file copies assembled for FUSE passthrough count
against the cache's bound and are evicted like chunks unless handed out for a passthrough open; and a
full disk evicts about what the failed write needs, not the whole cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazypull.fs.cache import BLOCK, RESERVE_FRACTION, ROOM_FACTOR, DirectoryCache
from lazypull.fs.config import FsConfig
from tests.reliability.test_cache import _chunk, _chunks, _fill, _on_disk, blob, small_fs
from tests.snapshot.layerkit import FILES, Blob, lookup_path, open_tree, read_all

__all__ = ["blob", "small_fs"]     # fixtures


def test_assembled_copies_count_against_the_bound_and_only_pinned_ones_stay(blob: Blob, tmp_path: Path
                                                                            ) -> None:
    bound = 16 * BLOCK      # bin/big: 5 chunks (and a copy of 5 blocks); bin/huge: 37 chunks
    config = FsConfig(prefetch=False, background_fetch=False, read_deadline=5.0, cache_max_bytes=bound,
                      readahead=0, whole_file_max=0, neighbour_window=0, fetch_elf_deps=False)
    # (nothing fetched ahead: no fetch finishes while the test counts the disk)
    tree = open_tree(blob, tmp_path, config)
    files = tmp_path / "snapshots" / blob.digest[7:] / "files"
    chunks = tmp_path / "cache" / "chunks"
    try:
        cache = _chunks(tree).cache
        big, huge = lookup_path(tree, "bin/big"), lookup_path(tree, "bin/huge")
        assert read_all(tree, big) == FILES["bin/big"]      # read to its end: assembled in the background
        tree._assembler.submit(lambda: None).result(timeout=60)
        copy = files / str(big)
        assert copy.exists() and cache.stats()["files"] == 1
        assert cache.size == _on_disk(chunks) + _on_disk(files), "the copy is not counted"
        assert read_all(tree, huge) == FILES["bin/huge"]    # more than the bound: evicts
        tree._assembler.submit(lambda: None).result(timeout=60)
        assert not copy.exists(), "an assembled copy no open holds outlived the chunks read after it"
        assert _on_disk(chunks) + _on_disk(files) <= bound
        # handed out for a passthrough open: pinned (the kernel holds it) until the layer closes
        assert tree.backing_path(big) is None                # its chunks were evicted too
        assert read_all(tree, big) == FILES["bin/big"]
        backing = tree.backing_path(big)
        assert backing == str(copy) and copy.read_bytes() == FILES["bin/big"]
        for _ in range(2):
            assert read_all(tree, huge) == FILES["bin/huge"]
            assert copy.read_bytes() == FILES["bin/big"], "a copy backing a passthrough open was evicted"
            tree._assembler.submit(lambda: None).result(timeout=60)     # (its temporary file gone)
            assert cache.size == _on_disk(chunks) + _on_disk(files) <= bound
        assert tree.backing_path(big) == str(copy)          # the same copy, pinned once
        assert cache.stats()["pinned"] == 1
    finally:
        tree.close()
    assert cache.stats()["files"] == 0 and cache.stats()["pinned"] == 0
    assert cache.size == _on_disk(chunks), "a closed layer's copies are still counted"


def test_a_full_disk_evicts_what_the_write_needs_not_the_cache(small_fs: Path) -> None:
    """The bound (64 MiB) is larger than the disk (1 MiB): the disk fills before the bound is reached."""
    cache = DirectoryCache(small_fs / "chunks", max_bytes=64 << 20)
    store = cache.layer("sha256:" + "cd" * 32)
    stored = [_chunk(i) for i in range(100)]
    for digest, data in stored:
        assert store.put(digest, data)
    _fill(small_fs)
    digest, data = _chunk(1000)
    assert store.put(digest, data), "the write failed although the cache had chunks to evict"
    assert store.get(digest, len(data)) == data
    # what the write needs, a few more like it, and the reserve left to the containers' own writes
    reserve = -(-int((1 << 20) * RESERVE_FRACTION) // BLOCK)
    assert 1 <= cache.evicted <= ROOM_FACTOR + reserve + 1, f"{cache.evicted} of 100 chunks evicted for one"
    kept = [d for d, c in stored if store.contains(d, len(c))]
    assert len(kept) == 100 - cache.evicted
    assert [d for d, _ in stored[cache.evicted:]] == kept, "not the least recently used ones"
    # the next writes evict only as they need, too
    for i in range(1001, 1011):
        assert store.put(*_chunk(i))
    assert cache.evicted <= 10 + ROOM_FACTOR + reserve + 1


def test_the_cache_leaves_a_reserve_of_the_disk_to_other_writers(small_fs: Path) -> None:
    """A bound larger than the disk: the cache stops short of filling it (another writer still can)."""
    cache = DirectoryCache(small_fs / "chunks", max_bytes=64 << 20)
    store = cache.layer("sha256:" + "ce" * 32)
    for i in range(400):            # 1.6 MiB of chunks for a 1 MiB disk
        assert store.put(*_chunk(i))
    # before the reserve, the cache left at most the few blocks a failed write evicts (ROOM_FACTOR)
    (small_fs / "other-writer").write_bytes(b"x" * (int((1 << 20) * RESERVE_FRACTION) - BLOCK))
    assert cache.evicted > 0


def test_a_copy_for_passthrough_makes_room_on_a_full_disk(blob: Blob, small_fs: Path) -> None:
    """The disk fills with chunks of other files: assembling a copy evicts the least recently read of
    them, not the file's own chunks, and the copy is made (before: no copy, no passthrough)."""
    config = FsConfig(prefetch=False, background_fetch=False, read_deadline=5.0, cache_max_bytes=64 << 20,
                      readahead=0, whole_file_max=0, neighbour_window=0, fetch_elf_deps=False)
    tree = open_tree(blob, small_fs / "root", config)
    try:
        cache = _chunks(tree).cache
        big, huge = lookup_path(tree, "bin/big"), lookup_path(tree, "bin/huge")
        assert read_all(tree, huge) == FILES["bin/huge"]
        tree._assembler.submit(lambda: None).result(timeout=60)
        assert read_all(tree, big) == FILES["bin/big"]
        tree._assembler.submit(lambda: None).result(timeout=60)
        copy = small_fs / "root" / "snapshots" / blob.digest[7:] / "files" / str(big)
        copy.unlink()       # (assembled in the background: gone, as if evicted by another process)
        _fill(small_fs, leave=BLOCK)                   # room for one block; the copy needs 5
        evicted = cache.evicted
        backing = tree.backing_path(big)
        assert backing == str(copy) and copy.read_bytes() == FILES["bin/big"]
        assert cache.evicted > evicted
        fc = tree._chunks_of(big)
        assert fc is not None and all(tree.cache.contains(c.digest, c.chunk_size) for c in fc.chunks)
    finally:
        tree.close()


def test_far_from_the_reserve_a_write_does_not_ask_statvfs_each_time(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The reserve check is on the fetch path: with plenty of room (more than the slack) one statvfs
    covers many chunk writes."""
    import os

    import lazypull.fs.cache as cache_module

    st = os.statvfs(tmp_path)
    if st.f_bavail * st.f_frsize < 2 * cache_module.RESERVE_SLACK:
        pytest.skip("the test directory's filesystem has too little room")
    calls: list[str] = []
    real = os.statvfs

    def counting(path: object) -> os.statvfs_result:
        calls.append(str(path))
        return real(path)       # type: ignore[arg-type]

    cache = DirectoryCache(tmp_path / "chunks", max_bytes=64 << 20)
    store = cache.layer("sha256:" + "cf" * 32)
    monkeypatch.setattr(cache_module.os, "statvfs", counting)
    monkeypatch.setattr(cache_module, "RESERVE_RECHECK", 3600.0)
    for i in range(50):
        assert store.put(*_chunk(i))
    assert len(calls) == 1, f"{len(calls)} statvfs calls for 50 chunk writes"
