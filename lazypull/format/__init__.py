"""eStargz and zstd:chunked layer blobs: read and write, with no I/O beyond file-like objects."""

from lazypull.format.errors import FormatError

__all__ = ["FormatError"]
