"""containers/storage zstd:chunked (64-byte footer, endOffset, zero-hole chunks, manifest checksum)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import zstandard

from lazypull.format import BytesSource, DigestMismatchError, open_layer
from lazypull.format.footer import CS_FOOTER_MAGIC, skippable_frame


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _cs_blob(*, zero_digest: bool) -> tuple[bytes, bytes, str]:
    """A CS-style blob: one header frame, one frame per chunk of holes.bin (with a hole), a tail frame."""
    zc = zstandard.ZstdCompressor(level=3, write_checksum=True)
    chunks = [b"a" * 100, bytes(3000), b"b" * 100]
    blob = zc.compress(b"H" * 512)
    offsets = []
    for c in chunks:
        offsets.append(len(blob))
        blob += zc.compress(c)
    end = len(blob)
    blob += zc.compress(bytes(1024))
    content = b"".join(chunks)
    entries: list[dict[str, object]] = [{
        "type": "reg", "name": "holes.bin", "mode": 420, "size": len(content),
        "modtime": "2021-01-01T00:00:00.5+01:00", "digest": _sha(content), "offset": offsets[0],
        "endOffset": end, "chunkSize": 100, "chunkDigest": _sha(chunks[0]),
    }]
    pos = 100
    for i, c in enumerate(chunks[1:], start=1):
        e: dict[str, object] = {"type": "chunk", "name": "holes.bin", "offset": offsets[i],
                                "chunkSize": len(c), "chunkOffset": pos}
        if i == 1:
            e["chunkType"] = "zeros"
            if zero_digest:
                e["chunkDigest"] = _sha(c)
        else:
            e["chunkDigest"] = _sha(c)
        entries.append(e)
        pos += len(c)
    toc = json.dumps({"version": 1, "entries": entries, "tarSplitDigest": "sha256:" + "0" * 64},
                     separators=(",", ":")).encode()
    ctoc = zc.compress(toc)
    toc_off = len(blob) + 8
    blob += skippable_frame(ctoc)
    footer = struct.pack("<QQQQQQQ", toc_off, len(ctoc), len(toc), 1, 0, 0, 0) + CS_FOOTER_MAGIC
    blob += skippable_frame(footer)
    return blob, content, _sha(ctoc)


@pytest.mark.parametrize("zero_digest", [True, False])
def test_cs_chunks_holes_and_end_offsets(zero_digest: bool) -> None:
    blob, content, checksum = _cs_blob(zero_digest=zero_digest)
    reader = open_layer(BytesSource(blob), toc_digest=checksum)
    assert reader.footer_kind == "zstd-64" and reader.verified_by == "manifest"
    assert reader.toc.schema == "cs"
    entry = reader.lookup("holes.bin")
    assert entry is not None and entry.modtime is not None
    assert entry.modtime.isoformat() == "2020-12-31T23:00:00.500000+00:00"
    chunks = reader.chunks(entry)
    assert [(c.chunk_offset, c.chunk_size) for c in chunks] == [(0, 100), (100, 3000), (3100, 100)]
    assert chunks[0].end == chunks[1].offset and chunks[1].end == chunks[2].offset
    assert chunks[2].end == entry.end_offset
    assert reader.read_file(entry) == content
    reader.verify()


def test_cs_wrong_checksum() -> None:
    blob, _, _ = _cs_blob(zero_digest=True)
    with pytest.raises(DigestMismatchError, match="compressed TOC digest"):
        open_layer(BytesSource(blob), toc_digest="sha256:" + "2" * 64)


def test_manifest_position_parsing() -> None:
    from lazypull.format import FormatError
    from lazypull.format.layerkind import parse_manifest_position

    assert parse_manifest_position("258:335:771:1") == (258, 335, 771, 1)
    for bad in ("1:2:3", "a:b:c:d", "1:2:3:-1", ""):
        with pytest.raises(FormatError):
            parse_manifest_position(bad)


def test_layer_spec_opens_either_annotation_prefix(vectors: Path) -> None:
    from lazypull.format import FileSource
    from lazypull.format.layerkind import LayerSpec

    for build_json, blob in (("tiny.zstd.build.json", "tiny.zstd"), ("tiny.cs.build.json", "tiny.cs.zstd")):
        meta = json.loads((vectors / build_json).read_text())
        ann = dict(meta.get("annotations") or meta["metadata"])
        if "tocDigest" in meta:
            ann["containerd.io/snapshot/stargz/toc.digest"] = meta["tocDigest"]
        spec = LayerSpec.from_descriptor("sha256:" + "0" * 64, None, "", ann)
        assert spec.kind == "zstdchunked"
        digest = spec.toc_digest or spec.manifest_checksum
        reader = open_layer(FileSource(vectors / blob), toc_digest=digest,
                            toc_offset_hint=spec.toc_offset_hint)
        assert reader.verified_by == ("toc" if "tocDigest" in meta else "manifest")
        assert spec.toc_offset_hint == reader.footer.toc_offset
        assert spec.toc_position is not None and spec.toc_position[0] == reader.footer.toc_offset
