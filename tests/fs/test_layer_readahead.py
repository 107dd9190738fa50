"""Blob-order read-ahead (``fs.layer.readahead``): a miss of a small file near a recent one (a walk through
a directory) brings the small files stored after it, within the budget, in a request of its own; a lone
miss, a second miss far from the first, big files, a budget of 0 and the cache bound stop it; what is
read stays byte-identical. Over the tree, and through a real FUSE mount (served reads and passthrough of
the files read ahead)."""

from __future__ import annotations

import io
import os
import random
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from lazypull.fs import mount_layer
from lazypull.fs.config import FsConfig
from lazypull.fs.layer import LayerTree, readahead
from lazypull.fs.remote import FileRangeSource
from tests.fs.settle import idle
from tests.snapshot.layerkit import Blob, FaultySource, build_blob, lookup_path, open_tree

# everything else that fetches ahead off: only the read-ahead under test adds requests
LAZY = FsConfig(prefetch=False, background_fetch=False, read_deadline=5.0, warm_connections=0,
                neighbour_window=0, whole_file_max=0, fetch_user_db=False, learn_window=0,
                fetch_elf_deps=False)
SMALL = 3000                  # bytes of each small file (random: compressed about as big)


def _random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _files() -> dict[str, bytes]:
    """In tar (= blob) order: a directory of small files, a big file, more small files."""
    files = {f"pkg/mod{i:02}.pyc": _random(SMALL, i) for i in range(20)}
    files["pkg/zbig.so"] = _random(100_000, 99)         # over SMALL_FILE compressed: never read ahead
    files.update({f"pkg/zz{i}.pyc": _random(SMALL, 100 + i) for i in range(3)})
    return files


FILES = _files()


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Blob:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in FILES.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return build_blob(tmp_path_factory.mktemp("blob"), buf.getvalue(), name="readahead", chunk_size=1 << 20)


def _cached(tree: LayerTree, path: str) -> bool:
    fc = tree._chunks_of(lookup_path(tree, path))
    assert fc is not None
    return all(tree.cache.contains(c.digest, c.chunk_size) for c in fc.chunks)


def _wait(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _tree(blob: Blob, root: Path, config: FsConfig) -> tuple[LayerTree, FaultySource]:
    src = FaultySource(FileRangeSource(blob.path))
    tree = open_tree(blob, root, config=config, source=src)
    tree.index(0)                       # as the background thread does at mount: the files located
    src.requests.clear()
    return tree, src


def _span(tree: LayerTree, path: str) -> tuple[int, int]:
    fc = tree._chunks_of(lookup_path(tree, path))
    assert fc is not None
    return min(c.offset for c in fc.chunks), max(c.end for c in fc.chunks)


def _read(tree: LayerTree, name: str) -> None:
    assert tree.read(lookup_path(tree, name), 0, 1 << 20) == FILES[name]


def test_a_walk_through_small_files_brings_the_ones_after_it(blob: Blob, tmp_path: Path) -> None:
    probe, _ = _tree(blob, tmp_path / "probe", LAZY.replace(blob_readahead=0))
    first_end = _span(probe, "pkg/mod04.pyc")[1]
    budget = _span(probe, "pkg/mod10.pyc")[1] - first_end     # mod05..mod10 fit, mod11 does not
    probe.close()
    tree, src = _tree(blob, tmp_path / "root", LAZY.replace(blob_readahead=budget))
    _read(tree, "pkg/mod03.pyc")
    idle(tree)                      # every request the reads set off has been made
    assert len(src.requests) == 1, "a lone miss reads nothing ahead"
    _read(tree, "pkg/mod04.pyc")            # a second miss near the first: a walk
    _wait(lambda: len(src.requests) == 3 and _cached(tree, "pkg/mod10.pyc"), "read ahead")
    assert [_cached(tree, f"pkg/mod{i:02}.pyc") for i in range(20)] == [i in range(3, 11) for i in range(20)]
    ahead = src.requests[2]
    assert min(o for o, _ in ahead) >= first_end and max(o + n for o, n in ahead) <= first_end + budget
    for i in range(5, 11):                  # served from the cache: no request, the tar's bytes
        _read(tree, f"pkg/mod{i:02}.pyc")
    assert len(src.requests) == 3
    _read(tree, "pkg/mod11.pyc")
    assert len(src.requests) >= 4, "beyond the budget: a miss of its own"
    tree.close()


def test_a_big_file_in_the_window_is_skipped_and_a_big_miss_reads_nothing_ahead(
        blob: Blob, tmp_path: Path) -> None:
    tree, src = _tree(blob, tmp_path, LAZY.replace(blob_readahead=1 << 20))
    _read(tree, "pkg/mod18.pyc")
    _read(tree, "pkg/mod19.pyc")
    _wait(lambda: all(_cached(tree, f"pkg/zz{i}.pyc") for i in range(3)), "small files after the big one")
    assert not _cached(tree, "pkg/zbig.so"), "a big file is not read ahead"
    tree.close()
    tree, src = _tree(blob, tmp_path / "big", LAZY.replace(blob_readahead=1 << 20))
    _read(tree, "pkg/mod19.pyc")
    assert tree.read(lookup_path(tree, "pkg/zbig.so"), 0, 4096) == FILES["pkg/zbig.so"][:4096]
    idle(tree)                      # every request the reads set off has been made
    assert len(src.requests) == 2 and not _cached(tree, "pkg/zz0.pyc"), "a big file's miss reads no more"
    tree.close()


def test_two_misses_far_apart_are_no_walk(tmp_path: Path) -> None:
    names = [f"lib/m{i:03}.py" for i in range(160)]
    files = {name: _random(SMALL, 1000 + i) for i, name in enumerate(names)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    far = build_blob(tmp_path, buf.getvalue(), name="far", chunk_size=1 << 20)
    tree, src = _tree(far, tmp_path / "root", LAZY.replace(blob_readahead=1 << 20))
    assert _span(tree, names[100])[0] - _span(tree, names[0])[1] > readahead.WALK_GAP
    for name in (names[0], names[100]):         # one package's two files, far apart: no walk
        assert tree.read(lookup_path(tree, name), 0, 1 << 20) == files[name]
    idle(tree)                      # every request the reads set off has been made
    assert len(src.requests) == 2 and not _cached(tree, names[102])
    assert tree.read(lookup_path(tree, names[101]), 0, 1 << 20) == files[names[101]]
    _wait(lambda: len(src.requests) == 4 and _cached(tree, names[159]), "a walk from the next file on")
    assert not _cached(tree, names[50])
    tree.close()


def test_budget_zero_is_off(blob: Blob, tmp_path: Path) -> None:
    tree, src = _tree(blob, tmp_path, LAZY.replace(blob_readahead=0))
    _read(tree, "pkg/mod03.pyc")
    _read(tree, "pkg/mod04.pyc")
    idle(tree)                      # every request the reads set off has been made
    assert len(src.requests) == 2
    assert not any(_cached(tree, f"pkg/mod{i:02}.pyc") for i in range(5, 20))
    tree.close()


def test_read_ahead_takes_at_most_a_sixteenth_of_the_cache_bound(blob: Blob, tmp_path: Path) -> None:
    bound = 16 * (2 * SMALL + 100)          # room for two small files' chunks, not three
    tree, src = _tree(blob, tmp_path, LAZY.replace(blob_readahead=1 << 20, cache_max_bytes=bound))
    _read(tree, "pkg/mod02.pyc")
    _read(tree, "pkg/mod03.pyc")
    _wait(lambda: len(src.requests) == 3, "read ahead")
    _wait(lambda: _cached(tree, "pkg/mod05.pyc"), "two files read ahead")
    assert [_cached(tree, f"pkg/mod{i:02}.pyc") for i in range(4, 8)] == [True, True, False, False]
    tree.close()


def test_through_fuse_served_then_passthrough(blob: Blob, tmp_path: Path) -> None:
    """A real mount: the first file read goes through the server; the files read ahead are then whole in
    the cache, so their opens are passthrough when the kernel offers it, served otherwise; either way the
    bytes are the tar's and no new request is made."""
    src = FaultySource(FileRangeSource(blob.path))
    for passthrough in (True, False):
        root = tmp_path / f"pt-{passthrough}"
        src.requests.clear()
        tree = open_tree(blob, root, config=LAZY.replace(blob_readahead=64 << 10, passthrough=passthrough),
                         source=src)
        tree.start()
        fuse = mount_layer(tree, root / "mnt", passthrough=passthrough)
        try:
            _wait(lambda t=tree: t._by_offset is not None, "files located")
            first = len(src.requests)
            assert (root / "mnt/pkg/mod00.pyc").read_bytes() == FILES["pkg/mod00.pyc"]
            assert (root / "mnt/pkg/mod01.pyc").read_bytes() == FILES["pkg/mod01.pyc"]
            _wait(lambda t=tree: _cached(t, "pkg/mod06.pyc"), "read ahead")
            fetched = len(src.requests)
            assert fetched - first == 3, "two misses and one read-ahead request"
            for i in range(2, 7):
                name = f"pkg/mod{i:02}.pyc"
                with open(root / "mnt" / name, "rb") as fh:
                    assert fh.read() == FILES[name]
                    os.fstat(fh.fileno())
            assert len(src.requests) == fetched
        finally:
            fuse.stop()
            tree.close()
