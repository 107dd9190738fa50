"""Random access to a compressed blob: the only I/O the reader does (like Go's io.SectionReader)."""

from __future__ import annotations

import os
from typing import BinaryIO, Protocol, runtime_checkable

from lazypull.format.errors import FormatError


@runtime_checkable
class BlobSource(Protocol):
    """A blob of known size that can be read at any offset (a local file, a cache, a registry)."""

    @property
    def size(self) -> int:
        """Total length of the blob in bytes."""
        ...

    def read_at(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)``; may be shorter only when the range passes the end."""
        ...


class BytesSource:
    """A blob held in memory (tests, small TOC blobs)."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    @property
    def size(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise FormatError(f"invalid read range offset={offset} length={length}")
        return self._data[offset : offset + length]


class FileSource:
    """A blob in a local file, read with ``pread`` so several threads may share it."""

    def __init__(self, file: str | os.PathLike[str] | BinaryIO) -> None:
        if isinstance(file, (str, os.PathLike)):
            self._file: BinaryIO = open(file, "rb")  # noqa: SIM115 - closed by close()
            self._owned = True
        else:
            self._file = file
            self._owned = False
        self._fd = self._file.fileno()
        self._size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise FormatError(f"invalid read range offset={offset} length={length}")
        parts: list[bytes] = []
        while length > 0:
            data = os.pread(self._fd, length, offset)
            if not data:
                break
            parts.append(data)
            offset += len(data)
            length -= len(data)
        return b"".join(parts)

    def close(self) -> None:
        """Close the file if this object opened it."""
        if self._owned:
            self._file.close()

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
