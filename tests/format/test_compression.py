"""Both compressions pass the shared suite; gzip members carry Go's header."""

from __future__ import annotations

import gzip

import pytest

from lazypull.format.compression import (
    GzipCompressor,
    GzipDecompressor,
    ZstdCompressor,
    ZstdDecompressor,
    detect_compression,
)
from lazypull.format.errors import FormatError
from lazypull.format.testing import check_compression


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_gzip_suite(level: int) -> None:
    check_compression(GzipCompressor(level), GzipDecompressor())


@pytest.mark.parametrize("level", [1, 3, 19])
def test_zstd_suite(level: int) -> None:
    check_compression(ZstdCompressor(level), ZstdDecompressor())


def test_gzip_member_is_standard_gzip() -> None:
    m = GzipCompressor(9).member()
    data = m.compress(b"payload" * 1000) + m.finish()
    assert data[:10] == bytes.fromhex("1f8b08000000000002ff")
    assert gzip.decompress(data) == b"payload" * 1000


def test_bad_levels_and_detection() -> None:
    with pytest.raises(FormatError):
        GzipCompressor(10)
    with pytest.raises(FormatError):
        ZstdCompressor(0)
    assert detect_compression(b"\x1f\x8b\x08\x00") == "gzip"
    assert detect_compression(b"\x28\xb5\x2f\xfd") == "zstd"
    assert detect_compression(b"ustar") == "none"
