"""Decompressing layer blobs into tar streams (gzip: every member; zstd: every frame, skippable skipped)."""

from __future__ import annotations

import io
from typing import BinaryIO, Literal, cast

from lazypull.image.errors import ImageError

# zstandard and zlib_ng (whose gzip module loads argparse, bz2 and lzma) are imported by
# `decompressed`: the store imports this module, and resolving an image decompresses nothing.


class _Closing(io.RawIOBase):
    """A readable stream that closes the inner decompressor and the blob file together."""

    def __init__(self, reader: BinaryIO, *inner: BinaryIO) -> None:
        self._reader = reader
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self._reader.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        return self._reader.read(size)

    def close(self) -> None:
        if not self.closed:
            try:
                self._reader.close()
            finally:
                for inner in self._inner:
                    inner.close()
        super().close()


def decompressed(stream: BinaryIO, compression: Literal["none", "gzip", "zstd"], what: str) -> BinaryIO:
    """Wrap ``stream`` so reads return the uncompressed bytes; closing closes ``stream`` too."""
    import zstandard
    from zlib_ng import gzip_ng

    try:
        if compression == "gzip":
            gz = cast(BinaryIO, gzip_ng.GzipNGFile(fileobj=stream, mode="rb"))  # type: ignore[no-untyped-call]
            return cast(BinaryIO, _Closing(gz, stream))
        if compression == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True,
                                                                 closefd=True)
            return cast(BinaryIO, _Closing(cast(BinaryIO, reader)))
        return stream
    except (OSError, zstandard.ZstdError) as err:
        stream.close()
        raise ImageError(f"{what}: cannot decompress ({compression}): {err}") from err
