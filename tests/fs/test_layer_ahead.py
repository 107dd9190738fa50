"""Fetching ahead on the lazy read path: a small file whole at its first miss, what the dynamic loader opens
after a program (ELF headers followed across the image's layers), warm registry connections, and the ELF
parser those guesses rest on (hostile input included)."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lazypull.fs import remote
from lazypull.fs.config import FsConfig
from lazypull.fs.layer import LayerTree, background, elf, hints
from lazypull.fs.layer.access import AccessRecorder
from lazypull.fs.remote import FileRangeSource, RemoteBlob
from lazypull.fs.stats import LayerStats
from lazypull.registry import RegistryClient, RetryPolicy, parse_reference
from tests.fs.elfkit import make_elf
from tests.fs.settle import idle, settle, watch
from tests.helpers.registry import FaultProxy
from tests.snapshot.layerkit import (
    FILES,
    Blob,
    FaultySource,
    build_blob,
    lookup_path,
    open_tree,
    push_blob,
    read_all,
)

LAZY = FsConfig(prefetch=False, background_fetch=False, read_deadline=5.0, warm_connections=0,
                blob_readahead=0)    # (tested in test_layer_readahead)


@dataclass
class ImageSource(FaultySource):
    """A blob source that names the image it belongs to, as ``RegistryBlobSource`` does."""

    ref: str = ""


def _tar(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def _cached(tree: LayerTree, path: str) -> bool:
    fc = tree._chunks_of(lookup_path(tree, path))
    assert fc is not None
    return all(tree.cache.contains(c.digest, c.chunk_size) for c in fc.chunks)


def _wait(predicate: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


# -- a small file whole at its first miss --

@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Blob:
    return build_blob(tmp_path_factory.mktemp("blob"))


def test_first_miss_of_a_small_file_fetches_all_of_it(blob: Blob, tmp_path: Path) -> None:
    src = FaultySource(FileRangeSource(blob.path))
    tree = open_tree(blob, tmp_path, config=LAZY, source=src)
    ino = lookup_path(tree, "bin/big")
    fc = tree._chunks_of(ino)
    assert fc is not None and len(fc.chunks) == 5
    src.requests.clear()
    assert tree.read(ino, 0, 4096) == FILES["bin/big"][:4096]
    _wait(lambda: _cached(tree, "bin/big"), "the whole file cached")
    first, rest = fc.chunks[0], fc.chunks[1:]
    assert sorted(src.requests) == sorted([[(first.offset, first.end - first.offset)],      # what is read
                                           [(rest[0].offset, rest[-1].end - rest[0].offset)]])  # beside it
    assert tree.read(ino, 4096, 20000) == FILES["bin/big"][4096:]
    assert len(src.requests) == 2, "the rest of the file came with the first read"
    tree.close()


def test_a_file_bigger_than_whole_file_max_fetches_only_what_is_read(blob: Blob, tmp_path: Path) -> None:
    src = FaultySource(FileRangeSource(blob.path))
    ino_config = LAZY.replace(whole_file_max=10_000, readahead=0)
    tree = open_tree(blob, tmp_path, config=ino_config, source=src)
    ino = lookup_path(tree, "bin/huge")           # 150 KB of random bytes: > 10 000 compressed
    fc = tree._chunks_of(ino)
    assert fc is not None and fc.compressed > 10_000
    src.requests.clear()
    assert tree.read(ino, 0, 4096) == FILES["bin/huge"][:4096]
    assert src.requests == [[(fc.chunks[0].offset, fc.chunks[0].end - fc.chunks[0].offset)]]
    assert not tree.cache.contains(fc.chunks[1].digest, fc.chunks[1].chunk_size)
    tree.close()


def test_a_read_does_not_wait_for_the_rest_of_its_file(blob: Blob, tmp_path: Path) -> None:
    """The other chunks ride along in the same request; a chunk someone else is fetching is not waited."""
    src = FaultySource(FileRangeSource(blob.path))
    tree = open_tree(blob, tmp_path, config=LAZY, source=src)
    ino = lookup_path(tree, "bin/big")
    fc = tree._chunks_of(ino)
    assert fc is not None
    last = fc.chunks[-1]
    hold = tree.fetcher._claim([last], with_siblings=False)[1]   # "in flight" elsewhere, never finishing
    assert hold == [last]
    # Waiting for the held chunk would end in EIO at the read deadline: data means it did not wait.
    assert tree.read(ino, 0, 4096) == FILES["bin/big"][:4096]
    assert not tree.cache.contains(last.digest, last.chunk_size), "the held chunk is still not fetched"
    tree.fetcher._fail(hold, RuntimeError("released by the test"))
    tree.close()


# -- the ELF parser --

def test_parse_reads_interpreter_needed_and_runpath() -> None:
    data = make_elf(interp="/lib64/ld-linux-x86-64.so.2", needed=["libm.so.6", "libc.so.6"],
                    runpath="$ORIGIN/../lib:/opt/x")
    info = elf.parse(lambda off, n: data[off : off + n])
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert info.needed == ["libm.so.6", "libc.so.6"]
    assert info.runpath == ["$ORIGIN/../lib", "/opt/x"]
    assert info.search_dirs("/usr/bin")[:4] == ["/usr/lib", "/opt/x", "/lib/x86_64-linux-gnu",
                                                "/usr/lib/x86_64-linux-gnu"]


@pytest.mark.parametrize("wide,big_endian", [(False, False), (True, True), (False, True)],
                         ids=["elf32-le", "elf64-be", "elf32-be"])
def test_parse_handles_every_class_and_byte_order(wide: bool, big_endian: bool) -> None:
    data = make_elf(interp="/lib/ld.so.1", needed=["libc.so.6"], rpath="/usr/lib/legacy", machine=20,
                    wide=wide, big_endian=big_endian)
    info = elf.parse(lambda off, n: data[off : off + n])
    assert (info.interpreter, info.needed, info.runpath) == ("/lib/ld.so.1", ["libc.so.6"],
                                                            ["/usr/lib/legacy"])
    assert "/lib/powerpc-linux-gnu" in info.search_dirs("/bin")


def test_parse_a_real_program_of_this_machine() -> None:
    data = Path("/usr/bin/true").read_bytes()
    info = elf.parse(lambda off, n: data[off : off + n])
    assert info.interpreter is not None and info.interpreter.startswith("/")
    assert "libc.so.6" in info.needed


def _corrupt(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


GOOD = make_elf(interp="/lib/ld.so", needed=["liba.so"])


@pytest.mark.parametrize("data,message", [
    (b"#!/bin/sh\necho not elf\n" * 4, "not an ELF file"),
    (GOOD[:40], "not an ELF file"),
    (_corrupt(GOOD, 4, b"\x07"), "unknown ELF class"),
    (_corrupt(GOOD, 56, b"\xff\xff"), "implausible program header table"),
    (_corrupt(GOOD, 32, (1 << 40).to_bytes(8, "little")), "beyond the end of the file"),
    (_corrupt(GOOD, 56, b"\x00\x00"), "no program headers"),
], ids=["script", "truncated", "class", "phnum", "phoff", "no-phdrs"])
def test_parse_refuses_hostile_headers(data: bytes, message: str) -> None:
    with pytest.raises(elf.ElfError, match=message):
        elf.parse(lambda off, n: data[off : off + n])


def test_parse_refuses_strings_outside_their_table() -> None:
    data = make_elf(needed=["liba.so"])
    strsz = data.find((10).to_bytes(8, "little"))          # the DT_STRSZ entry: make the table 1 byte long
    assert strsz > 0
    broken = _corrupt(data, strsz + 8, (1).to_bytes(8, "little"))
    with pytest.raises(elf.ElfError, match="beyond the string table"):
        elf.parse(lambda off, n: broken[off : off + n])


# -- the loader's files, across the image's layers --

PROG = make_elf(interp="/lib64/ld-linux-test.so.2", needed=["libfoo.so.1", "libpriv.so"],
                runpath="$ORIGIN/../lib/private", pad=9000)
LIBFOO = make_elf(interp="/lib64/ld-linux-other.so.2", needed=["libbar.so"], pad=6000)   # as libc has one


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Blob, Blob, Blob]:
    """(upper, lower, stranger): two layers of one image and a layer of another image with the same lib."""
    tmp = tmp_path_factory.mktemp("image")
    upper = build_blob(tmp, _tar({"usr/bin/prog": PROG, "usr/lib/private/libpriv.so": b"p" * 5000,
                                  "etc/ld.so.cache": b"upper cache" * 100}), name="upper")
    lower = build_blob(tmp, _tar({"usr/lib64/ld-linux-test.so.2": b"l" * 7000,
                                  "usr/lib/x86_64-linux-gnu/libfoo.so.1.2": LIBFOO,
                                  "usr/lib/x86_64-linux-gnu/libbar.so": b"b" * 12000,
                                  "usr/lib/x86_64-linux-gnu/libunused.so": b"u" * 5000,
                                  "usr/lib64/ld-linux-other.so.2": b"o" * 5000,
                                  "etc/ld.so.cache": b"lower cache" * 100},
                                 {"lib": "usr/lib", "lib64": "usr/lib64",
                                  "usr/lib/x86_64-linux-gnu/libfoo.so.1": "libfoo.so.1.2"}), name="lower")
    stranger = build_blob(tmp, _tar({"usr/lib/x86_64-linux-gnu/libbar.so": b"s" * 12000}), name="stranger")
    return upper, lower, stranger


# One server's image groups (``LayerFs.groups``), shared by the layers these tests open as the server's are.
GROUPS = hints.Groups()


def _layer(blob: Blob, root: Path, ref: str, config: FsConfig = LAZY) -> tuple[LayerTree, ImageSource]:
    src = ImageSource(FileRangeSource(blob.path), ref=ref)
    return open_tree(blob, root, config=config, source=src, groups=GROUPS), src


def test_a_program_read_brings_its_interpreter_and_libraries_from_every_layer(
        image: tuple[Blob, Blob, Blob], tmp_path: Path) -> None:
    upper_blob, lower_blob, stranger_blob = image
    upper, _ = _layer(upper_blob, tmp_path, "registry.test/app:1")
    lower, _ = _layer(lower_blob, tmp_path, "registry.test/app:1")
    stranger, stranger_src = _layer(stranger_blob, tmp_path, "registry.test/other:1")
    pending = watch(upper, lower, stranger)
    upper.access = AccessRecorder(tmp_path / "upper-access.jsonl")
    lower.access = AccessRecorder(tmp_path / "lower-access.jsonl")
    try:
        stranger_src.requests.clear()
        prog = lookup_path(upper, "usr/bin/prog")
        assert upper.read(prog, 0, 4096) == PROG[:4096]
        expected = [(lower, "usr/lib64/ld-linux-test.so.2"),                # PT_INTERP, through lib64 ->
                    (upper, "etc/ld.so.cache"),                             # the image's (upper) one
                    (lower, "usr/lib/x86_64-linux-gnu/libfoo.so.1.2"),      # lib -> usr/lib, libfoo.so.1 ->
                    (upper, "usr/lib/private/libpriv.so"),                  # $ORIGIN/../lib/private
                    (lower, "usr/lib/x86_64-linux-gnu/libbar.so")]          # libfoo's own DT_NEEDED
        for tree, path in expected:
            _wait(lambda tree=tree, path=path: _cached(tree, path), f"{path} fetched ahead")
        settle(pending, upper, lower, stranger)        # every guess made: what follows was never asked for
        assert not _cached(lower, "usr/lib/x86_64-linux-gnu/libunused.so")
        assert not _cached(lower, "usr/lib64/ld-linux-other.so.2"), "a library's interpreter is not loaded"
        assert not _cached(lower, "etc/ld.so.cache"), "the upper layer's copy is the one the loader reads"
        assert stranger_src.requests == [], "another image's layer is not searched"
        assert (upper.stats.misses_waited, lower.stats.misses_waited) == (1, 0), "guesses are no misses"
        assert (upper.stats.fetched_ahead, lower.stats.fetched_ahead) == (2, 3)
        recorded = [json.loads(line)["path"] for line in
                    (tmp_path / "upper-access.jsonl").read_text().splitlines()]
        assert recorded == ["usr/bin/prog"], "guesses are not recorded as the workload's accesses"
        assert (tmp_path / "lower-access.jsonl").read_text() == ""
    finally:
        for tree in (upper, lower, stranger):
            tree.close()
    assert GROUPS.members("registry.test/app:1", upper) == [upper], "closed trees leave their group"


def test_following_can_be_switched_off(image: tuple[Blob, Blob, Blob], tmp_path: Path) -> None:
    upper_blob, lower_blob, _ = image
    off = LAZY.replace(fetch_elf_deps=False)
    upper, _ = _layer(upper_blob, tmp_path, "registry.test/app:2", off)
    lower, lower_src = _layer(lower_blob, tmp_path, "registry.test/app:2", off)
    pending = watch(upper, lower)
    try:
        lower_src.requests.clear()
        prog = lookup_path(upper, "usr/bin/prog")
        assert upper.read(prog, 0, 4096) == PROG[:4096]
        settle(pending, upper, lower)
        assert lower_src.requests == []
    finally:
        upper.close()
        lower.close()


def test_resolve_follows_symlinks_across_layers_and_stops_on_loops(
        image: tuple[Blob, Blob, Blob], tmp_path: Path) -> None:
    upper_blob, lower_blob, _ = image
    loop_blob = build_blob(tmp_path, _tar({}, {"a": "b", "b": "/a"}), name="loop")
    upper, _ = _layer(upper_blob, tmp_path, "")
    lower, _ = _layer(lower_blob, tmp_path, "")
    loop, _ = _layer(loop_blob, tmp_path, "")
    try:
        hit = hints.resolve([upper, lower], "/lib/x86_64-linux-gnu/../x86_64-linux-gnu/libfoo.so.1")
        assert hit is not None and hit[0] is lower and hit[1].path == "usr/lib/x86_64-linux-gnu/libfoo.so.1.2"
        assert hints.resolve([upper, lower], "/lib/x86_64-linux-gnu/missing.so") is None
        assert hints.resolve([upper, lower], "/usr/lib") is None, "a directory is not a file to fetch"
        assert hints.resolve([loop], "/a") is None
        assert hints.resolve([loop], "/a/x") is None
    finally:
        for tree in (upper, lower, loop):
            tree.close()


# -- warm connections --

def _heads(proxy: FaultProxy) -> int:
    return sum(1 for r in proxy.requests if r.method == "HEAD" and "/blobs/" in r.path)


def _count_warms(client: RegistryClient) -> list[bool]:
    """Whether each ``client.warm`` call started warming (its HEADs, from threads of their own, come
    later: a call that started none is known at once, not by waiting to see that none came)."""
    started: list[bool] = []
    real = client.warm

    def warm(*args: Any, **kwargs: Any) -> bool:
        result = real(*args, **kwargs)
        started.append(result)
        return result

    client.warm = warm      # type: ignore[method-assign]
    return started


def test_warm_opens_connections_once_per_client_and_interval(fault_proxy: FaultProxy,
                                                             unique_repo: str) -> None:
    client = RegistryClient(insecure=True, retry=RetryPolicy(attempts=1))
    started = _count_warms(client)
    ref = parse_reference(f"{fault_proxy.host}/{unique_repo}:1")
    a = client.blob_source(ref, "sha256:" + "a" * 64, 10)
    b = client.blob_source(ref, "sha256:" + "b" * 64, 10)
    try:
        RemoteBlob(a, LayerStats(a.digest), LAZY).warm(3)
        RemoteBlob(b, LayerStats(b.digest), LAZY).warm(3)      # the same client: its connections are shared
        assert started == [True, False]
        _wait(lambda: _heads(fault_proxy) >= 3, "three HEADs")
        assert _heads(fault_proxy) == 3
        a.warm(3, interval=remote.WARM_INTERVAL, if_idle=remote.REWARM_IDLE)   # soon after: still open
        assert started == [True, False, False]
        client.transport.last_used -= 60                 # a minute without requests: they are gone
        client._warmed -= 60
        b.warm(3, interval=remote.WARM_INTERVAL, if_idle=remote.REWARM_IDLE)
        assert started == [True, False, False, True]
        _wait(lambda: _heads(fault_proxy) >= 6, "three more HEADs")
        assert _heads(fault_proxy) == 6
    finally:
        client.close()


def test_a_miss_after_a_long_pause_warms_connections(tmp_path: Path, blob: Blob, fault_proxy: FaultProxy,
                                                     unique_repo: str) -> None:
    push_blob(f"http://127.0.0.1:{fault_proxy.upstream_port}", unique_repo, blob.path.read_bytes())
    client = RegistryClient(insecure=True, retry=RetryPolicy(attempts=1))
    src = client.blob_source(parse_reference(f"{fault_proxy.host}/{unique_repo}:5"), blob.digest,
                             blob.result.blob_size)
    tree = open_tree(blob, tmp_path, config=LAZY.replace(warm_connections=2), source=src)
    started = _count_warms(client)
    try:
        fault_proxy.clear()
        tree.read(lookup_path(tree, "etc/hello.txt"), 0, 100)
        assert started == [False], "the TOC was just read: the connection is open"
        client.transport.last_used -= 60                 # a container started a minute after its pull
        tree.read(lookup_path(tree, "usr/lib/one"), 0, 100)
        assert started == [False, True]
        _wait(lambda: _heads(fault_proxy) >= 2, "two connections warmed beside the miss")
        tree.read(lookup_path(tree, "bin/big"), 0, 100)
        assert started == [False, True, False], "not again while the connections are in use"
        assert _heads(fault_proxy) == 2
    finally:
        tree.close()
        client.close()


# -- small neighbours --

def _neighbour_blob(tmp: Path) -> Blob:
    files = {f"pkg/mod{i}.pyc": _random(1500, i) for i in range(8)}
    files["pkg/zbig.bin"] = _random(80_000, 99)          # over SMALL_FILE compressed: never a neighbour
    files["pkg/zzlast.pyc"] = _random(1500, 100)
    return build_blob(tmp, _tar(files), name="neighbours", chunk_size=1 << 20)


def _random(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def test_a_small_file_miss_brings_its_small_neighbours(tmp_path: Path) -> None:
    blob = _neighbour_blob(tmp_path)
    src = FaultySource(FileRangeSource(blob.path))
    tree = open_tree(blob, tmp_path / "root", config=LAZY.replace(neighbour_window=4000), source=src)
    tree.index(0)                                          # as the background thread does at mount
    src.requests.clear()
    ino = lookup_path(tree, "pkg/mod3.pyc")
    assert tree.read(ino, 0, 4096) == _random(1500, 3)
    assert len(src.requests) == 1
    _wait(lambda: _cached(tree, "pkg/mod2.pyc") and _cached(tree, "pkg/mod4.pyc"), "neighbours cached")
    assert not _cached(tree, "pkg/mod0.pyc") and not _cached(tree, "pkg/mod7.pyc"), "beyond the window"
    assert tree.read(lookup_path(tree, "pkg/mod4.pyc"), 0, 4096) == _random(1500, 4)
    assert len(src.requests) == 1, "the neighbour was read from the cache"
    before = tree.stats.bytes_fetched
    tree.read(lookup_path(tree, "pkg/zzlast.pyc"), 0, 4096)
    assert not _cached(tree, "pkg/zbig.bin"), "a big file is nobody's neighbour"
    assert tree.stats.bytes_fetched - before < 4000
    tree.close()


def test_no_neighbours_before_the_index_or_when_switched_off(tmp_path: Path) -> None:
    blob = _neighbour_blob(tmp_path)
    cases = ((LAZY.replace(neighbour_window=4000), False), (LAZY.replace(neighbour_window=0), True))
    for config, index in cases:
        tree = open_tree(blob, tmp_path / f"root-{index}", config=config)
        if index:
            tree.index(0)
        tree.read(lookup_path(tree, "pkg/mod3.pyc"), 0, 4096)
        idle(tree)                          # a neighbour would be in the read's own request
        assert not _cached(tree, "pkg/mod2.pyc") and not _cached(tree, "pkg/mod4.pyc")
        tree.close()


# -- scripts and programs named before they run --

SH = make_elf(interp="/lib64/ld-linux-test.so.2", needed=["libfoo.so.1"], pad=3000)


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory, image: tuple[Blob, Blob, Blob]) -> Blob:
    tmp = tmp_path_factory.mktemp("scripts")
    return build_blob(tmp, _tar({"usr/local/bin/entry.sh": b"#!/bin/sh -e\nexec prog\n",
                                 "usr/local/bin/tool.py": b"#!/usr/bin/env -S python3 -u\nprint(1)\n",
                                 "usr/bin/sh": SH, "usr/bin/env": b"e" * 3000,
                                 "usr/bin/python3": b"python" * 1000},
                                {"bin": "usr/bin"}), name="scripts")


def test_script_programs_reads_the_interpreter_line() -> None:
    assert hints.script_programs(b"#!/bin/sh -e\necho") == ["/bin/sh"]
    assert hints.script_programs(b"#! /usr/bin/env -S A=1 python3 -u\n") == ["/usr/bin/env", "python3"]
    assert hints.script_programs(b"#!sh\n") == [] and hints.script_programs(b"\x7fELF") == []
    assert hints.script_programs(b"#!\n") == []


def test_a_script_read_brings_its_interpreter(image: tuple[Blob, Blob, Blob], scripts: Blob,
                                              tmp_path: Path) -> None:
    _, lower_blob, _ = image
    top, _ = _layer(scripts, tmp_path, "registry.test/app:3")
    lower, _ = _layer(lower_blob, tmp_path, "registry.test/app:3")
    try:
        assert top.read(lookup_path(top, "usr/local/bin/entry.sh"), 0, 4096).startswith(b"#!/bin/sh")
        _wait(lambda: _cached(top, "usr/bin/sh"), "the interpreter fetched ahead")
        _wait(lambda: _cached(lower, "usr/lib/x86_64-linux-gnu/libfoo.so.1.2"), "and its library")
        top.read(lookup_path(top, "usr/local/bin/tool.py"), 0, 4096)
        _wait(lambda: _cached(top, "usr/bin/env") and _cached(top, "usr/bin/python3"), "env and python3")
    finally:
        top.close()
        lower.close()


def test_expect_program_fetches_a_command_before_it_runs(image: tuple[Blob, Blob, Blob],
                                                         tmp_path: Path) -> None:
    upper_blob, lower_blob, _ = image
    upper, upper_src = _layer(upper_blob, tmp_path, "registry.test/app:4")
    lower, _ = _layer(lower_blob, tmp_path, "registry.test/app:4")
    pending = watch(upper, lower)
    try:
        upper_src.requests.clear()
        assert not hints.expect_program([upper, lower], "missing", "/usr/bin:/bin")
        assert not hints.expect_program([upper, lower], "prog", "/opt/bin")
        settle(pending, upper, lower)
        assert upper_src.requests == []
        assert hints.expect_program([upper, lower], "prog", "relative:/usr/bin")
        _wait(lambda: _cached(upper, "usr/bin/prog"), "the program")
        _wait(lambda: _cached(lower, "usr/lib/x86_64-linux-gnu/libbar.so"), "what it loads")
        assert _cached(lower, "usr/lib64/ld-linux-test.so.2"), "its interpreter"
        assert hints.expect_program([upper, lower], "/usr/bin/prog")
        assert GROUPS.trees_of("registry.test/app:4") == [upper, lower]
        assert GROUPS.trees_of("registry.test/none:1") == []
    finally:
        upper.close()
        lower.close()


def test_a_large_fetch_is_decoded_in_parallel_and_a_bad_unit_refetched(tmp_path: Path) -> None:
    data = _random(600_000, 7)
    blob = build_blob(tmp_path, _tar({"data.bin": data}), name="wide")   # 4 KiB chunks: ~150 units
    src = FaultySource(FileRangeSource(blob.path))
    tree = open_tree(blob, tmp_path / "root", config=LAZY, source=src)
    ino = lookup_path(tree, "data.bin")
    fc = tree._chunks_of(ino)
    assert fc is not None and fc.compressed > 256 << 10 and len(fc.chunks) > 100
    src.requests.clear()
    src.corrupt = 1                  # one byte of the one response flipped: one unit fails, once
    got = tree.fetcher.get(fc.chunks, deadline=time.monotonic() + 5)   # one group: ~150 units
    assert b"".join(got[c.digest] for c in fc.chunks) == data
    assert _cached(tree, "data.bin")
    assert tree.stats.verify_failures == 1 and tree.stats.chunks_fetched == len(fc.chunks)
    assert len(src.requests) == 2, "the whole file, then the one bad unit again"
    assert b"".join(tree.read(ino, off, 1 << 17) for off in range(0, len(data), 1 << 17)) == data
    tree.close()


# -- the prefetch in pieces --

def test_pieces_cut_between_units_in_blob_order() -> None:
    @dataclass
    class C:
        offset: int
        end: int
        digest: str

    chunks = [C(300, 400, "d"), C(0, 100, "a"), C(100, 250, "b1"), C(100, 250, "b2"), C(250, 300, "c")]
    got = [[c.digest for c in piece] for piece in background.pieces(chunks, 200)]
    assert got == [["a"], ["b1", "b2", "c"], ["d"]]
    assert [[c.digest for c in p] for p in background.pieces(chunks, 1000)] == [["a", "b1", "b2", "c", "d"]]
    assert background.pieces([], 10) == []


def test_prefetch_goes_in_pieces_each_readable_when_it_arrives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background, "PREFETCH_PIECE", 8 << 10)
    blob = build_blob(tmp_path, prioritized_files=["etc/hello.txt", "usr/lib/one", "bin/big"])
    src = FaultySource(FileRangeSource(blob.path))
    tree = open_tree(blob, tmp_path / "root", config=LAZY.replace(prefetch=True), source=src)
    src.requests.clear()
    tree.start()
    assert tree.wait_prefetch(10) and tree.stats.prefetch_state == "done"
    spans = sorted(r[0] for r in src.requests)
    assert len(spans) >= 3 and all(len(r) == 1 for r in src.requests), "one range per piece"
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans)), "pieces tile the range"
    requests = len(src.requests)
    for name in ("etc/hello.txt", "usr/lib/one", "bin/big"):
        assert read_all(tree, lookup_path(tree, name)) == FILES[name]
    assert len(src.requests) == requests, "prefetched files needed no request"
    tree.close()


def test_resolve_gives_up_on_hostile_depth(tmp_path: Path) -> None:
    deep = "/".join(["d"] * 300)
    # a link target of 2000 components, within PATH_MAX (longer ones the layer's entry rules refuse)
    blob = build_blob(tmp_path, _tar({f"{deep}/f": b"x"}, {"long": "/" + "/".join(["."] * 2000) + "/long"}),
                      name="deep")
    tree, _ = _layer(blob, tmp_path, "")
    walks = 0
    walk = hints._walk

    def counting_walk(*args: Any) -> Any:
        nonlocal walks
        walks += 1
        return walk(*args)

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(hints, "_walk", counting_walk)
            assert hints.resolve([tree], "/long") is None
            long_walks, walks = walks, 0
            assert hints.resolve([tree], f"/{deep}/f") is None, "deeper than any real library path"
            deep_walks = walks
        assert long_walks <= hints.MAX_STEPS and deep_walks <= hints.MAX_STEPS // 8 + 1, "bounded work"
        assert hints.resolve([tree], "/" + "/".join(["d"] * 20)) is None, "a directory"
    finally:
        tree.close()


def test_a_neighbour_scan_looks_at_no_more_than_max_files(tmp_path: Path) -> None:
    """Many tiny files packed around a miss (an image author can pack thousands in a few kB): the scan for
    neighbours stops after ``readahead.MAX_FILES`` files, like the read-ahead's (one scan for both)."""
    from lazypull.fs.layer import readahead

    files = {f"many/f{i:04}": i.to_bytes(2, "big") for i in range(3 * readahead.MAX_FILES)}   # all distinct
    blob = build_blob(tmp_path, _tar(files), name="many", chunk_size=1 << 20)
    tree = open_tree(blob, tmp_path / "root", config=LAZY.replace(neighbour_window=1 << 20))
    tree.index(0)
    first = "many/f0000"
    assert tree.read(lookup_path(tree, first), 0, 10) == files[first]

    def cached() -> int:
        return sum(_cached(tree, name) for name in files)

    idle(tree)      # the neighbours were claimed before the read returned: their fetches are done
    fetched = cached()
    assert readahead.MAX_FILES - 1 <= fetched <= readahead.MAX_FILES, f"{fetched} files fetched for one miss"
    tree.close()
