"""Issue 10, items 6 and 8: the chunk cache is bounded (LRU eviction of what no open file pins), reads go on
while the disk is full (the warning names the path), a chunk damaged on disk is detected at its first use
after a restart and fetched again, and removing images frees their layers' state and cached chunks."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.fs.cache import BLOCK, DirectoryCache, LayerChunks
from lazypull.fs.config import FsConfig
from lazypull.fs.layer import LayerTree
from lazypull.fs.remote import FileRangeSource
from lazypull.image import Store, pull_image
from lazypull.registry import RegistryClient
from lazypull.snapshot.manager import LayerManager
from tests.helpers.registry import RegistryServer
from tests.snapshot.layerkit import (
    FILES,
    Blob,
    FaultySource,
    build_blob,
    lookup_path,
    open_tree,
    push_image,
    read_all,
)

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Blob:
    return build_blob(tmp_path_factory.mktemp("blob"))


def _chunk(i: int, size: int = BLOCK) -> tuple[str, bytes]:
    data = random.Random(i).randbytes(size)
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _on_disk(directory: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in directory.rglob("*") if p.is_file())


def test_eviction_keeps_the_cache_under_its_bound_least_recently_read_first(tmp_path: Path) -> None:
    cache = DirectoryCache(tmp_path / "chunks", max_bytes=16 * BLOCK)
    store = cache.layer(LAYER)
    chunks = [_chunk(i) for i in range(40)]
    for digest, data in chunks[:16]:
        assert store.put(digest, data)
    assert cache.size == 16 * BLOCK and cache.evicted == 0
    assert store.get(*_arg(chunks[0])) == chunks[0][1]      # read: now the most recent
    for n, (digest, data) in enumerate(chunks[16:], start=17):
        assert store.put(digest, data)
        assert cache.size <= cache.max_bytes, f"over the bound after {n} puts"
    # the 17th put went over: down to 90% (14 chunks), the oldest first; and so on for each next one
    assert cache.evicted == 40 - len(list((tmp_path / "chunks" / LAYER[7:]).iterdir()))
    assert cache.evicted >= 40 - 16
    assert _on_disk(tmp_path / "chunks") <= cache.max_bytes
    kept = {d for d, _ in chunks if store.contains(d, BLOCK)}
    assert chunks[-1][0] in kept and chunks[1][0] not in kept
    assert store.size == cache.size == len(kept) * BLOCK
    stats = cache.stats()
    assert stats["chunks"] == len(kept) and stats["evicted"] == cache.evicted


def _chunks(tree: LayerTree) -> LayerChunks:
    """The layer's namespace of the directory cache (the tree sees it as a ChunkStore)."""
    assert isinstance(tree.cache, LayerChunks)
    return tree.cache


def _arg(chunk: tuple[str, bytes]) -> tuple[str, int]:
    return chunk[0], len(chunk[1])


def test_pinned_chunks_survive_eviction_until_unpinned(tmp_path: Path) -> None:
    cache = DirectoryCache(tmp_path / "chunks", max_bytes=8 * BLOCK)
    store = cache.layer(LAYER)
    pinned = _chunk(1000)
    store.put(*pinned)
    path = store.pin(*_arg(pinned))
    assert path is not None and Path(path).read_bytes() == pinned[1]
    for i in range(30):
        store.put(*_chunk(i))
    assert Path(path).read_bytes() == pinned[1], "a pinned chunk was evicted"
    assert cache.size <= cache.max_bytes
    store.unpin(pinned[0])
    for i in range(30, 60):
        store.put(*_chunk(i))
    assert not Path(path).exists(), "an unpinned, least recently read chunk stayed"


def test_a_layer_reads_correctly_through_a_cache_smaller_than_itself(blob: Blob, tmp_path: Path) -> None:
    config = FsConfig(prefetch=False, background_fetch=False, read_deadline=5.0, cache_max_bytes=12 * BLOCK,
                      readahead=0, whole_file_max=0, neighbour_window=0, fetch_elf_deps=False)
    # (nothing fetched ahead: no fetch finishes while the test counts the disk; 4 in 40 runs failed so)
    src = FaultySource(FileRangeSource(blob.path))
    tree = open_tree(blob, tmp_path, config, source=src)
    try:
        for _ in range(2):
            for name, data in FILES.items():
                assert read_all(tree, lookup_path(tree, name)) == data, name
        cache = _chunks(tree).cache        # the DirectoryCache behind the layer's ChunkStore
        assert cache.evicted > 0 and cache.size <= config.cache_max_bytes
        assert _on_disk(tmp_path / "cache" / "chunks") <= config.cache_max_bytes
        # a big file read whole is still offered for passthrough: its assembled copy, not the chunks
        huge = lookup_path(tree, "bin/huge")
        backing = tree.backing_path(huge)
        assert backing is None or Path(backing).read_bytes() == FILES["bin/huge"]
    finally:
        tree.close()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (a disk that fills up)."""
    point = tmp_path / "small"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _fill(fs: Path, leave: int = 0) -> Path:
    """Fill ``fs`` up, leaving about ``leave`` bytes."""
    filler = fs / "filler"
    st = os.statvfs(fs)
    with open(filler, "wb") as fh, contextlib.suppress(OSError):    # ENOSPC at the end: full is wanted
        fh.write(bytes(max(0, st.f_bavail * st.f_frsize - leave)))
    return filler


def test_reads_go_on_while_the_disk_is_full_and_the_warning_names_the_path(
        blob: Blob, small_fs: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = FsConfig(prefetch=False, background_fetch=False, read_deadline=5.0, cache_max_bytes=64 << 20)
    root = small_fs / "root"
    tree = open_tree(blob, root, config)
    filler = _fill(small_fs)
    caplog.set_level(logging.WARNING, logger="lazypull.fs.cache")
    try:
        for _ in range(2):
            for name, data in FILES.items():
                assert read_all(tree, lookup_path(tree, name)) == data, name
        cache = _chunks(tree).cache
        assert cache.write_errors > 0 and cache.size == 0
        warnings = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
        assert warnings and str(root / "cache" / "chunks" / blob.digest[7:]) in warnings[0]
        assert "No space left on device" in warnings[0]
        # space again: the next reads are cached
        filler.unlink()
        assert read_all(tree, lookup_path(tree, "bin/big")) == FILES["bin/big"]
        assert cache.size > 0
    finally:
        tree.close()


def test_a_full_disk_makes_the_cache_evict_its_own_chunks(blob: Blob, small_fs: Path) -> None:
    config = FsConfig(prefetch=False, background_fetch=False, read_deadline=5.0, cache_max_bytes=64 << 20)
    tree = open_tree(blob, small_fs / "root", config)
    _fill(small_fs, leave=40 * BLOCK)       # room for ~40 chunks; the layer has more (huge: 37, big: 5)
    try:
        for name, data in FILES.items():
            assert read_all(tree, lookup_path(tree, name)) == data, name
        cache = _chunks(tree).cache
        assert cache.evicted > 0, "the disk filled up but nothing of ours was evicted"
        # The layer's assembler (whole-file copies for passthrough, one thread) shares the disk and may
        # take the room an eviction made before the retried write (seen once on a loaded CI machine): a
        # read once it is done must be cached.
        tree._assembler.submit(lambda: None).result(timeout=60)
        assert read_all(tree, lookup_path(tree, "usr/lib/two")) == FILES["usr/lib/two"]
        assert tree.cache.contains(*_last_chunk(tree, "usr/lib/two")), "the last chunk read was not cached"
    finally:
        tree.close()


def _last_chunk(tree: LayerTree, name: str) -> tuple[str, int]:
    fc = tree._chunks_of(lookup_path(tree, name))
    assert fc is not None
    return fc.chunks[-1].digest, fc.chunks[-1].chunk_size


def test_a_chunk_damaged_on_disk_is_detected_after_a_restart_and_fetched_again(
        blob: Blob, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = open_tree(blob, tmp_path, source=FaultySource(FileRangeSource(blob.path)))
    for name in FILES:
        read_all(first, lookup_path(first, name))
    ino = lookup_path(first, "bin/big")
    assert first.backing_path(ino) is not None          # assembled into files/<ino>
    digest, size = _last_chunk(first, "bin/big")
    path = _chunks(first).path(digest)
    first.close()
    damaged = bytearray(path.read_bytes())
    damaged[size // 2] ^= 0xFF                          # same size: the old size check passed it
    path.write_bytes(bytes(damaged))
    assembled = tmp_path / "snapshots" / blob.digest[7:] / "files" / str(ino)
    assert not assembled.exists(), "a closed layer left its copy on disk"
    assembled.write_bytes(bytes(size) + FILES["bin/big"][size:])     # as a killed server would leave it
    caplog.set_level(logging.WARNING, logger="lazypull.fs.cache")
    src = FaultySource(FileRangeSource(blob.path))      # a restarted server: a new cache object
    second = open_tree(blob, tmp_path, source=src)
    try:
        assert read_all(second, lookup_path(second, "bin/big")) == FILES["bin/big"]
        assert len(src.requests) == 1, "the damaged chunk is fetched again, only it"
        assert any("is damaged" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
        assert path.read_bytes() != bytes(damaged)
        assert _chunks(second).cache.corrupt == 1
        backing = second.backing_path(lookup_path(second, "bin/big"))
        assert backing is not None and Path(backing).read_bytes() == FILES["bin/big"]
        src.requests.clear()
        assert read_all(second, lookup_path(second, "bin/huge")) == FILES["bin/huge"]
        assert src.requests == [], "the intact chunks were verified and served from the cache"
    finally:
        second.close()


def test_removing_images_frees_their_layer_state_and_cached_chunks(
        registry: RegistryServer, tmp_path: Path) -> None:
    from lazypull.cli.image import _free_layers

    one = build_blob(tmp_path, name="one")
    two = build_blob(tmp_path, name="two", chunk_size=8192)
    for repo, b in (("prune/one", one), ("prune/two", two)):
        push_image(registry.url, repo, "v1",
                   [(b.path.read_bytes(), OCI_GZIP, b.annotations, b.result.diff_id)])
    root = tmp_path / "root"
    store = Store(root)
    with RegistryClient(insecure=True) as client:
        names = [pull_image(store, client, f"{registry.host}/{repo}:v1", fetch_layers=False).name
                 for repo in ("prune/one", "prune/two")]
    manager = LayerManager(root, FsConfig(background_fetch=False, prefetch=False))
    try:
        for name in names:
            [m] = manager.mount_image(name, insecure=True)
            assert m.path is not None and (m.path / "bin/big").read_bytes() == FILES["bin/big"]
        manager.release_image(names[0])         # what rmi asks the server; the layer is unmounted
        chunks, snaps = root / "cache" / "chunks", root / "snapshots"
        assert sorted(p.name for p in chunks.iterdir()) == sorted([one.digest[7:], two.digest[7:]])
        before = _on_disk(chunks)
        store.remove(names[0])
        store.prune(also=_free_layers(root))
        assert [p.name for p in chunks.iterdir()] == [two.digest[7:]], "image one's chunks stayed"
        assert [p.name for p in snaps.iterdir()] == [two.digest[7:]], "image one's layer state stayed"
        assert _on_disk(chunks) < before
        # image two is mounted and named: untouched, still served
        [m] = manager.mount_image(names[1], insecure=True)
        assert m.path is not None and (m.path / "bin/huge").read_bytes() == FILES["bin/huge"]
    finally:
        manager.close()


def test_containerd_removing_a_remote_snapshot_frees_its_layer(registry: RegistryServer,
                                                                tmp_path: Path) -> None:
    one = build_blob(tmp_path, name="one")
    push_image(registry.url, "prune/ctrd", "v1",
               [(one.path.read_bytes(), OCI_GZIP, one.annotations, one.result.diff_id)])
    root = tmp_path / "root"
    manager = LayerManager(root, FsConfig(background_fetch=False, prefetch=False))
    try:
        path = manager.mount_registry_layer(f"{registry.host}/prune/ctrd:v1", one.digest, one.annotations,
                                            holder="containerd:snap-1", insecure=True)
        assert (path / "bin/big").read_bytes() == FILES["bin/big"]
        assert (root / "cache" / "chunks" / one.digest[7:]).is_dir()
        manager.release_holder("containerd:snap-1")     # containerd's GC removed the snapshot
        assert not (root / "cache" / "chunks" / one.digest[7:]).exists()
        assert not (root / "snapshots" / one.digest[7:]).exists()
        assert manager.cache.size == 0
    finally:
        manager.close()


def test_a_full_disk_fails_no_mount_and_the_warning_names_the_state_file(
        registry: RegistryServer, tmp_path: Path, small_fs: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A disk filled by something else: the mount server's state file (its holds) cannot be written, and
    `run --rm` failed with a bare ENOSPC (bench/diskfull.py: 3 of 11). The mount and release go on (the
    holds are right in memory; the next save writes them) and the warning names the file."""
    one = build_blob(tmp_path, name="one")
    push_image(registry.url, "full/one", "v1",
               [(one.path.read_bytes(), OCI_GZIP, one.annotations, one.result.diff_id)])
    root = small_fs / "root"
    with RegistryClient(insecure=True) as client:
        name = pull_image(Store(root), client, f"{registry.host}/full/one:v1", fetch_layers=False).name
    manager = LayerManager(root, FsConfig(background_fetch=False, prefetch=False, read_deadline=5.0))
    caplog.set_level(logging.WARNING, logger="lazypull.snapshot.manager")
    filler = _fill(small_fs)
    try:
        [m] = manager.mount_image(name, insecure=True, holder="c1")
        assert m.path is not None and (m.path / "bin/big").read_bytes() == FILES["bin/big"]
        warnings = [r.getMessage() for r in caplog.records if "holds" in r.getMessage()]
        assert warnings and str(root / "run" / "state.json") in warnings[0], warnings
        assert "No space left on device" in warnings[0]
        manager.release_image(name, holder="c1")
        assert not list((root / "run").glob("*.tmp")), "a half-written state file was left"
        filler.unlink()                         # space again: the next save writes the holds
        manager.mount_image(name, insecure=True, holder="c2")
        assert "c2" in (root / "run" / "state.json").read_text()
    finally:
        manager.close()


def test_a_closed_layer_caches_nothing_a_late_fetch_brings(tmp_path: Path) -> None:
    """A fetch finishing after its layer was closed (a background fetch racing containerd's GC or rmi)
    must not recreate the layer's freed namespace nor count bytes against the bound."""
    cache = DirectoryCache(tmp_path / "chunks", max_bytes=1 << 20)
    store = cache.layer("sha256:" + "a" * 64)
    digest, data = _chunk(1)
    assert store.put(digest, data) and cache.size > 0
    store.release()                                   # the layer is closed, then its namespace dropped
    cache.drop_layer("sha256:" + "a" * 64)
    assert cache.size == 0
    assert not store.put(*_chunk(2)), "a late fetch was cached for a closed layer"
    assert cache.size == 0 and not (tmp_path / "chunks" / ("a" * 64)).exists()
    assert cache.layer("sha256:" + "a" * 64).put(*_chunk(3)), "a new mount of the layer caches again"
