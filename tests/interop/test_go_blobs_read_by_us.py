"""Blobs written by the Go reference (Debian estargz 0.12 `Build`, and the shipped vectors) read by our
reader: same TOC digest, same tree, same contents and chunking as the Go reader shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lazypull.format import FormatError, LayerReader
from tests.helpers.oracle import Oracle, OracleError
from tests.interop import compare
from tests.interop.tarcases import TarCase

BUILDS: dict[str, tuple[str, dict[str, Any]]] = {
    "gzip-defaults": ("edge", {}),
    "gzip-chunk512": ("edge", {"chunk_size": 512}),
    "gzip-level1-big-file": ("bigchunk", {"level": 1}),
    "gzip-prioritized": ("edge", {"prioritized": ["etc/hard", "home/u3", "missing"], "chunk_size": 3000}),
    "gzip-dot-names": ("dot", {}),
    "zstd-defaults": ("edge", {"zstdchunked": True}),
    "zstd-chunk2048-prioritized": ("many", {"zstdchunked": True, "chunk_size": 2048, "prioritized": ["d1/"]}),
    "zstd-level19": ("dot", {"zstdchunked": True, "level": 19}),
}


@pytest.mark.parametrize("name", list(BUILDS))
def test_go_built_blob_read_by_us(
    name: str, oracle: Oracle, tar_cases: dict[str, TarCase], tmp_path: Path
) -> None:
    tar_name, kwargs = BUILDS[name]
    tar = tar_cases[tar_name]
    blob = tmp_path / "go.blob"
    go = oracle.build(tar.path, blob, **kwargs)

    with compare.opened(blob, go.toc_digest) as reader:
        _check_go_built(name, kwargs, reader, oracle, blob, go.toc_digest, tar)


def _check_go_built(
    name: str, kwargs: dict[str, Any], reader: LayerReader, oracle: Oracle, blob: Path, toc: str, tar: TarCase
) -> None:
    assert reader.toc_digest == toc
    assert reader.compression == ("zstd" if kwargs.get("zstdchunked") else "gzip")
    assert reader.footer_kind == ("zstd-40" if kwargs.get("zstdchunked") else "estargz")
    reader.verify()

    ours = compare.our_tree(reader)
    problems = compare.diff_trees(compare.go_tree(oracle.verify(blob, toc)["entries"]), ours)
    assert not problems, f"{name}: Go reader vs our reader on a Go-built blob:\n" + "\n".join(problems)
    problems = compare.diff_tree_vs_tar(ours, tar.files)
    assert not problems, f"{name}: our reader vs the source tar:\n" + "\n".join(problems)

    prefetch = reader.prefetch_range()
    if kwargs.get("prioritized"):
        landmark = reader.lookup(".prefetch.landmark")
        assert landmark is not None and prefetch == (0, landmark.offset), f"prefetch range {prefetch}"
    else:
        assert prefetch is None, f"{name}: .no.prefetch.landmark blob gave prefetch range {prefetch}"


def test_go_built_blob_wrong_toc_digest_refused_by_us(
    oracle: Oracle, tar_cases: dict[str, TarCase], tmp_path: Path
) -> None:
    blob = tmp_path / "go.blob"
    go = oracle.build(tar_cases["many"].path, blob)
    wrong = go.toc_digest[:-4] + ("0000" if not go.toc_digest.endswith("0000") else "1111")
    with pytest.raises(FormatError, match="TOC"), compare.opened(blob, wrong):
        pass


def test_go_built_blob_with_flipped_chunk_refused_by_both(
    oracle: Oracle, tar_cases: dict[str, TarCase], tmp_path: Path
) -> None:
    """Change one stored byte of a file's content (recompressing its member so it still decompresses):
    both readers must refuse it with the TOC still valid."""
    import gzip

    blob = tmp_path / "go.blob"
    go = oracle.build(tar_cases["edge"].path, blob, chunk_size=4096)
    with compare.opened(blob, go.toc_digest) as reader:
        entry = reader.lookup("etc/hello.txt")
        assert entry is not None
        (chunk,) = reader.chunks(entry)
    data = blob.read_bytes()
    member = gzip.decompress(data[chunk.offset : chunk.end])
    i = chunk.inner_offset
    tampered = member[:i] + b"J" + member[i + 1 :]
    bad = tmp_path / "bad.blob"
    new_member = _same_size_member(tampered, chunk.end - chunk.offset)
    bad.write_bytes(data[: chunk.offset] + new_member + data[chunk.end :])
    with pytest.raises(Exception, match="invalid chunk"):
        oracle.verify(bad, go.toc_digest)
    with (
        pytest.raises(FormatError, match=r"etc/hello\.txt"),
        compare.opened(bad, go.toc_digest) as bad_reader,
    ):
        bad_reader.verify()


def _same_size_member(payload: bytes, size: int) -> bytes:
    """A gzip member of `payload` of exactly `size` bytes: the smallest deflate stream zlib finds,
    padded with an FCOMMENT header field, so every later offset in the blob stays valid."""
    import struct
    import zlib

    bodies = []
    for level in range(9, 0, -1):
        for strategy in (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_RLE):
            comp = zlib.compressobj(level, zlib.DEFLATED, -15, 9, strategy)
            bodies.append(comp.compress(payload) + comp.flush())
    body = min(bodies, key=len)
    trailer = struct.pack("<II", zlib.crc32(payload), len(payload) & 0xFFFFFFFF)
    pad = size - (10 + len(body) + len(trailer))
    if pad < 1:
        raise AssertionError(f"cannot fit a tampered member into {size} bytes (deflate gives {len(body)})")
    header = b"\x1f\x8b\x08\x10" + b"\0\0\0\0" + b"\x00\xff"
    return header + b"x" * (pad - 1) + b"\0" + body + trailer


VECTORS = ["tiny.esgz", "tiny-legacy.stargz", "small.esgz", "small-prio.esgz", "tiny.zstd"]


@pytest.mark.parametrize("name", VECTORS)
def test_vectors_same_tree_as_go(name: str, oracle: Oracle, vectors: Path) -> None:
    """The shipped Go-made vectors that 0.12 reads: our tree equals the Go reader's."""
    blob = vectors / name
    go = oracle.verify(blob)
    with compare.opened(blob, go["tocDigest"]) as reader:
        problems = compare.diff_trees(compare.go_tree(go["entries"]), compare.our_tree(reader))
    assert not problems, f"{name}: Go reader vs our reader:\n" + "\n".join(problems)


@pytest.mark.parametrize("damage", ["truncated-footer", "not-a-blob"])
def test_damaged_blob_refused_by_both(
    damage: str, oracle: Oracle, tar_cases: dict[str, TarCase], tmp_path: Path
) -> None:
    """A blob without a usable footer: the Go reader and ours both refuse to open it."""
    blob = tmp_path / "go.blob"
    oracle.build(tar_cases["many"].path, blob)
    data = blob.read_bytes()
    bad = tmp_path / "bad.blob"
    bad.write_bytes(data[:-10] if damage == "truncated-footer" else b"\x00" * 4096)
    with pytest.raises(OracleError):
        oracle.verify(bad)
    with pytest.raises(FormatError), compare.opened(bad):
        pass
