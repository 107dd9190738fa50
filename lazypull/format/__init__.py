"""eStargz and zstd:chunked layer blobs: read and write, with no I/O beyond file-like objects.

Byte layouts are described in each module's docstring (footer, toc, compression, writer, zstdchunked)
and in ``docs/format.md``. This package imports only the standard library, zstandard, zlib-ng and isal.
"""

from lazypull.format.errors import DigestMismatchError, FormatError
from lazypull.format.reader import Chunk, LayerReader, decode_chunk, decode_chunks, open_layer
from lazypull.format.source import BlobSource, BytesSource, FileSource
from lazypull.format.toc import TOC, TOCEntry
from lazypull.format.writer import BuildOptions, BuildResult, build

__all__ = [
    "TOC",
    "BlobSource",
    "BuildOptions",
    "BuildResult",
    "BytesSource",
    "Chunk",
    "DigestMismatchError",
    "FileSource",
    "FormatError",
    "LayerReader",
    "TOCEntry",
    "build",
    "decode_chunk",
    "decode_chunks",
    "open_layer",
]
