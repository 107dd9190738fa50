"""Layer blobs as tar streams that close their blob (``format.compression`` decompresses them)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, BinaryIO, cast

if TYPE_CHECKING:
    from lazypull.format.compression import Compression

# format.compression (zstandard, ISA-L, zlib-ng) is imported by `decompressed`: the store imports this
# module, and resolving an image decompresses nothing.


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


def decompressed(stream: BinaryIO, compression: Compression) -> BinaryIO:
    """Wrap ``stream`` so reads return the uncompressed bytes (``format.compression.decompressing``);
    closing closes ``stream`` too. Reads raise ``DECOMPRESS_ERRORS`` on damaged input."""
    from lazypull.format.compression import decompressing

    reader = decompressing(stream, compression)
    return stream if reader is stream else cast(BinaryIO, _Closing(reader, stream))
