"""The lazy layer Tree without FUSE: metadata from the TOC, reads, fetch economy, cache, verification,
deadlines, singleflight, prefetch and background fetch (blobs built by lazypull.format.build)."""

from __future__ import annotations

import errno
import logging
import stat
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lazypull.errors import MountError
from lazypull.fs.cache import LayerChunks
from lazypull.fs.config import FsConfig
from lazypull.fs.fuse.tree import FuseError
from lazypull.fs.layer import LayerTree
from lazypull.fs.layer.fetch import ChunkUnavailable
from lazypull.fs.remote import FileRangeSource
from tests.fs.settle import idle
from tests.snapshot.layerkit import FILES, Blob, FaultySource, build_blob, lookup_path, open_tree, read_all


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Blob:
    return build_blob(tmp_path_factory.mktemp("blob"))


def _chunks(tree: LayerTree, ino: int) -> list[Any]:
    """The chunks of a regular file's inode."""
    fc = tree._chunks_of(ino)
    assert fc is not None
    return list(fc.chunks)


def _faulty(blob: Blob) -> FaultySource:
    return FaultySource(FileRangeSource(blob.path))


@dataclass
class GatedSource(FaultySource):
    """While ``gate`` is closed requests wait for it (``in_flight`` counts them, ``peak`` the most at once):
    tests check what proceeds while requests are held, never how long anything took. Open at first (the
    tree reads its TOC through it)."""

    gate: threading.Event = field(default_factory=threading.Event)
    in_flight: int = 0
    peak: int = 0

    def __post_init__(self) -> None:
        self.gate.set()

    def read_ranges(self, ranges: Sequence[tuple[int, int]], deadline: float | None = None) -> list[bytes]:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            self.gate.wait()
        finally:
            with self.lock:
                self.in_flight -= 1
        return super().read_ranges(ranges, deadline)


def _until(cond, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``cond``; the timeout bounds a hang, it is not a speed requirement."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


# Only the chunks a read covers are fetched (tests of per-chunk fetch economy and verification).
CHUNKWISE = FsConfig(prefetch=False, background_fetch=False, read_deadline=5.0, whole_file_max=0)


def test_metadata_follows_toc_and_overlay_conventions(blob: Blob, tmp_path: Path) -> None:
    tree = open_tree(blob, tmp_path)
    root_names = [n for n, _ in tree.readdir(1)]
    assert b".no.prefetch.landmark" not in root_names and b".prefetch.landmark" not in root_names
    assert sorted(root_names) == [b"bin", b"dev", b"etc", b"link", b"opq", b"usr"]
    etc = lookup_path(tree, "etc")
    etc_names = {n for n, _ in tree.readdir(etc)}
    assert b".wh.removed" not in etc_names and b".wh.hello.txt" not in etc_names
    wh = tree.lookup(etc, b"removed")
    assert wh is not None and stat.S_ISCHR(wh.mode) and wh.rdev == 0
    hello = tree.lookup(etc, b"hello.txt")
    assert hello is not None and stat.S_ISREG(hello.mode), "a real file wins over its whiteout"
    assert (hello.uid, hello.gid, hello.size, hello.nlink) == (1000, 1001, 6, 2)
    assert hello.mtime_ns == 1609459200 * 10**9
    hard = tree.lookup(etc, b"hard")
    assert hard is not None and hard.ino == hello.ino
    setuid = tree.getattr(lookup_path(tree, "etc/setuid"))
    assert stat.S_IMODE(setuid.mode) == 0o4755
    cap = lookup_path(tree, "etc/cap")
    assert tree.getxattr(cap, b"user.foo") == b"bar"
    assert set(tree.listxattr(cap)) == {b"user.foo", b"trusted.x"}
    assert tree.getxattr(cap, b"user.none") is None
    opq = lookup_path(tree, "opq")
    assert tree.getxattr(opq, b"trusted.overlay.opaque") == b"y"
    assert [n for n, _ in tree.readdir(opq)] == [b"keep"]
    dev = tree.getattr(lookup_path(tree, "dev/null0"))
    assert stat.S_ISCHR(dev.mode) and dev.rdev == (1 << 8 | 3)
    assert stat.S_ISFIFO(tree.getattr(lookup_path(tree, "dev/fifo")).mode)
    link = lookup_path(tree, "link")
    assert stat.S_ISLNK(tree.getattr(link).mode) and tree.readlink(link) == b"etc/hello.txt"
    assert tree.getattr(lookup_path(tree, "usr")).nlink == 3
    assert tree.lookup(1, b"missing") is None
    with pytest.raises(FuseError) as err:
        tree.getattr(999999)
    assert err.value.errno == errno.ENOENT
    assert tree.statfs().files >= len(FILES)
    tree.close()


def test_reads_equal_the_tar(blob: Blob, tmp_path: Path) -> None:
    tree = open_tree(blob, tmp_path)
    for name, data in FILES.items():
        ino = lookup_path(tree, name)
        assert read_all(tree, ino, 7000) == data, name
        for off, size in ((0, 1), (4095, 2), (len(data) // 2, 5000), (len(data), 10), (len(data) + 5, 1)):
            assert tree.read(ino, off, size) == data[off : off + size], (name, off, size)
    with pytest.raises(FuseError) as err:
        tree.read(1, 0, 10)
    assert err.value.errno == errno.EISDIR
    tree.close()


def test_only_needed_bytes_fetched_one_request_per_read(blob: Blob, tmp_path: Path) -> None:
    src = _faulty(blob)
    tree = open_tree(blob, tmp_path, config=CHUNKWISE, source=src)
    src.requests.clear()
    before = tree.stats.bytes_fetched
    ino = lookup_path(tree, "bin/huge")
    chunks = _chunks(tree, ino)
    assert len(chunks) > 30
    # One FUSE-sized read spanning several chunks: one request, for exactly those chunks' range.
    assert tree.read(ino, 0, 5 * 4096) == FILES["bin/huge"][: 5 * 4096]
    assert len(src.requests) == 1
    expected = chunks[4].end - chunks[0].offset
    assert tree.stats.bytes_fetched - before == expected
    # Read again: cache hits, no request.
    assert tree.read(ino, 0, 5 * 4096) == FILES["bin/huge"][: 5 * 4096]
    assert len(src.requests) == 1 and tree.stats.cache_hits >= 5
    # A read elsewhere: one more request, for that chunk only.
    tree.read(ino, 10 * 4096, 4096)
    assert src.requests[-1] == [(chunks[10].offset, chunks[10].end - chunks[10].offset)]
    tree.close()


def test_disjoint_missing_ranges_go_in_one_multi_range_request(blob: Blob, tmp_path: Path) -> None:
    src = _faulty(blob)
    config = CHUNKWISE.replace(merge_gap=0, readahead=0)
    tree = open_tree(blob, tmp_path, config=config, source=src)
    ino = lookup_path(tree, "bin/huge")
    chunks = _chunks(tree, ino)
    tree.read(ino, 4096, 4096)           # chunk 1 cached
    src.requests.clear()
    assert tree.read(ino, 0, 3 * 4096) == FILES["bin/huge"][: 3 * 4096]
    assert src.requests == [[(chunks[0].offset, chunks[0].end - chunks[0].offset),
                             (chunks[2].offset, chunks[2].end - chunks[2].offset)]]
    tree.close()


def test_corrupt_chunk_refetched_once_then_eio_logged(blob: Blob, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    src = _faulty(blob)
    tree = open_tree(blob, tmp_path, config=CHUNKWISE, source=src)
    ino = lookup_path(tree, "bin/big")
    src.corrupt = 1                      # first answer damaged, the refetch is good
    assert tree.read(ino, 0, 4096) == FILES["bin/big"][:4096]
    assert tree.stats.verify_failures == 1
    src.corrupt = 10                     # damaged every time
    caplog.set_level(logging.ERROR)
    with pytest.raises(FuseError) as err:
        tree.read(ino, 8192, 100)
    assert err.value.errno == errno.EIO
    text = caplog.text
    assert blob.digest in text and "bin/big" in text
    assert len(tree.stats.last_errors) == 1 and "bin/big" in tree.stats.snapshot()["last_errors"][0]
    third = _chunks(tree, ino)[2]
    assert not tree.cache.contains(third.digest, third.chunk_size)
    tree.close()


def test_network_down_fails_with_eio_after_deadline_then_recovers(blob: Blob, tmp_path: Path) -> None:
    src = _faulty(blob)
    config = FsConfig(prefetch=False, background_fetch=False, read_deadline=0.6, retry_initial=0.05)
    tree = open_tree(blob, tmp_path, config=config, source=src)
    ino = lookup_path(tree, "bin/big")
    src.down = True
    began = time.monotonic()
    with pytest.raises(FuseError) as err:
        tree.read(ino, 0, 100)
    assert err.value.errno == errno.EIO
    assert time.monotonic() - began >= 0.3, "gave up before its deadline"  # a lower bound: load-proof
    assert tree.stats.retries >= 1 and len(src.requests) >= 2, "retried until the deadline"
    src.down = False
    assert tree.read(ino, 0, 100) == FILES["bin/big"][:100]
    tree.close()


def test_hung_source_cannot_hang_a_read(blob: Blob, tmp_path: Path) -> None:
    src = GatedSource(FileRangeSource(blob.path))   # its request never returns until the test says so
    config = FsConfig(prefetch=False, background_fetch=False, read_deadline=0.5)
    tree = open_tree(blob, tmp_path, config=config, source=src)
    ino = lookup_path(tree, "usr/lib/one")
    src.gate.clear()
    with pytest.raises(FuseError) as err:
        tree.read(ino, 0, 10)
    assert err.value.errno == errno.EIO
    assert src.in_flight >= 1, "the read gave up while its request was still hanging"
    src.gate.set()
    tree.close()


def test_concurrent_misses_of_one_region_fetch_once(blob: Blob, tmp_path: Path) -> None:
    src = _faulty(blob)
    tree = open_tree(blob, tmp_path, source=src)
    ino = lookup_path(tree, "bin/big")
    src.requests.clear()
    src.delay = 0.3
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(tree.read(ino, 0, 20000))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [FILES["bin/big"]] * 6
    assert len(src.requests) == 1
    tree.close()


def test_misses_of_different_regions_in_flight_together(blob: Blob, tmp_path: Path) -> None:
    src = GatedSource(FileRangeSource(blob.path))
    config = FsConfig(prefetch=False, background_fetch=False, read_deadline=60.0, whole_file_max=0,
                      neighbour_window=0)
    tree = open_tree(blob, tmp_path, config=config, source=src)
    names = ["etc/hello.txt", "etc/setuid", "etc/cap", "bin/big"]
    inos = [lookup_path(tree, n) for n in names]
    src.requests.clear()
    src.gate.clear()
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda i=ino: results.append(tree.read(i, 0, 100))) for ino in inos]
    for t in threads:
        t.start()
    together = _until(lambda: src.in_flight == len(names))   # every miss's request held at once
    src.gate.set()
    for t in threads:
        t.join(60)
    assert together, f"misses were served one after the other (at most {src.peak} in flight)"
    assert sorted(results) == sorted(FILES[n][:100] for n in names)
    tree.close()


def test_cache_and_toc_reused_by_a_new_tree(blob: Blob, tmp_path: Path) -> None:
    first = open_tree(blob, tmp_path, source=_faulty(blob))      # the same origin as the second's
    for name in FILES:
        read_all(first, lookup_path(first, name))
    first.close()
    src = _faulty(blob)
    second = open_tree(blob, tmp_path, source=src)
    assert src.requests == [], "the footer and TOC came from the record"
    for name, data in FILES.items():
        assert read_all(second, lookup_path(second, name)) == data
    assert src.requests == [] and second.stats.bytes_fetched == 0
    chunk_files = list((tmp_path / "cache" / "chunks" / blob.digest.removeprefix("sha256:")).iterdir())
    assert chunk_files and all(len(p.name) == 64 for p in chunk_files)
    second.close()


def test_backing_paths_of_complete_files(blob: Blob, tmp_path: Path) -> None:
    tree = open_tree(blob, tmp_path)
    big = lookup_path(tree, "bin/big")
    small = lookup_path(tree, "etc/hello.txt")
    assert tree.backing_path(big) is None and tree.backing_path(small) is None
    read_all(tree, big)
    read_all(tree, small)
    big_path = tree.backing_path(big)
    small_path = tree.backing_path(small)
    assert big_path and Path(big_path).read_bytes() == FILES["bin/big"]
    assert small_path and Path(small_path).read_bytes() == FILES["etc/hello.txt"]
    assert tree.backing_path(lookup_path(tree, "etc")) is None
    tree.close()


def test_toc_digest_required_and_checked(blob: Blob, tmp_path: Path) -> None:
    annotations = blob.annotations
    del annotations["containerd.io/snapshot/stargz/toc.digest"]
    with pytest.raises(MountError, match=r"toc\.digest"):
        open_tree(blob, tmp_path, annotations=annotations)
    annotations["containerd.io/snapshot/stargz/toc.digest"] = "sha256:" + "0" * 64
    with pytest.raises(MountError, match=blob.digest):
        open_tree(blob, tmp_path / "other", annotations=annotations)


def test_prefetch_in_one_request_then_background_fetches_the_rest(tmp_path: Path) -> None:
    blob = build_blob(tmp_path, prioritized_files=["etc/hello.txt", "usr/lib/one", "bin/big"])
    src = _faulty(blob)
    config = FsConfig(prefetch=True, background_fetch=False, read_deadline=5.0)
    tree = open_tree(blob, tmp_path / "root", config=config, source=src)
    src.requests.clear()
    tree.start()
    assert tree.wait_prefetch(10)
    assert len(src.requests) == 1 and len(src.requests[0]) == 1
    start, length = src.requests[0][0]
    assert start + length <= blob.result.blob_size
    assert tree.stats.prefetch_state == "done" and tree.stats.prefetch_seconds is not None
    for name in ("etc/hello.txt", "usr/lib/one", "bin/big"):
        assert read_all(tree, lookup_path(tree, name)) == FILES[name]
    assert len(src.requests) == 1, "prefetched files needed no request"
    tree.close()

    config = FsConfig(prefetch=True, background_fetch=True, background_pause=0.0, read_deadline=5.0,
                      background_batch=32 << 10, background_quiet=0.0)
    src2 = _faulty(blob)
    bg = open_tree(blob, tmp_path / "root", config=config, source=src2).start()
    assert bg.background.finished.wait(20)
    assert bg.stats.background_state == "done"
    assert bg.stats.prefetch_state == "skipped", "the prefetched chunks were cached already"
    requests = len(src2.requests)
    assert 0 < requests < len(bg.fetcher.units)
    for name, data in FILES.items():
        assert read_all(bg, lookup_path(bg, name)) == data
    assert len(src2.requests) == requests
    bg.close()


def test_zstd_chunked_layer(tmp_path: Path) -> None:
    blob = build_blob(tmp_path, compression="zstd")
    assert any("manifest-position" in k for k in blob.annotations)
    tree = open_tree(blob, tmp_path / "root")
    for name, data in FILES.items():
        assert read_all(tree, lookup_path(tree, name)) == data
    tree.close()


def test_min_chunk_size_siblings_come_with_one_request(tmp_path: Path) -> None:
    blob = build_blob(tmp_path, min_chunk_size=64 << 10)
    src = _faulty(blob)
    tree = open_tree(blob, tmp_path / "root", source=src)
    tree.index()                # what start() does first: siblings are known from then on
    src.requests.clear()
    assert read_all(tree, lookup_path(tree, "usr/lib/one")) == FILES["usr/lib/one"]
    assert read_all(tree, lookup_path(tree, "usr/lib/two")) == FILES["usr/lib/two"]
    assert len(src.requests) == 1
    tree.close()


def test_tail_read_with_the_toc_serves_chunks_without_requests(tmp_path: Path) -> None:
    blob = build_blob(tmp_path, tar=None)
    src = _faulty(blob)
    tree = open_tree(blob, tmp_path / "root", source=src, preload=True)
    src.requests.clear()
    last = lookup_path(tree, "usr/lib/two")       # stored last, inside the 64 KiB tail
    assert read_all(tree, last) == FILES["usr/lib/two"]
    assert src.requests == []
    first = lookup_path(tree, "etc/hello.txt")
    assert read_all(tree, first) == FILES["etc/hello.txt"]
    assert len(src.requests) == 1
    tree.close()


def test_background_fetch_yields_to_on_demand_reads(blob: Blob, tmp_path: Path) -> None:
    src = _faulty(blob)
    config = FsConfig(prefetch=False, background_fetch=True, background_pause=2.0, background_batch=8192,
                      background_concurrency=2, read_deadline=5.0, background_quiet=0.0, whole_file_max=0)
    tree = open_tree(blob, tmp_path, config=config, source=src)
    ino = lookup_path(tree, "bin/big")
    src.requests.clear()
    told: list[bool] = []           # what the background fetch was told each time it asked to go on
    ask = tree.fetcher.remote.demand_quiet

    def asked() -> bool:
        told.append(ask())
        return told[-1]

    tree.fetcher.remote.demand_quiet = asked  # type: ignore[method-assign]
    tree.read(ino, 0, 100)                       # an on-demand miss: background must wait 2 s after it
    tree.start()
    deadline = time.monotonic() + 60
    while len(told) < 2:                         # it asked, was told to wait, and asked again
        assert time.monotonic() < deadline, "the background fetch never asked"
        time.sleep(0.02)
    assert told[:2] == [False, False]
    assert len(src.requests) == 1 and tree.stats.background_state in ("waiting", "running")
    assert tree.background.finished.wait(20)
    assert tree.stats.background_state == "done"
    assert tree.stats.background_done == tree.stats.background_total > 0
    assert len(src.requests) > 2, "the rest came in several batches"
    tree.close()


def test_background_fetch_waits_for_quiet_after_mounts(blob: Blob, tmp_path: Path) -> None:
    src = _faulty(blob)
    config = FsConfig(prefetch=False, background_fetch=True, background_pause=0.0, background_quiet=3.0,
                      read_deadline=5.0)
    tree = open_tree(blob, tmp_path, config=config, source=src)   # opening the tree counts as activity
    src.requests.clear()
    told: list[float] = []          # what the background fetch was told each time it asked to start
    ask = tree.activity.quiet_remaining

    def asked(quiet: float) -> float:
        told.append(ask(quiet))
        return told[-1]

    tree.activity.quiet_remaining = asked  # type: ignore[method-assign]
    with tree.activity.busy():                   # another layer's mount or prefetch in progress
        tree.start()
        deadline = time.monotonic() + 60
        while len(told) < 2:                     # it asked, was told to wait, and asked again
            assert time.monotonic() < deadline, "the background fetch never asked to start"
            time.sleep(0.02)
        assert all(wait > 0 for wait in told)
        assert src.requests == [] and tree.stats.background_state == "waiting"
        busy_end = time.monotonic()
    # Only lower bounds on time (a busy machine makes them longer, never shorter): nothing is fetched
    # until 3 s after the activity ended, then everything is.
    assert src.requests == [] and tree.stats.background_state == "waiting"
    assert tree.background.finished.wait(60)
    assert tree.stats.background_state == "done" and src.requests
    assert time.monotonic() - busy_end >= 2.9
    tree.close()


def test_only_the_prefetched_files_are_indexed_before_the_quiet_period(tmp_path: Path) -> None:
    blob = build_blob(tmp_path, prioritized_files=["etc/hello.txt", "usr/lib/one"])
    config = FsConfig(prefetch=True, background_fetch=True, background_quiet=0.6, background_pause=0.0,
                      read_deadline=5.0)
    tree = open_tree(blob, tmp_path / "root", config=config).start()
    assert tree.wait_prefetch(10)
    prefetch_end = tree.reader.prefetch_range()[1]
    early = dict(tree.fetcher.units)
    assert early and all(start < prefetch_end for start, _ in early)
    assert tree.background.finished.wait(20)
    assert tree.stats.background_state == "done"
    assert set(early) < set(tree.fetcher.units), "the whole layer was indexed for the background fetch"
    assert max(start for start, _ in tree.fetcher.units) >= prefetch_end
    tree.close()


def test_background_fetch_stops_while_waiting_for_quiet(blob: Blob, tmp_path: Path) -> None:
    config = FsConfig(prefetch=False, background_fetch=True, background_quiet=60.0, read_deadline=5.0)
    tree = open_tree(blob, tmp_path, config=config).start()
    deadline = time.monotonic() + 30
    while tree.stats.background_state != "waiting":
        assert time.monotonic() < deadline, tree.stats.background_state
        time.sleep(0.02)
    tree.close()
    assert tree.background.finished.wait(5)
    assert tree.stats.background_state == "stopped"


def test_containers_storage_zstd_chunked_verified_by_manifest_checksum(vectors: Path,
                                                                       tmp_path: Path) -> None:
    import json

    from lazypull.fs.layer import is_lazy
    from tests.snapshot.layerkit import Blob

    info = json.loads((vectors / "tiny.cs.build.json").read_text())
    with tarfile.open(vectors / "tiny.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("a/hello.txt"))
        fh = tar.extractfile(member)
        assert fh is not None
        want = fh.read()
    annotations = dict(info["annotations"])
    assert is_lazy(annotations)
    blob = Blob(vectors / "tiny.cs.zstd", None, b"")
    tree = open_tree(blob, tmp_path, annotations=annotations, digest=info["blobDigest"])
    assert read_all(tree, lookup_path(tree, "a/hello.txt")) == want
    tree.close()
    bad = dict(annotations)
    bad["io.github.containers.zstd-chunked.manifest-checksum"] = "sha256:" + "2" * 64
    with pytest.raises(MountError, match="manifest-checksum"):
        open_tree(blob, tmp_path / "bad", annotations=bad, digest=info["blobDigest"])
    assert not is_lazy({"io.github.containers.zstd-chunked.manifest-checksum": "sha256:" + "2" * 64})


def test_background_fetch_retries_after_the_registry_comes_back(blob: Blob, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lazypull.fs.layer.background.BACKGROUND_RETRY_INITIAL", 0.2)
    src = _faulty(blob)
    config = FsConfig(prefetch=False, background_fetch=True, background_pause=0.0, read_deadline=0.3,
                      background_quiet=0.0,
                      retry_initial=0.05)
    tree = open_tree(blob, tmp_path, config=config, source=src)
    src.down = True
    tree.start()
    deadline = time.monotonic() + 10
    while tree.stats.background_state != "waiting" or tree.stats.retries == 0:
        assert time.monotonic() < deadline, tree.stats.snapshot()
        time.sleep(0.05)
    src.down = False
    assert tree.background.finished.wait(15)
    assert tree.stats.background_state == "done"
    for name, data in FILES.items():
        assert read_all(tree, lookup_path(tree, name)) == data
    tree.close()


def test_sequential_reads_fetch_ahead(blob: Blob, tmp_path: Path) -> None:
    src = _faulty(blob)
    config = CHUNKWISE.replace(readahead=5 * 4096)
    tree = open_tree(blob, tmp_path, config=config, source=src)
    ino = lookup_path(tree, "bin/huge")
    chunks = _chunks(tree, ino)
    tree.read(ino, 0, 4096)                        # a lone read: nothing ahead
    idle(tree)
    assert [tree.cache.contains(c.digest, c.chunk_size) for c in chunks[:3]] == [True, False, False]
    tree.read(ino, 4096, 4096)                     # sequential: the next 5 chunks come ahead
    deadline = time.monotonic() + 5
    while not all(tree.cache.contains(c.digest, c.chunk_size) for c in chunks[2:7]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not tree.cache.contains(chunks[7].digest, chunks[7].chunk_size)
    before = len(src.requests)
    assert tree.read(ino, 2 * 4096, 5 * 4096) == FILES["bin/huge"][2 * 4096 : 7 * 4096]
    deadline = time.monotonic() + 5
    while not tree.cache.contains(chunks[7].digest, chunks[7].chunk_size):   # the next read-ahead
        assert time.monotonic() < deadline
        time.sleep(0.02)
    idle(tree)
    assert len(src.requests) == before + 1, "the read itself was served from the cache"
    tree.close()


def test_zero_hole_chunks_need_no_request(tmp_path: Path) -> None:
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = 3 * 4096
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    blob = build_blob(tmp_path, buf.getvalue())
    src = _faulty(blob)
    tree = open_tree(blob, tmp_path / "root", source=src)
    tree.fetcher.zero_holes = True        # as for a containers/storage layer, which stores zeros as holes
    src.requests.clear()
    assert read_all(tree, lookup_path(tree, "zeros")) == bytes(3 * 4096)
    assert src.requests == []
    tree.close()


@pytest.mark.parametrize("digest", ["sha256:../../etc", "md5:" + "0" * 64, "sha256:" + "A" * 64, "x"],
                         ids=["traversal", "algorithm", "uppercase", "no-algorithm"])
def test_bad_layer_digests_are_refused(blob: Blob, tmp_path: Path, digest: str) -> None:
    with pytest.raises(MountError, match="not a sha256 layer digest"):
        open_tree(blob, tmp_path, digest=digest)


def test_damaged_cache_file_is_refetched_and_replaced(blob: Blob, tmp_path: Path) -> None:
    src = _faulty(blob)
    tree = open_tree(blob, tmp_path, source=src)
    ino = lookup_path(tree, "bin/big")
    assert read_all(tree, ino) == FILES["bin/big"]
    first = _chunks(tree, ino)[0]
    assert isinstance(tree.cache, LayerChunks)
    path = tree.cache.path(first.digest)
    path.write_bytes(path.read_bytes()[:100])         # as a crash in the middle of a write could leave it
    src.requests.clear()
    assert read_all(tree, ino) == FILES["bin/big"]
    assert len(src.requests) == 1 and path.stat().st_size == first.chunk_size
    tree.close()


def test_closing_fails_the_claims_of_queued_and_running_fetches_at_once(blob: Blob, tmp_path: Path) -> None:
    """The layer closes (unmount) while one read's fetch runs (held) and another's waits in the queue
    behind it: both readers get 'being unmounted' at once (before, the queued group was cancelled with
    its claim left pending, and its reader sat out the whole read deadline)."""
    src = GatedSource(FileRangeSource(blob.path))
    config = FsConfig(prefetch=False, background_fetch=False, read_deadline=60.0, whole_file_max=0,
                      neighbour_window=0, fetch_workers=1)
    tree = open_tree(blob, tmp_path, config=config, source=src)
    fetcher = tree.fetcher
    running = _chunks(tree, lookup_path(tree, "etc/hello.txt"))
    queued = _chunks(tree, lookup_path(tree, "bin/big"))
    src.gate.clear()
    errors: dict[str, str] = {}

    def get(name: str, chunks: list[Any]) -> None:
        try:
            fetcher.get(chunks, deadline=time.monotonic() + 60)
        except ChunkUnavailable as err:
            errors[name] = str(err)

    threads = [threading.Thread(target=get, args=("running", running))]
    threads[0].start()
    assert _until(lambda: src.in_flight == 1), "the first fetch did not start"
    threads.append(threading.Thread(target=get, args=("queued", queued)))
    threads[1].start()
    assert _until(lambda: all(c.digest in fetcher._inflight for c in queued)), "not claimed"
    fetcher.close()
    threads[1].join(30)
    threads[0].join(30)
    src.gate.set()
    try:
        assert not any(t.is_alive() for t in threads), "a reader still waits after the close"
        assert errors == {name: f"layer {blob.digest} is being unmounted" for name in ("running", "queued")}
    finally:
        for t in threads:
            t.join(60)
        tree.close()
