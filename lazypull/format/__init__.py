"""eStargz and zstd:chunked layer blobs: read and write, with no I/O beyond file-like objects.

Byte layouts are described in each module's docstring (footer, toc, compression, writer, zstdchunked)
and in ``docs/format.md``. This package imports only the standard library, zstandard, zlib-ng and isal.
"""

import typing

if typing.TYPE_CHECKING:
    from lazypull.format.errors import DigestMismatchError as DigestMismatchError
    from lazypull.format.errors import FormatError as FormatError
    from lazypull.format.layerkind import LayerSpec as LayerSpec
    from lazypull.format.reader import Chunk as Chunk
    from lazypull.format.reader import LayerReader as LayerReader
    from lazypull.format.reader import decode_chunk as decode_chunk
    from lazypull.format.reader import decode_chunks as decode_chunks
    from lazypull.format.reader import open_layer as open_layer
    from lazypull.format.source import BlobSource as BlobSource
    from lazypull.format.source import BytesSource as BytesSource
    from lazypull.format.source import FileSource as FileSource
    from lazypull.format.toc import TOC as TOC
    from lazypull.format.toc import TOCEntry as TOCEntry
    from lazypull.format.writer import BuildOptions as BuildOptions
    from lazypull.format.writer import BuildResult as BuildResult
    from lazypull.format.writer import build as build

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
    "LayerSpec",
    "TOCEntry",
    "build",
    "decode_chunk",
    "decode_chunks",
    "open_layer",
]

# Public name -> the submodule defining it, imported on first use: FormatError or the reader alone
# do not load the writer (and its thread pool, tar and compressor set-up).
_SOURCES: dict[str, str] = {
    "BlobSource": ".source",
    "BuildOptions": ".writer",
    "BuildResult": ".writer",
    "BytesSource": ".source",
    "Chunk": ".reader",
    "DigestMismatchError": ".errors",
    "FileSource": ".source",
    "FormatError": ".errors",
    "LayerReader": ".reader",
    "LayerSpec": ".layerkind",
    "TOC": ".toc",
    "TOCEntry": ".toc",
    "build": ".writer",
    "decode_chunk": ".reader",
    "decode_chunks": ".reader",
    "open_layer": ".reader",
}

if not typing.TYPE_CHECKING:     # mypy sees the imports above, so a misspelt name stays an error

    def __getattr__(name: str) -> object:
        """Import the submodule defining ``name`` on first use (PEP 562) and keep the name here."""
        source = _SOURCES.get(name)
        if source is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        # __import__ rather than importlib.import_module: -X importtime then lists the submodule
        value = getattr(__import__(__name__ + source, fromlist=[name]), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    """The public API, loaded or not (PEP 562)."""
    return list(__all__)
