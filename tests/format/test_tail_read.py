"""Footer and TOC in as few requests as possible: ``open_layer`` reads a share of the blob's end sized to
hold a typical TOC (``tail_read_size``), so a layer whose TOC fits is opened with one read; a bigger TOC
costs one more read of only the part the tail lacks; the reader is the same either way."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile

import pytest

from lazypull.format import BuildOptions, BytesSource, build, open_layer
from lazypull.format.reader import MAX_TAIL_READ, TAIL_READ, tail_read_size


class CountingSource(BytesSource):
    """Records every read (offset, length)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def read_at(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return super().read_at(offset, length)


def _blob(files: int, big: int, compression: str = "gzip") -> tuple[bytes, str, int]:
    """(blob, TOC digest, TOC offset) of a layer of ``files`` small files (random names: a TOC that does
    not compress away) and one random file of ``big`` bytes."""
    rng = random.Random(files + big)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(files):
            data = rng.randbytes(20)
            info = tarfile.TarInfo(f"d/{rng.randbytes(16).hex()}-{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("big.bin")
        info.size = big
        tar.addfile(info, io.BytesIO(rng.randbytes(big)))
    out = io.BytesIO()
    result = build(io.BytesIO(buf.getvalue()), out, BuildOptions(compression=compression))  # type: ignore[arg-type]
    return out.getvalue(), result.toc_digest, result.toc_offset


@pytest.fixture(scope="module")
def roomy() -> tuple[bytes, str, int]:
    """A TOC over 64 KiB in a blob over 128 times as big: the tail read holds it."""
    blob, digest, toc_offset = _blob(1500, 24 << 20)
    toc = len(blob) - toc_offset
    assert TAIL_READ < toc <= tail_read_size(len(blob)), (toc, len(blob))
    return blob, digest, toc_offset


def test_tail_read_size_is_a_bounded_share_of_the_blob() -> None:
    assert tail_read_size(40) == 40
    assert tail_read_size(1 << 20) == TAIL_READ
    assert tail_read_size(32 << 20) == 256 << 10
    assert tail_read_size(1 << 30) == MAX_TAIL_READ


def test_footer_and_toc_in_one_read(roomy: tuple[bytes, str, int]) -> None:
    blob, digest, _ = roomy
    src = CountingSource(blob)
    reader = open_layer(src, toc_digest=digest)
    assert src.reads == [(len(blob) - tail_read_size(len(blob)), tail_read_size(len(blob)))]
    whole = open_layer(BytesSource(blob), toc_digest=digest)
    assert reader.toc_json == whole.toc_json and reader.verified_by == "toc"
    small = [e for e in reader.entries() if e.type == "reg" and e.name.startswith("d/")][:3]
    twins = [whole.lookup(e.name) for e in small]
    assert [reader.read_file(e) for e in small] == [whole.read_file(t) for t in twins if t is not None]


def test_a_toc_bigger_than_the_tail_costs_one_more_read_of_what_is_missing() -> None:
    blob, digest, toc_offset = _blob(1500, 1 << 20)           # the same TOC, a blob too small for it
    tail = tail_read_size(len(blob))
    start = len(blob) - tail
    assert toc_offset < start
    src = CountingSource(blob)
    reader = open_layer(src, toc_digest=digest)
    assert src.reads == [(start, tail), (toc_offset, start - toc_offset)]
    assert hashlib.sha256(reader.toc_json).hexdigest() == digest.removeprefix("sha256:")


def test_a_toc_offset_hint_is_one_read_from_it() -> None:
    blob, digest, toc_offset = _blob(200, 1 << 20, compression="zstd")
    src = CountingSource(blob)
    open_layer(src, toc_digest=digest, toc_offset_hint=toc_offset)
    assert len(src.reads) == 1 and src.reads[0][0] <= toc_offset
