"""Fetch-ahead learned on the node (issue 14 item 2): the first mount of a layer notes what its workload
read first; the next mount whose chunk cache lacks it fetches those chunks at mount, in read order, before
they are asked for. The record steers what is fetched from the layer's own blob, never what is served."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import stat
import tarfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from lazypull.fs.config import FsConfig
from lazypull.fs.layer import LayerTree, background, learned
from lazypull.fs.remote import FileRangeSource
from tests.snapshot.layerkit import FILES, Blob, FaultySource, build_blob, lookup_path, open_tree, read_all

# Nothing fetched but what is read: every request the test sees is the learned fetch or a read's own.
LAZY = FsConfig(prefetch=False, background_fetch=False, read_deadline=5.0, warm_connections=0,
                whole_file_max=0, readahead=0, neighbour_window=0, fetch_elf_deps=False, passthrough=False)
CHUNK = 4096


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Blob:
    return build_blob(tmp_path_factory.mktemp("blob"))


def _mount(blob: Blob, root: Path, config: FsConfig = LAZY) -> tuple[LayerTree, FaultySource]:
    src = FaultySource(FileRangeSource(blob.path))
    tree = open_tree(blob, root, config=config, source=src)
    src.requests.clear()            # the TOC reads
    tree.start()
    assert tree.background.finished.wait(10), "the mount's start-up fetch did not finish"
    return tree, src


def _evict(root: Path) -> None:
    """The chunk cache emptied (evicted or pruned), the layer's state dir kept."""
    shutil.rmtree(LAZY.chunk_dir(root))


def _first_run(tree: LayerTree) -> None:
    """The workload: all of usr/lib/two, then two chunks of bin/huge."""
    assert read_all(tree, lookup_path(tree, "usr/lib/two")) == FILES["usr/lib/two"]
    huge = lookup_path(tree, "bin/huge")
    assert tree.read(huge, 0, 100) == FILES["bin/huge"][:100]
    assert tree.read(huge, 5 * CHUNK + 10, 100) == FILES["bin/huge"][5 * CHUNK + 10 : 5 * CHUNK + 110]


def _units(tree: LayerTree, path: str, offsets: list[int] | None = None) -> list[tuple[int, int]]:
    fc = tree._chunks_of(lookup_path(tree, path))
    assert fc is not None
    return [(c.offset, c.end) for c in fc.chunks if offsets is None or c.chunk_offset in offsets]


def _covered(requests: list[list[tuple[int, int]]], unit: tuple[int, int]) -> bool:
    return any(off <= unit[0] and unit[1] <= off + n for req in requests for off, n in req)


def test_a_cold_mount_fetches_what_the_first_run_read_before_it_is_read(blob: Blob, tmp_path: Path) -> None:
    tree, src = _mount(blob, tmp_path)
    assert src.requests == [], "no record yet: the first mount fetches nothing at start"
    _first_run(tree)
    tree.close()
    record = learned.record_path(tmp_path, blob.digest)
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    doc = json.loads(record.read_text())
    assert doc["files"] == [["usr/lib/two", [0]], ["bin/huge", [0, 5 * CHUNK]]]

    _evict(tmp_path)
    tree, src = _mount(blob, tmp_path)
    learned_units = _units(tree, "usr/lib/two") + _units(tree, "bin/huge", [0, 5 * CHUNK])
    assert len(src.requests) == 1, "the learned chunks came in one request, before any read"
    assert all(_covered(src.requests, u) for u in learned_units)
    assert tree.stats.learned_state == "done" and tree.stats.learned_chunks == 3
    # what was not read the first time is not fetched
    assert not any(tree.cache.contains(c.digest, c.chunk_size) for c in
                   tree._chunks_of(lookup_path(tree, "bin/huge")).chunks[1:5])  # type: ignore[union-attr]
    src.requests.clear()
    _first_run(tree)
    assert src.requests == [], "the second run's reads were all served from the learned fetch"
    assert tree.stats.misses_waited == 0
    tree.close()


class _Gated:
    """A source whose reads wait for ``gate`` (the same origin as the FaultySource it wraps)."""

    def __init__(self, inner: FaultySource) -> None:
        self.inner, self.gate = inner, threading.Event()

    @property
    def size(self) -> int:
        return self.inner.size

    def describe(self) -> str:
        return self.inner.describe()

    def read_ranges(self, ranges: Sequence[tuple[int, int]], deadline: float | None = None) -> list[bytes]:
        assert self.gate.wait(10), "the gate was never opened"
        return self.inner.read_ranges(ranges, deadline)


def test_a_start_does_not_wait_for_the_learned_fetch(blob: Blob, tmp_path: Path) -> None:
    """``wait_prefetch`` (create with ``prefetch_wait``, the containerd proxy) is over once the prefetch
    is: the learned fetch comes in read order and a read of its chunks waits for it, so the container's
    set-up overlaps it instead of waiting for all of it."""
    tree, _ = _mount(blob, tmp_path)
    _first_run(tree)
    tree.close()
    _evict(tmp_path)
    src = _Gated(FaultySource(FileRangeSource(blob.path)))
    src.gate.set()
    tree = open_tree(blob, tmp_path, config=LAZY, source=src)
    src.gate.clear()            # the learned fetch's requests wait
    tree.start()
    try:
        deadline = time.monotonic() + 10
        while tree.stats.learned_state != "running":
            assert time.monotonic() < deadline, "the learned fetch did not start"
            time.sleep(0.01)
        assert tree.wait_prefetch(0), "the start waits for the learned fetch"
    finally:
        src.gate.set()
    assert tree.background.finished.wait(10)
    assert tree.stats.learned_state == "done"
    src.inner.requests.clear()
    _first_run(tree)
    assert src.inner.requests == []
    tree.close()


def test_the_fetch_follows_the_first_read_order(blob: Blob, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut into one piece per unit and fetched one at a time, requests go out in first-read order (here
    not the blob's: bin/huge is stored before usr/lib/one and read after it)."""
    tree, _ = _mount(blob, tmp_path)
    assert read_all(tree, lookup_path(tree, "usr/lib/one")) == FILES["usr/lib/one"]
    huge = lookup_path(tree, "bin/huge")
    assert tree.read(huge, 3 * CHUNK, 10) == FILES["bin/huge"][3 * CHUNK : 3 * CHUNK + 10]
    assert tree.read(huge, 0, 10) == FILES["bin/huge"][:10]
    tree.close()
    _evict(tmp_path)
    monkeypatch.setattr(background, "LEARNED_FIRST_PIECE", 1)
    monkeypatch.setattr(background, "PREFETCH_PIECE", 1)
    monkeypatch.setattr(background, "LEARNED_STREAMS", 1)
    tree, src = _mount(blob, tmp_path)
    expected = _units(tree, "usr/lib/one") + _units(tree, "bin/huge", [0, 3 * CHUNK])
    assert src.requests == [[(off, end - off)] for off, end in expected]
    tree.close()


def test_a_warm_mount_keeps_the_record_and_a_cold_one_learns_again(blob: Blob, tmp_path: Path) -> None:
    tree, _ = _mount(blob, tmp_path)
    _first_run(tree)
    tree.close()
    record = learned.record_path(tmp_path, blob.digest)
    first = record.read_bytes()
    # cache kept (warm): another workload does not replace what the cold start learned
    tree, src = _mount(blob, tmp_path)
    assert src.requests == []
    assert read_all(tree, lookup_path(tree, "etc/hello.txt")) == FILES["etc/hello.txt"]
    tree.close()
    assert record.read_bytes() == first
    # cache evicted (cold): the record follows the workload as it is now
    _evict(tmp_path)
    tree, src = _mount(blob, tmp_path)
    assert len(src.requests) == 1
    assert read_all(tree, lookup_path(tree, "etc/hello.txt")) == FILES["etc/hello.txt"]
    tree.close()
    assert json.loads(record.read_text())["files"] == [["etc/hello.txt", [0]]]


def test_only_the_first_seconds_are_learned(blob: Blob, tmp_path: Path) -> None:
    config = LAZY.replace(learn_window=0.2)
    tree, _ = _mount(blob, tmp_path, config)
    assert read_all(tree, lookup_path(tree, "usr/lib/one")) == FILES["usr/lib/one"]
    time.sleep(0.3)
    assert read_all(tree, lookup_path(tree, "usr/lib/two")) == FILES["usr/lib/two"]
    record = learned.record_path(tmp_path, blob.digest)
    deadline = time.monotonic() + 5
    while not record.exists():      # written when the window closed, before the unmount
        assert time.monotonic() < deadline, "the record was not written when the window closed"
        time.sleep(0.02)
    assert json.loads(record.read_text())["files"] == [["usr/lib/one", [0]]]
    tree.close()


def test_learning_off(blob: Blob, tmp_path: Path) -> None:
    tree, _ = _mount(blob, tmp_path, LAZY.replace(learn_window=0.0))
    _first_run(tree)
    tree.close()
    assert not learned.record_path(tmp_path, blob.digest).exists()


@pytest.mark.parametrize("content", [
    b"not json",
    b'{"version": 2, "files": []}',
    b'{"version": 1, "files": [["bin/huge", [-1]]]}',
    b'{"version": 1, "files": [["bin/huge", [0.5]]]}',
    b'{"version": 1, "files": [["bin/huge"]]}',
    b'{"version": 1, "files": {"bin/huge": null}}',
    b'{"version": 1, "files": [' + b",".join([b'["x", null]'] * (learned.MAX_FILES + 1)) + b"]}",
    b" " * (learned.MAX_RECORD_SIZE + 1),
    b'{"version": 1, "origin": ["faulty:x"], "files": [["bin/huge", null]]}',
    b"[" * 200_000,
    b"symlink",
    b"fifo",
    b"directory",
], ids=["not-json", "version", "negative", "float", "short", "not-list", "too-many", "too-big", "origin",
        "deep", "symlink", "fifo", "directory"])
def test_an_unusable_record_is_ignored_and_learned_anew(blob: Blob, tmp_path: Path, content: bytes,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    record = learned.record_path(tmp_path, blob.digest)
    record.parent.mkdir(parents=True)
    if content == b"symlink":
        (tmp_path / "elsewhere").write_text('{"version": 1, "files": [["bin/huge", null]]}')
        record.symlink_to(tmp_path / "elsewhere")
    elif content == b"fifo":
        os.mkfifo(record)
    elif content == b"directory":
        record.mkdir()
    else:
        record.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger=learned.__name__):
        tree, src = _mount(blob, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.name == learned.__name__]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith(f"learned record {record}: ") and warnings[0].endswith("; ignored")
    assert src.requests == [], "nothing fetched on the word of an unusable record"
    assert tree.stats.learned_state == "none"
    if content in (b"symlink", b"fifo"):
        record.unlink()
    elif content == b"directory":
        record.rmdir()
    _first_run(tree)
    tree.close()
    assert json.loads(record.read_text())["files"][0] == ["usr/lib/two", [0]]


def test_a_record_only_steers_fetches_of_the_layers_own_chunks(blob: Blob, tmp_path: Path) -> None:
    """Paths the TOC does not have, escapes and offsets that start no chunk fetch nothing; what the
    record names that exists is fetched from the blob and verified like any read."""
    record = learned.record_path(tmp_path, blob.digest)
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"version": 1, "origin": f"faulty:{blob.path}", "files": [
        ["../../etc/hello.txt", None], ["nope/none", None], ["bin/huge", [1, 999_999_999]], ["bin", None],
        ["etc/empty", None], ["/etc/hello.txt", [0]]]}))
    tree, src = _mount(blob, tmp_path)
    hello = _units(tree, "etc/hello.txt")
    assert len(src.requests) == 1 and sum(n for _, n in src.requests[0]) == hello[0][1] - hello[0][0]
    assert _covered(src.requests, hello[0])
    assert tree.stats.learned_chunks == 1
    tree.close()


def test_a_corrupt_blob_region_is_not_served_from_a_learned_fetch(blob: Blob, tmp_path: Path) -> None:
    tree, _ = _mount(blob, tmp_path)
    _first_run(tree)
    tree.close()
    _evict(tmp_path)
    src = FaultySource(FileRangeSource(blob.path), corrupt=1)
    tree = open_tree(blob, tmp_path, config=LAZY, source=src)
    tree.start()
    assert tree.background.finished.wait(10)
    assert tree.stats.verify_failures >= 1, "the damaged response was caught by the chunk digests"
    _first_run(tree)            # correct bytes: the bad ones were fetched again, never served
    tree.close()


def test_passthrough_opens_are_learned_whole_and_guesses_are_not(blob: Blob, tmp_path: Path) -> None:
    """With passthrough a cached file's reads never reach the server: its open is what is learned. The
    server's own reads (``read_quiet``: fetched ahead for the loader) are not the workload's."""
    tree, _ = _mount(blob, tmp_path, LAZY.replace(passthrough=True))
    hello = lookup_path(tree, "etc/hello.txt")
    assert tree.read_quiet(hello, 0, 100) == FILES["etc/hello.txt"]       # a guess: not learned
    assert tree.read_quiet(lookup_path(tree, "usr/lib/one"), 0, 100) == FILES["usr/lib/one"][:100]
    assert tree.backing_path(hello) is not None                          # the workload opens it
    tree.close()
    record = learned.record_path(tmp_path, blob.digest)
    assert json.loads(record.read_text())["files"] == [["etc/hello.txt", None]]


def test_a_record_left_half_written_by_a_crash_is_removed_at_mount(blob: Blob, tmp_path: Path) -> None:
    record = learned.record_path(tmp_path, blob.digest)
    record.parent.mkdir(parents=True)
    stale = record.with_name(f".{record.name}.x1y2z3")
    stale.write_bytes(b'{"version": 1, "fi')
    tree, src = _mount(blob, tmp_path)
    assert not stale.exists()
    assert src.requests == []
    tree.close()


# -- /etc/passwd and /etc/group at mount: every container start reads them --

def _user_db_blob(tmp: Path, link: bool = False) -> Blob:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        files = {"etc/group": b"root:x:0:\n", "etc/hostname": b"box\n",
                 "usr/bin/big": bytes(range(256)) * 400}
        files["etc/passwd" if not link else "etc/passwd.real"] = b"root:x:0:0:root:/root:/bin/sh\n"
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo("etc/passwd")
            info.type = tarfile.SYMTYPE
            info.linkname = "passwd.real"
            tar.addfile(info)
    return build_blob(tmp, buf.getvalue(), name="userdb-link" if link else "userdb")


def test_a_mount_fetches_passwd_and_group_before_they_are_read(tmp_path: Path) -> None:
    blob = _user_db_blob(tmp_path)
    tree, src = _mount(blob, tmp_path / "on", LAZY.replace(fetch_user_db=True))
    deadline = time.monotonic() + 5
    while not all(tree.cache.contains(c.digest, c.chunk_size) for p in ("etc/passwd", "etc/group")
                  for c in tree._chunks_of(lookup_path(tree, p)).chunks):  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "passwd and group were not fetched at mount"
        time.sleep(0.02)
    assert len(src.requests) == 1, "both in one request"
    hostname = tree._chunks_of(lookup_path(tree, "etc/hostname"))
    assert hostname is not None
    assert not tree.cache.contains(hostname.chunks[0].digest, hostname.chunks[0].chunk_size)
    src.requests.clear()
    assert read_all(tree, lookup_path(tree, "etc/passwd")) == b"root:x:0:0:root:/root:/bin/sh\n"
    assert read_all(tree, lookup_path(tree, "etc/group")) == b"root:x:0:\n"
    assert src.requests == []
    tree.close()
    tree, src = _mount(blob, tmp_path / "off", LAZY.replace(fetch_user_db=False))
    assert src.requests == []
    tree.close()


def test_a_symlinked_passwd_is_not_fetched_at_mount(tmp_path: Path) -> None:
    """Only the layer's own regular files of those names: a link is what the runtime resolves itself."""
    blob = _user_db_blob(tmp_path, link=True)
    tree, src = _mount(blob, tmp_path / "root", LAZY.replace(fetch_user_db=True))
    deadline = time.monotonic() + 5
    while not src.requests:
        assert time.monotonic() < deadline, "group was not fetched at mount"
        time.sleep(0.02)
    group = tree._chunks_of(lookup_path(tree, "etc/group"))
    real = tree._chunks_of(lookup_path(tree, "etc/passwd.real"))
    assert group is not None and real is not None
    assert src.requests == [[(group.chunks[0].offset, group.chunks[0].end - group.chunks[0].offset)]]
    tree.close()


def test_a_record_is_replayed_only_for_the_origin_it_was_learned_from(blob: Blob, tmp_path: Path) -> None:
    """Another source of the same blob (another registry) gets no learned fetch: replaying the record
    would show it what an earlier workload here read, in order. The first origin still gets it."""
    tree, _ = _mount(blob, tmp_path)
    _first_run(tree)
    tree.close()
    record = json.loads(learned.record_path(tmp_path, blob.digest).read_text())
    assert record["origin"] == f"faulty:{blob.path}"
    _evict(tmp_path)
    other = tmp_path / "mirror.blob"
    shutil.copyfile(blob.path, other)             # the same bytes, served by someone else
    src = FaultySource(FileRangeSource(other))
    tree = open_tree(blob, tmp_path, config=LAZY, source=src)
    src.requests.clear()
    tree.start()
    assert tree.background.finished.wait(10)
    assert src.requests == [] and tree.stats.learned_state == "none"
    tree.close()
    _evict(tmp_path)
    tree, src = _mount(blob, tmp_path)              # the origin it was learned from: fetched ahead again
    assert len(src.requests) >= 1 and tree.stats.learned_chunks > 0
    tree.close()



# -- the node's store: bounded, least recently used first; records of older versions adopted --

def _fake_record(root: Path, n: int, mtime: float, size: int = 0) -> Path:
    path = learned.record_path(root, "sha256:" + f"{n:064x}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "origin": "x", "files": [["a" * size, None]]}))
    os.utime(path, (mtime, mtime))
    return path


def test_the_store_keeps_the_most_recently_used_records_within_its_bounds(
        blob: Blob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record written prunes the store: by count, then by bytes, the least recently used first, and a
    record a mount used counts as used then (the oldest written here, kept)."""
    now = time.time()
    others = [_fake_record(tmp_path, n, now - 1000 + n) for n in range(1, 6)]   # 1 oldest .. 5 newest
    mine = learned.record_path(tmp_path, blob.digest)
    tree, _ = _mount(blob, tmp_path)
    _first_run(tree)
    tree.close()
    used = _fake_record(tmp_path, 9, now - 5000)          # the oldest, but a mount reads it now
    assert learned.load(used, "x") is not None
    monkeypatch.setattr(learned, "MAX_RECORDS", 4)
    _evict(tmp_path)
    tree, _ = _mount(blob, tmp_path)
    _first_run(tree)
    tree.close()                # writes this layer's record again: the store is pruned to 4
    kept = {p.name for p in mine.parent.iterdir()}
    assert kept == {mine.name, used.name, others[4].name, others[3].name}
    monkeypatch.setattr(learned, "MAX_STORE_BYTES", mine.stat().st_size + used.stat().st_size + 10)
    big = _fake_record(tmp_path, 7, now + 10, size=learned.MAX_STORE_BYTES)    # the newest, too big
    _evict(tmp_path)
    tree, _ = _mount(blob, tmp_path)
    _first_run(tree)
    tree.close()
    assert {p.name for p in mine.parent.iterdir()} == {mine.name, used.name}, "bytes bound the store too"
    assert not big.exists()


def test_a_record_an_older_version_kept_beside_the_layer_is_moved_into_the_store(blob: Blob,
                                                                               tmp_path: Path) -> None:
    tree, _ = _mount(blob, tmp_path)
    _first_run(tree)
    tree.close()
    record = learned.record_path(tmp_path, blob.digest)
    legacy = tmp_path / "snapshots" / blob.digest[7:] / learned.LEGACY_NAME
    record.replace(legacy)
    _evict(tmp_path)
    tree, src = _mount(blob, tmp_path)
    assert tree.stats.learned_state == "done" and len(src.requests) == 1
    assert record.exists() and not legacy.exists()
    tree.close()


def test_a_chunk_a_read_still_fetches_is_not_counted_missing(blob: Blob, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A learned chunk a read was already fetching is left to that read; the learned fetch, over
    before it, counted the chunk missing and said "failed" though the read then served and cached it
    (1 of 15 gcc repulls). It now waits for that read's fetch."""
    tree, _ = _mount(blob, tmp_path)
    _first_run(tree)
    tree.close()
    _evict(tmp_path)
    src = FaultySource(FileRangeSource(blob.path))
    tree = open_tree(blob, tmp_path, config=LAZY, source=src)
    two = lookup_path(tree, "usr/lib/two")
    unit = _units(tree, "usr/lib/two")[0]
    first = tree._chunks_of(two).chunks[0]  # type: ignore[union-attr]
    asked, gate, counting = threading.Event(), threading.Event(), threading.Event()
    real_read = src.read_ranges

    def read_ranges(ranges: Sequence[tuple[int, int]], deadline: float | None = None) -> list[bytes]:
        if any(off <= unit[0] < off + n for off, n in ranges):     # the read's own fetch
            asked.set()
            assert gate.wait(30), "the read's fetch was never let through"
        return real_read(ranges, deadline)

    store = tree.cache
    real_contains = store.contains

    def contains(digest: str, size: int) -> bool:
        name = threading.current_thread().name
        if name.startswith("learned-"):
            counting.set()      # the learned fetch began: the next look from its own thread counts
        found = real_contains(digest, size)
        if digest == first.digest and counting.is_set() and name.startswith("prefetch-"):
            gate.set()          # the count looked: the read's fetch finishes now
        return found

    monkeypatch.setattr(src, "read_ranges", read_ranges)
    monkeypatch.setattr(store, "contains", contains)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(tree.read(two, 0, 100)))
    reader.start()
    try:
        assert asked.wait(30), "the read did not fetch its chunk"
        tree.start()
        assert tree.background.finished.wait(30), "the mount's start-up fetch did not finish"
    finally:
        gate.set()
        reader.join(30)
    assert got == [FILES["usr/lib/two"][:100]]
    assert tree.stats.learned_state == "done", "a chunk a read fetched counted as missing"
    assert tree.stats.learned_chunks == 3
    tree.close()


def test_a_learned_chunk_nobody_fetches_is_counted_missing_not_fetched_again(
        blob: Blob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the learned fetch is over (the mount counts as idle again), a learned chunk still not cached
    and that nobody fetches is counted missing ("failed"); it is not claimed and fetched once more on the
    read pool for another read deadline (a read asks for it when it wants it). Here the learned fetch
    finds the pieces claimed by nobody it sees (as after a read's fetch that failed)."""
    tree, _ = _mount(blob, tmp_path)
    _first_run(tree)
    tree.close()
    _evict(tmp_path)
    src = FaultySource(FileRangeSource(blob.path))
    tree = open_tree(blob, tmp_path, config=LAZY, source=src)
    monkeypatch.setattr(tree.fetcher, "claim_for_background", lambda chunks: [])
    src.requests.clear()
    tree.start()
    assert tree.background.finished.wait(30), "the mount's start-up fetch did not finish"
    assert src.requests == [], "the count fetched what the learned fetch left"
    assert tree.stats.learned_state == "failed" and tree.stats.learned_chunks == 3
    tree.close()


def test_forgetting_the_store_passes_over_what_it_cannot_remove(tmp_path: Path) -> None:
    """``image prune --learned`` removes every record and leaves a directory or anything else it cannot
    unlink (it raised IsADirectoryError before, a traceback instead of the prune)."""
    store = tmp_path / "learned"
    store.mkdir()
    (store / ".odd").mkdir()
    hexes = ["a" * 64, "b" * 64]
    for name in hexes:
        (store / f"{name}.json").write_text("{}")
    assert learned.forget(store) == 2
    assert sorted(p.name for p in store.iterdir()) == [".odd"]
