"""Hostile TOCs cost bounded CPU and memory (issue 9, findings 4, 5, 6): a hole of 2**50 zero bytes, a
chunk that inflates far beyond what a chunk may be, millions of entries. Each is refused with one line
naming the entry (or the layer), before any work proportional to what the TOC claims."""

from __future__ import annotations

import gzip
import hashlib
import json
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest

from lazypull.errors import MountError
from lazypull.format import FileSource, FormatError, open_layer
from lazypull.format.entryrules import UnsafeEntryError
from lazypull.format.reader import DEFAULT_MAX_ENTRIES, MAX_CHUNK_SIZE, MAX_COMPRESSED_RANGE, zeros_digest
from lazypull.fs.config import FsConfig
from lazypull.fs.layer.inodes import InodeTable
from lazypull.fs.layer.toc import open_toc
from lazypull.fs.remote import FileRangeSource, RecordingSource, RemoteBlob
from lazypull.fs.stats import LayerStats
from tests.security.tockit import Layer, toc_blob

UNCOMPRESSED_SIZE = "io.containers.estargz.uncompressed-size"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _open(tmp: Path, layer: Layer) -> Any:
    """The layer's TOC, opened as the mount server opens it."""
    remote = RemoteBlob(FileRangeSource(layer.path), LayerStats(layer.digest), FsConfig())
    return open_toc(layer.digest, layer.annotations, RecordingSource(remote, tmp / "toc.record"), None)


def _entry(reader: Any, name: str) -> Any:
    entry = reader.lookup(name)
    assert entry is not None, name
    return entry


def _hole(size: int) -> dict[str, Any]:
    return {"name": "hole", "type": "reg", "size": size, "offset": 0, "chunkType": "zeros"}


def test_huge_hole_is_refused_before_hashing(tmp_path: Path) -> None:
    """Finding 4: hashing 2**50 zero bytes would take days; the chunk is over the size limit."""
    layer = toc_blob(tmp_path, [_hole(2 ** 50)])
    reader = open_layer(FileSource(layer.path))
    with pytest.raises(FormatError, match=r"'hole': chunk at 0 of 1125899906842624 bytes .* exceeds the "
                                          r"chunk size limit"):
        reader.chunks(_entry(reader, "hole"))
    with pytest.raises(FormatError, match="exceeds the chunk size limit"):
        zeros_digest(MAX_CHUNK_SIZE + 1)
    sane = toc_blob(tmp_path, [_hole(3 << 20)], name="sane")     # holes of a sane size still read as zeros
    reader = open_layer(FileSource(sane.path))
    (chunk,) = reader.chunks(_entry(reader, "hole"))
    assert chunk.digest == _sha(bytes(3 << 20)) == zeros_digest(3 << 20)


def test_file_bigger_than_the_declared_layer_is_refused_at_mount(tmp_path: Path) -> None:
    """A file bigger than the layer's uncompressed size cannot exist: the mount refuses the layer (and the
    mount server falls back to a full download), naming the layer and the entry."""
    layer = toc_blob(tmp_path, [_hole(8192)], annotations={UNCOMPRESSED_SIZE: "4096"})
    with pytest.raises(MountError) as err:
        _open(tmp_path, layer)
    text = str(err.value)
    assert layer.digest in text and "'hole'" in text and "uncompressed size 4096" in text
    assert "\n" not in text


@pytest.mark.parametrize("entries", [
    [_hole(2 ** 50)],
    [{"name": "f", "type": "reg", "size": 2 ** 40, "offset": 0, "chunkSize": 1024, "chunkDigest": "x"},
     {"name": "f", "type": "chunk", "offset": 0, "chunkOffset": 1024, "chunkDigest": "x"}],
], ids=["one-chunk", "last-chunk"])
def test_oversized_chunks_are_refused_at_mount(tmp_path: Path, entries: list[dict[str, Any]]) -> None:
    """When the tree is built, so that the mount server falls back to a full download instead of
    mounting a layer whose reads would fail."""
    layer = toc_blob(tmp_path, entries)
    with pytest.raises(MountError) as err:
        _open(tmp_path, layer)
    text = str(err.value)
    assert layer.digest in text and "exceeds the chunk size limit" in text and "\n" not in text


def test_inflation_bomb_is_refused_before_decompressing(tmp_path: Path) -> None:
    """Finding 5: 65 KiB of gzip that inflates to 65 MiB, declared as one chunk: refused from the TOC, so
    nothing is fetched or inflated (the old reader inflated it whole, then hashed it)."""
    big = MAX_CHUNK_SIZE + (1 << 20)
    member = gzip.compress(bytes(big), 9)
    layer = toc_blob(tmp_path, [{"name": "bomb", "type": "reg", "size": big, "offset": 0,
                                 "digest": _sha(bytes(big))}], payload=member)
    reader = open_layer(FileSource(layer.path))
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=r"'bomb': chunk at 0 .* exceeds the chunk size limit"):
            reader.read_file(_entry(reader, "bomb"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    # below the limit, decoding stops where the declared chunk ends: 1 KiB out of a 48 MiB member
    member = gzip.compress(bytes(48 << 20), 9)
    small = toc_blob(tmp_path, [{"name": "f", "type": "reg", "size": 1024, "offset": 0,
                                 "chunkDigest": _sha(b"x" * 1024)}], payload=member, name="small")
    reader = open_layer(FileSource(small.path))
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="does not match chunkDigest"):
            reader.read_file(_entry(reader, "f"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_huge_compressed_range_is_refused(tmp_path: Path) -> None:
    """A 10-byte file whose compressed range runs on for 300 MiB (the TOC is that far): the range would be
    fetched whole into memory; refused from the TOC instead (when read, and when a mount builds the tree)."""
    layer = toc_blob(tmp_path, [{"name": "f", "type": "reg", "size": 10, "offset": 0,
                                 "chunkDigest": _sha(b"0123456789")}],
                     payload=gzip.compress(b"0123456789"), gap=MAX_COMPRESSED_RANGE + (44 << 20))
    reader = open_layer(FileSource(layer.path))
    with pytest.raises(FormatError, match=r"'f': chunk at 0 has a compressed range of \d+ bytes, over the "
                                          r"limit"):
        reader.chunks(_entry(reader, "f"))
    with pytest.raises(MountError, match=r"TOC entry 0 \('f'\): compressed range \[0, \d+\) is over the "
                                         r"limit"):
        _open(tmp_path, layer)


def test_huge_inner_offset_is_refused(tmp_path: Path) -> None:
    member = zlib.compress(b"")  # never read
    layer = toc_blob(tmp_path, [{"name": "f", "type": "reg", "size": 10, "offset": 0,
                                 "innerOffset": 2 ** 40, "chunkDigest": _sha(b"0" * 10)}],
                     payload=gzip.compress(member))
    reader = open_layer(FileSource(layer.path))
    with pytest.raises(FormatError, match=r"inner offset 1099511627776\) exceeds the chunk size limit"):
        reader.chunks(_entry(reader, "f"))


def _many(n: int) -> list[dict[str, Any]]:
    return [{"name": f"f{i}", "type": "reg"} for i in range(n)]


@pytest.mark.parametrize("spelling", ["entries", "Entries"])
def test_too_many_entries_are_refused_before_decoding(tmp_path: Path, spelling: str) -> None:
    """Finding 6: entries are counted (any spelling of the key) before the TOC is decoded."""
    toc = json.dumps({"version": 1, spelling: _many(1001)}).encode()
    layer = toc_blob(tmp_path, toc)
    with pytest.raises(FormatError, match="TOC has 1001 entries, more than the limit of 1000 per layer"):
        open_layer(FileSource(layer.path), max_entries=1000)
    assert len(list(open_layer(FileSource(layer.path), max_entries=1001).entries())) == 1002
    # braces in names are no entries: a TOC at the limit is read
    braces = toc_blob(tmp_path, [{"name": "{" * 50 + f"{i}", "type": "reg"} for i in range(100)], name="b")
    assert len(list(open_layer(FileSource(braces.path), max_entries=100).entries())) == 101


def test_json_only_python_reads_is_bounded_too(tmp_path: Path) -> None:
    """A byte-order mark sends the TOC to the general (Python) parser: the entries are bounded there too."""
    toc = b"\xef\xbb\xbf" + json.dumps({"version": 1, "entries": _many(1001)}).encode()
    layer = toc_blob(tmp_path, toc)
    with pytest.raises(FormatError, match="more than the limit of 1000 per layer"):
        open_layer(FileSource(layer.path), max_entries=1000)


def test_a_layer_over_the_default_limit_is_refused_at_mount(tmp_path: Path) -> None:
    """The mount server's limit: a clear error naming the layer (the mount server then falls back)."""
    entry = b'{"name":"a","type":"dir"}'
    toc = b'{"version":1,"entries":[' + b",".join([entry] * (DEFAULT_MAX_ENTRIES + 1)) + b"]}"
    layer = toc_blob(tmp_path, toc)
    with pytest.raises(MountError) as err:
        _open(tmp_path, layer)
    text = str(err.value)
    assert layer.digest in text and f"more than the limit of {DEFAULT_MAX_ENTRIES} per layer" in text


def test_nul_in_a_toc_name_is_refused_at_mount(tmp_path: Path) -> None:
    layer = toc_blob(tmp_path, [{"name": "etc/pass\u0000wd", "type": "reg"}])
    with pytest.raises(MountError, match=r"TOC entry 0 \('etc/pass\\x00wd'\): name contains a NUL byte"):
        _open(tmp_path, layer)
    # Go's reader rules (``lazypull layer inspect``, the oracle tests) are unchanged without ``strict``
    assert open_layer(FileSource(layer.path)).lookup("etc/pass\x00wd") is not None


def test_device_numbers_out_of_range_are_refused_at_mount(tmp_path: Path) -> None:
    layer = toc_blob(tmp_path, [{"name": "dev/x", "type": "char", "devMajor": 2 ** 40, "devMinor": 1}])
    with pytest.raises(MountError, match="device number 1099511627776:1 is out of range"):
        _open(tmp_path, layer)


def test_strict_errors_are_unsafe_entry_errors(tmp_path: Path) -> None:
    layer = toc_blob(tmp_path, [{"name": "../x", "type": "reg"}])
    with pytest.raises(UnsafeEntryError, match=r"TOC entry 0 \('../x'\): name has a '..' component"):
        open_layer(FileSource(layer.path), strict=True)
    assert "x" in open_layer(FileSource(layer.path)).children("")    # Go's rules: folded into the layer
    with pytest.raises(ValueError, match="strict reader"):       # which a mount never shows
        InodeTable(open_layer(FileSource(layer.path)))
