"""Whole layers are decompressed one way (``format.compression.decompressing``) by all three that do it:
DiffIDs (image), extraction (runtime) and the writer's input. They read the same bytes from multi-member
gzip and multi-frame zstd with a skippable frame, and each names a damaged layer in its own one-line error
(a corrupt deflate stream escaped as ISA-L's or zlib-ng's own exception from two of them)."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import struct
import tarfile
from pathlib import Path

import pytest
import zstandard

from lazypull.format import BuildOptions, FormatError, build
from lazypull.image.errors import ImageError
from lazypull.image.partial import diff_id_of
from lazypull.runtime.extract import LayerExtractError, extract_layer

FILES = {"etc/a.txt": b"hello world " * 40_000, "etc/b.txt": b"more " * 30_000}


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in FILES.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TAR = _tar()
HALF = len(TAR) // 2
SKIPPABLE = struct.pack("<II", 0x184D2A50, 8) + b"metadata"
BLOBS = {
    "gzip-members": gzip.compress(TAR[:HALF]) + gzip.compress(TAR[HALF:]),
    "zstd-frames": (zstandard.ZstdCompressor().compress(TAR[:HALF]) + SKIPPABLE
                    + zstandard.ZstdCompressor().compress(TAR[HALF:])),
}


def _corrupt(blob: bytes) -> bytes:
    damaged = bytearray(blob)
    for i in range(30, 60):         # inside the first member's deflate data
        damaged[i] ^= 0x55
    return bytes(damaged)


@pytest.mark.parametrize("kind", sorted(BLOBS))
def test_every_reader_reads_the_same_tar(kind: str, tmp_path: Path) -> None:
    blob = BLOBS[kind]
    compression = kind.split("-")[0]
    assert diff_id_of(io.BytesIO(blob), compression, "layer") == ("sha256:" + hashlib.sha256(TAR).hexdigest(),
                                                                   len(TAR))
    (tmp_path / "blob").write_bytes(blob)
    extract_layer(tmp_path / "blob", tmp_path / "out")
    assert {name: (tmp_path / "out" / name).read_bytes() for name in FILES} == FILES
    out = io.BytesIO()
    build(io.BytesIO(blob), out, BuildOptions())
    out.seek(0)
    with tarfile.open(fileobj=gzip.GzipFile(fileobj=out), mode="r|") as tar:   # the eStargz re-encoding
        converted = {m.name: tar.extractfile(m).read() for m in tar if m.name in FILES}  # type: ignore[union-attr]
    assert converted == FILES


def test_a_corrupt_layer_is_each_readers_own_error(tmp_path: Path) -> None:
    damaged = _corrupt(gzip.compress(TAR))
    with pytest.raises(ImageError, match=r"^layer sha256:x: cannot decompress: .*deflate"):
        diff_id_of(io.BytesIO(damaged), "gzip", "layer sha256:x")
    (tmp_path / "blob").write_bytes(damaged)
    with pytest.raises(LayerExtractError, match=r"^layer x: .*deflate"):
        extract_layer(tmp_path / "blob", tmp_path / "out", label="layer x")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FormatError, match=r"^cannot decompress the gzip input layer: .*deflate"):
        build(io.BytesIO(damaged), io.BytesIO(), BuildOptions())


@pytest.mark.parametrize("keep", [-5, 60], ids=["last-block", "first-frame"])
def test_a_truncated_zstd_layer_is_refused_not_read_short(keep: int, tmp_path: Path) -> None:
    """libzstd's stream reader ends quietly where its input ends: a zstd layer cut inside a frame read as
    a shorter (or empty) one, with a DiffID and a conversion of its own."""
    truncated = BLOBS["zstd-frames"][:keep]
    with pytest.raises(ImageError, match=r"^layer sha256:x: cannot decompress: the zstd stream ends inside "
                                         r"a frame \(truncated\)$"):
        diff_id_of(io.BytesIO(truncated), "zstd", "layer sha256:x")
    with pytest.raises(FormatError, match=r"^cannot decompress the zstd input layer: .*truncated"):
        build(io.BytesIO(truncated), io.BytesIO(), BuildOptions())
    (tmp_path / "blob").write_bytes(truncated)
    with pytest.raises(LayerExtractError, match=r"^layer x: "):
        extract_layer(tmp_path / "blob", tmp_path / "out", label="layer x")
    assert not (tmp_path / "out").exists()


def test_the_frame_check_reads_every_kind_of_zstd_stream_whole() -> None:
    """The frame walk behind the truncation check must never refuse a whole stream: frames with and
    without checksums and content sizes, streamed (several blocks, no size), empty, RLE-friendly and
    incompressible data, skippable frames between; and a cut anywhere inside a frame is refused."""
    from lazypull.format.compression import decompressing

    rnd = random.Random(7)
    for _ in range(40):
        parts, want = [], b""
        for _ in range(rnd.randint(1, 3)):
            size = rnd.choice([0, 1, 3000, 300_000])
            data = rnd.randbytes(size // 2) + b"a" * (size - size // 2)
            compressor = zstandard.ZstdCompressor(level=rnd.choice([1, 3, 19]),
                                                  write_checksum=rnd.random() < 0.5,
                                                  write_content_size=rnd.random() < 0.5)
            if rnd.random() < 0.4:
                out = io.BytesIO()
                with compressor.stream_writer(out, closefd=False) as writer:
                    writer.write(data)
                parts.append(out.getvalue())
            else:
                parts.append(compressor.compress(data))
            want += data
            if rnd.random() < 0.3:
                parts.append(SKIPPABLE)
        blob = b"".join(parts)
        assert decompressing(io.BytesIO(blob), "zstd").read() == want
        ends = {sum(len(p) for p in parts[:i]) for i in range(len(parts) + 1)}
        for cut in rnd.sample(range(1, len(blob)), min(5, len(blob) - 1)):
            if cut in ends:
                continue
            with pytest.raises((EOFError, zstandard.ZstdError)):
                decompressing(io.BytesIO(blob[:cut]), "zstd").read()
