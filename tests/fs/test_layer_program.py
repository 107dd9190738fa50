"""A big program being started is fetched whole (``LayerTree._fetch_program``): in pieces of
``PREFETCH_PIECE`` compressed bytes, in file order, each its own request to the real registry, instead of
one miss per chunk as the program faults its pages in; on streams of its own, so demand reads never queue
behind its pieces; within a per-program cap and a per-layer budget. Requests and ranges are counted in the
registry proxy's log."""

from __future__ import annotations

import io
import random
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazypull.fs.config import FsConfig
from lazypull.fs.fuse import FuseMount
from lazypull.fs.layer import LayerTree, hints
from lazypull.fs.layer.background import PREFETCH_PIECE
from lazypull.fs.layer.tree import PROGRAM_STREAMS
from lazypull.registry import RegistryClient, RetryPolicy, parse_reference
from tests.fs.elfkit import make_elf
from tests.fs.memtree import MemTree
from tests.fs.settle import settle, watch
from tests.helpers.registry import Fault, FaultProxy
from tests.snapshot.layerkit import Blob, build_blob, lookup_path, open_tree, push_blob

# whole_file_max far below the program: it is "big"; no other guess (read-ahead, neighbours) in the way;
# as many demand workers as the program has streams (with 8, the pieces of a 3 MB program could not fill
# the demand reads' pool, as a big program's did when they shared it)
CONFIG = FsConfig(prefetch=False, background_fetch=False, read_deadline=10.0, warm_connections=0,
                  readahead=0, blob_readahead=0, whole_file_max=64 << 10, learn_window=0,
                  fetch_user_db=False, fetch_workers=PROGRAM_STREAMS)
CHUNK = 256 << 10
PROG = make_elf(pad=3_000_000)                   # ~3 MB of random bytes: 12 chunks, 3 pieces of 1 MiB
PROG2 = make_elf(pad=2_500_000)                  # another program, for the per-layer budget
DATA = PROG[:64] + random.Random(7).randbytes(1_000_000)     # ELF-looking, not executable


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in (("usr/bin/prog", PROG, 0o755), ("usr/share/data.bin", DATA, 0o644),
                                 ("usr/bin/prog2", PROG2, 0o755)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Blob:
    return build_blob(tmp_path_factory.mktemp("blob"), _tar(), name="program", chunk_size=CHUNK)


@pytest.fixture
def tree(blob: Blob, tmp_path: Path, fault_proxy: FaultProxy, unique_repo: str) -> Iterator[LayerTree]:
    push_blob(f"http://127.0.0.1:{fault_proxy.upstream_port}", unique_repo, blob.path.read_bytes())
    client = RegistryClient(insecure=True, retry=RetryPolicy(attempts=1))
    ref = parse_reference(f"{fault_proxy.host}/{unique_repo}:1")
    src = client.blob_source(ref, blob.digest, blob.result.blob_size)
    layer = open_tree(blob, tmp_path, config=CONFIG, source=src)
    fault_proxy.clear()
    try:
        yield layer
    finally:
        layer.close()
        client.close()


def _wait(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _cached(tree: LayerTree, path: str) -> bool:
    fc = tree._chunks_of(lookup_path(tree, path))
    assert fc is not None
    return all(tree.cache.contains(c.digest, c.chunk_size) for c in fc.chunks)


def _ranges(header: str | None) -> list[tuple[int, int]]:
    """``bytes=a-b,c-d`` -> [(a, b + 1), ...]"""
    assert header is not None and header.startswith("bytes=")
    return [(int(a), int(b) + 1) for a, b in (part.split("-") for part in header[6:].split(","))]


def _spans(tree: LayerTree, path: str) -> list[tuple[int, int]]:
    """The compressed units of a file, in file order."""
    fc = tree._chunks_of(lookup_path(tree, path))
    assert fc is not None
    return sorted({(c.offset, c.end) for c in fc.chunks})


def _expected_pieces(units: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Consecutive units cut as ``background.pieces`` cuts them: one span per request."""
    out: list[tuple[int, int]] = []
    for start, end in units:
        if out and end - out[-1][0] <= PREFETCH_PIECE:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def test_the_exec_read_of_a_big_program_fetches_it_whole_in_pieces(tree: LayerTree,
                                                                  fault_proxy: FaultProxy) -> None:
    units = _spans(tree, "usr/bin/prog")
    assert len(units) == 12 and units[-1][1] - units[0][0] > 2 * PREFETCH_PIECE
    ino = lookup_path(tree, "usr/bin/prog")
    assert tree.read_exec(ino, 0, 4096) == PROG[:4096]       # the kernel reading the program's ELF header
    _wait(lambda: _cached(tree, "usr/bin/prog"), "the whole program cached")
    gets = [_ranges(h) for h in fault_proxy.blob_gets]
    assert gets[0] == [units[0]], "the read's own chunk first, alone"
    rest = sorted(r for g in gets[1:] for r in g)
    assert rest == _expected_pieces(units[1:]), "the rest in pieces of PREFETCH_PIECE, one request each"
    assert len(gets) == 1 + len(_expected_pieces(units[1:])) >= 3
    assert tree.stats.fetched_ahead == 1
    fault_proxy.clear()
    assert tree.read_exec(ino, 2_000_000, 100_000) == PROG[2_000_000:2_100_000]
    assert fault_proxy.blob_gets == [], "later faults find the program cached"


def test_the_create_hint_fetches_a_big_program_whole(tree: LayerTree, fault_proxy: FaultProxy) -> None:
    assert hints.expect_program([tree], "prog", "/usr/bin")
    _wait(lambda: _cached(tree, "usr/bin/prog"), "the whole program cached")
    units = _spans(tree, "usr/bin/prog")
    gets = [_ranges(h) for h in fault_proxy.blob_gets]
    fetched = sorted(r for g in gets for r in g)
    # hints.follow reads the ELF header as the first piece is claimed (at its turn, on the program's
    # streams): it either waits for that piece or fetches the first unit itself, never both
    covered = sorted(u for s, e in fetched for u in units if s <= u[0] and u[1] <= e)
    assert covered == units, "each unit fetched once"
    assert sum(e - s for s, e in fetched) == units[-1][1] - units[0][0]
    pieces = _expected_pieces(units)
    assert pieces[0][1] > units[0][1]
    raced = [units[0], (units[1][0], pieces[0][1]), *pieces[1:]]    # the first piece without the header
    assert fetched in (pieces, raced), "in pieces, one request each"
    assert len(gets) == len(fetched)


def test_only_an_executable_within_an_eighth_of_the_cache_bound_is_fetched_whole(
        blob: Blob, tree: LayerTree, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    pending = watch(tree)
    data = lookup_path(tree, "usr/share/data.bin")
    assert tree.read(data, 0, 4096) == DATA[:4096]         # ELF magic, but mode 0644: not a program
    settle(pending, tree)
    assert [_ranges(h) for h in fault_proxy.blob_gets] == [[_spans(tree, "usr/share/data.bin")[0]]]
    assert tree.read_exec(lookup_path(tree, "usr/bin/prog"), 0, 4096) == PROG[:4096]
    _wait(lambda: _cached(tree, "usr/bin/prog"), "the program (3 MB) cached whole")
    # the same program where the chunk cache is bounded to 16 MiB: 3 MB > 16 MiB / 8, read as it faults
    small = open_tree(blob, tmp_path / "small", config=CONFIG.replace(cache_max_bytes=16 << 20),
                      source=tree.remote.source)
    try:
        fault_proxy.clear()
        pending = watch(small)
        assert small.read_exec(lookup_path(small, "usr/bin/prog"), 0, 4096) == PROG[:4096]
        settle(pending, small)
        assert [_ranges(h) for h in fault_proxy.blob_gets] == [[_spans(small, "usr/bin/prog")[0]]]
        assert small.stats.fetched_ahead == 0
    finally:
        small.close()


def _gets(fault_proxy: FaultProxy) -> list[list[tuple[int, int]]]:
    return [_ranges(h) for h in fault_proxy.blob_gets]


def test_demand_reads_are_not_queued_behind_the_program_pieces(tree: LayerTree,
                                                              fault_proxy: FaultProxy) -> None:
    """The review's repro (a 64 MiB program: a 1 KB read of another file answered after 87 of its
    requests): with the program's first pieces held in flight by the proxy, a read of another file and
    a fault of the program's own last chunk are answered at once, before any of the program's pieces."""
    units = _spans(tree, "usr/bin/prog")
    parts = _expected_pieces(units[1:])
    assert len(parts) > PROGRAM_STREAMS and units[-1][0] > parts[PROGRAM_STREAMS - 1][1]
    release = threading.Event()
    held = "|".join(str(start) for start, _ in parts[:PROGRAM_STREAMS])
    fault_proxy.add(Fault("hold", method="GET", path_contains="/blobs/", times=-1, release=release,
                          range_pattern=f"^bytes=({held})-"))
    fc = tree._chunks_of(lookup_path(tree, "usr/bin/prog"))
    assert fc is not None
    first = {c.digest for c in fc.chunks if units[1][0] <= c.offset < parts[PROGRAM_STREAMS - 1][1]}
    try:
        pending = watch(tree)
        prog = lookup_path(tree, "usr/bin/prog")
        assert tree.read_exec(prog, 0, 4096) == PROG[:4096]      # the exec read: the rest is queued
        _wait(lambda: first <= tree.fetcher._inflight.keys(), "the first pieces in flight")
        data = lookup_path(tree, "usr/share/data.bin")
        assert tree.read(data, 0, 1000) == DATA[:1000]      # before the fix: EIO after read_deadline
        tail = fc.chunks[-1]
        assert tree.read_exec(prog, tail.chunk_offset, 100) == \
            PROG[tail.chunk_offset:tail.chunk_offset + 100]         # the program's own later fault
        assert _gets(fault_proxy) == [[units[0]], [_spans(tree, "usr/share/data.bin")[0]], [units[-1]]]
    finally:
        release.set()
    settle(pending, tree)
    assert _cached(tree, "usr/bin/prog")
    gets = _gets(fault_proxy)
    assert sorted(r for g in gets[3:] for r in g) == \
        _expected_pieces(units[1:-1]), "then the pieces, without the chunk the fault fetched"


def test_programs_fetched_whole_stay_within_the_cap_and_the_layer_budget(
        blob: Blob, tree: LayerTree, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    """``program_budget``: the first program fits, the second one no longer does (read as it faults);
    ``program_max`` below the program's size: not fetched whole."""
    configs = {"budget": CONFIG.replace(program_budget=len(PROG)),
               "cap": CONFIG.replace(program_max=len(PROG) - 1)}
    for name, config in configs.items():
        layer = open_tree(blob, tmp_path / name, config=config, source=tree.remote.source)
        try:
            fault_proxy.clear()
            pending = watch(layer)
            prog, prog2 = lookup_path(layer, "usr/bin/prog"), lookup_path(layer, "usr/bin/prog2")
            assert layer.read_exec(prog, 0, 4096) == PROG[:4096]
            settle(pending, layer)
            if name == "budget":
                assert _cached(layer, "usr/bin/prog") and layer.stats.fetched_ahead == 1
                fault_proxy.clear()
                assert layer.read_exec(prog2, 0, 4096) == PROG2[:4096]
                settle(pending, layer)
                assert _gets(fault_proxy) == [[_spans(layer, "usr/bin/prog2")[0]]], "over the budget"
                assert layer.stats.fetched_ahead == 1
            else:
                assert _gets(fault_proxy) == [[_spans(layer, "usr/bin/prog")[0]]], "over the cap"
                assert layer.stats.fetched_ahead == 0
        finally:
            layer.close()


def test_a_plain_read_of_an_executable_elf_is_not_a_program_start(tree: LayerTree,
                                                                 fault_proxy: FaultProxy) -> None:
    """A mode-0755 ELF read without the kernel's exec flag (a library the loader maps, as RHEL/UBI
    images ship them, ``file``, ``ldconfig``): only the chunk read, nothing fetched whole."""
    pending = watch(tree)
    prog = lookup_path(tree, "usr/bin/prog")
    assert tree.read(prog, 0, 4096) == PROG[:4096]
    settle(pending, tree)
    assert _gets(fault_proxy) == [[_spans(tree, "usr/bin/prog")[0]]]
    assert tree.stats.fetched_ahead == 0


class _ExecTree(MemTree):
    """A MemTree that tells the reads made for an execve (``fuse.tree.ExecAware``) from the others."""

    def __init__(self) -> None:
        super().__init__()
        self.exec_reads: list[int] = []

    def read_exec(self, ino: int, offset: int, size: int) -> bytes:
        self.exec_reads.append(ino)
        return self.read(ino, offset, size)


def test_the_kernel_marks_the_reads_of_an_execve(tmp_path: Path) -> None:
    """Through a real FUSE mount: the reads of a file being executed reach ``read_exec`` (the READ's
    file flags hold FMODE_EXEC); the same kind of file read by a shell or ``cat`` reaches ``read``."""
    tree = _ExecTree()
    script = b"#!/bin/sh\nexit 7\n"
    for name in ("run.sh", "sourced.sh", "cat.sh"):
        tree.add_file(name, script, mode=0o755)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with FuseMount(tree, mnt, fsname="lazypull-test", workers=(1, 4)):
        ino = {name: (mnt / name).stat().st_ino for name in ("run.sh", "sourced.sh", "cat.sh")}
        # (never a child exec'd straight from the serving process: through /bin/sh, see fuse.session)
        assert subprocess.run(["/bin/sh", "-c", f"exec '{mnt}/run.sh'"], check=False).returncode == 7
        assert subprocess.run(["/bin/sh", f"{mnt}/sourced.sh"], check=False).returncode == 7
        out = subprocess.run(["/bin/sh", "-c", f"exec cat '{mnt}/cat.sh'"], check=True, capture_output=True)
        assert out.stdout == script
    assert set(tree.exec_reads) == {ino["run.sh"]}
    assert tree.calls["read"] >= 3
