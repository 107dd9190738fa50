"""decode_chunks: chunks sharing one member (min-chunk-size) decode once and equal decode_chunk's results."""

from __future__ import annotations

import dataclasses
import io
import tarfile
from collections import defaultdict
from typing import Any

import pytest

from lazypull.format import (
    BuildOptions,
    BytesSource,
    Chunk,
    DigestMismatchError,
    FormatError,
    build,
    decode_chunk,
    decode_chunks,
    open_layer,
)


def _blob(compression: str) -> tuple[bytes, dict[tuple[int, int], list[Chunk]]]:
    """A layer of small files packed into shared members; its chunks grouped by compressed range."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(12):
            data = (f"file {i} ".encode() * (50 + 37 * i))[: 300 + 101 * i]
            info = tarfile.TarInfo(f"d/f{i:02d}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    build(io.BytesIO(raw.getvalue()), out,
          BuildOptions(compression=compression, min_chunk_size=64 << 10))  # type: ignore[arg-type]
    blob = out.getvalue()
    reader = open_layer(BytesSource(blob))
    units: dict[tuple[int, int], list[Chunk]] = defaultdict(list)
    for entry in reader.entries():
        if entry.type == "reg" and entry.size:
            for chunk in reader.chunks(entry):
                units[(chunk.offset, chunk.end)].append(chunk)
    return blob, units


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_shared_member_decodes_like_one_chunk_at_a_time(compression: str) -> None:
    blob, units = _blob(compression)
    shared = [chunks for chunks in units.values() if len(chunks) > 1]
    assert shared, "min_chunk_size packed several files into one member"
    for (start, end), chunks in units.items():
        assert decode_chunks(chunks, blob[start:end]) == [decode_chunk(c, blob[start:end]) for c in chunks]


def test_one_wrong_digest_fails_only_that_chunk() -> None:
    blob, units = _blob("gzip")
    (start, end), chunks = next((u, c) for u, c in units.items() if len(c) > 2)
    bad = dataclasses.replace(chunks[1], digest="sha256:" + "0" * 64)
    results = decode_chunks([chunks[0], bad, chunks[2]], blob[start:end])
    assert results[0] == decode_chunk(chunks[0], blob[start:end])
    assert isinstance(results[1], DigestMismatchError) and repr(bad.name) in str(results[1])
    assert results[2] == decode_chunk(chunks[2], blob[start:end])


def test_truncated_member_gives_each_chunk_its_own_outcome() -> None:
    blob, units = _blob("gzip")
    (start, end), chunks = next((u, c) for u, c in units.items() if len(c) > 2)
    cut = blob[start : start + (end - start) // 2]
    results = decode_chunks(chunks, cut)
    assert isinstance(results[-1], FormatError), "the last file lies beyond the cut"
    for chunk, result in zip(chunks, results, strict=True):
        try:
            alone: bytes | str = decode_chunk(chunk, cut)
        except FormatError as err:
            alone = str(err)
        assert (str(result) if isinstance(result, FormatError) else result) == alone


def test_shared_member_is_decompressed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import lazypull.format.reader as reader_module

    blob, units = _blob("zstd")
    (start, end), chunks = max(units.items(), key=lambda item: len(item[1]))
    calls: list[int] = []
    real = reader_module.decompressor  # type: ignore[attr-defined]

    def counting(name: str) -> Any:
        calls.append(1)
        return real(name)

    monkeypatch.setattr(reader_module, "decompressor", counting)
    results = decode_chunks(chunks, blob[start:end])
    assert all(isinstance(r, bytes) for r in results) and len(chunks) > 2
    assert len(calls) == 1
