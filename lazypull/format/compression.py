"""Compressors (one gzip member / zstd frame at a time) and bounded decompressors.

A blob is a concatenation of *members* (gzip, RFC 1952) or *frames* (zstd, RFC 8878); a new one starts
at every chunk of file content. ``Compressor.member()`` makes one; ``MemberEncoder`` turns bytes into
its compressed form, ``flush()`` makes everything so far decodable (so the compressed length is exact,
needed by min-chunk-size), ``finish()`` ends it.

gzip members are written with Go's header ``1f 8b 08 00 00 00 00 00 XFL ff`` (MTIME 0, OS 255, XFL 2 for
level 9, 4 for level 1) over raw deflate from zlib-ng (levels 2-9), ISA-L (level 1) or zlib-ng level 0,
then CRC32 and ISIZE, both little endian. zlib-ng, ISA-L and zstandard release the GIL while they work,
so parts of a blob compress in parallel threads.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from typing import BinaryIO, Literal, Protocol, cast

import zstandard
from isal import isal_zlib
from zlib_ng import zlib_ng

from lazypull.format.errors import FormatError

_ZSTD_ERROR = cast(type[Exception], zstandard.ZstdError)
_ISAL_ERROR = cast(type[Exception], isal_zlib.error)

Compression = Literal["none", "gzip", "zstd"]
GZIP_MAGIC = b"\x1f\x8b"                 # RFC 1952 ID1 ID2
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"         # RFC 8878 frame magic, little endian 0xFD2FB528

GZIP_DEFAULT_LEVEL = 9
ZSTD_DEFAULT_LEVEL = 3


class MemberEncoder(Protocol):
    """Compresses one member/frame."""

    def compress(self, data: bytes | memoryview) -> bytes: ...

    def flush(self) -> bytes: ...

    def finish(self) -> bytes: ...


class Compressor(Protocol):
    """Makes members/frames of one compression kind."""

    name: str

    def member(self) -> MemberEncoder: ...


class Decompressor(Protocol):
    """Decodes a byte range that starts at a member/frame boundary."""

    name: str

    def decompress(self, data: bytes, skip: int, length: int) -> bytes: ...


class _Deflater(Protocol):
    def compress(self, data: bytes | memoryview, /) -> bytes: ...

    def flush(self, mode: int = ..., /) -> bytes: ...


class _GzipMember:
    def __init__(self, level: int, xfl: int) -> None:
        self._obj: _Deflater
        if level == 1:
            self._obj = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)
        else:
            self._obj = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -15, 9)
        self._header = GZIP_MAGIC + b"\x08\x00\x00\x00\x00\x00" + bytes([xfl]) + b"\xff"
        self._crc = 0
        self._size = 0

    def _start(self) -> bytes:
        header, self._header = self._header, b""
        return header

    def compress(self, data: bytes | memoryview) -> bytes:
        self._crc = zlib_ng.crc32(data, self._crc)
        self._size += len(data)
        return self._start() + self._obj.compress(data)

    def flush(self) -> bytes:
        return self._start() + self._obj.flush(zlib_ng.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        tail = self._obj.flush(zlib_ng.Z_FINISH)
        return self._start() + tail + struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)


class GzipCompressor:
    """gzip members as Go's compress/gzip frames them."""

    name = "gzip"

    def __init__(self, level: int | None = None) -> None:
        level = GZIP_DEFAULT_LEVEL if level is None else level
        if not 0 <= level <= 9:
            raise FormatError(f"gzip compression level {level} is not in 0..9")
        self.level = level
        self._xfl = 2 if level == 9 else 4 if level == 1 else 0

    def member(self) -> MemberEncoder:
        return _GzipMember(self.level, self._xfl)


class _ZstdFrame:
    def __init__(self, ctx: zstandard.ZstdCompressor) -> None:
        self._obj = ctx.compressobj()

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


class ZstdCompressor:
    """zstd frames with content checksums (as the klauspost encoder writes them)."""

    name = "zstd"

    def __init__(self, level: int | None = None) -> None:
        level = ZSTD_DEFAULT_LEVEL if level is None else level
        if not 1 <= level <= 22:
            raise FormatError(f"zstd compression level {level} is not in 1..22")
        self.level = level
        self._ctx = zstandard.ZstdCompressor(level=level, write_checksum=True)

    def member(self) -> MemberEncoder:
        return _ZstdFrame(self._ctx)

    def compress_whole(self, data: bytes) -> bytes:
        """One frame holding ``data`` (the TOC)."""
        return self._ctx.compress(data)

    def fork(self) -> ZstdCompressor:
        """An independent compressor with the same settings (one per thread)."""
        return ZstdCompressor(self.level)


# ---------------------------------------------------------------------------------------------------------
# decompression


def gunzip_member(data: bytes, limit: int, what: str) -> bytes:
    """Decompress the single gzip member that ``data`` is, refusing more than ``limit`` bytes.

    Bytes after the member are refused: an eStargz TOC member ends where the footer starts, and what a
    lazy mount never reads but a full extraction does (a damaged member) must not pass one and not the
    other."""
    obj = isal_zlib.decompressobj(31)
    try:
        out = obj.decompress(data, limit + 1)
    except _ISAL_ERROR as err:
        raise FormatError(f"{what} is not a valid gzip member: {err}") from err
    if len(out) > limit:
        raise FormatError(f"{what} decompresses to more than {limit} bytes")
    if not obj.eof:
        raise FormatError(f"{what} is a truncated gzip member")
    if obj.unused_data:
        raise FormatError(f"{what}: {len(obj.unused_data)} bytes follow its gzip member")
    return out


_STEP = 1 << 20


def _gzip_pieces(data: bytes) -> Iterator[bytes]:
    """Decompressed output of consecutive gzip members, at most 1 MiB at a time."""
    rest = data
    while rest:
        obj = isal_zlib.decompressobj(31)
        buf = rest
        while True:
            out = obj.decompress(buf, _STEP)
            if out:
                yield out
            buf = obj.unconsumed_tail
            if obj.eof or (not buf and not out):
                break
        if not obj.eof:
            return
        rest = obj.unused_data


def _zstd_pieces(data: bytes) -> Iterator[bytes]:
    """Decompressed output of consecutive zstd frames (skippable frames skipped), 1 MiB at a time."""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    while out := reader.read(_STEP):
        yield out


def _slice(pieces: Iterator[bytes], skip: int, length: int, what: str) -> bytes:
    """Bytes ``[skip, skip+length)`` of a stream of pieces; the skipped prefix is never kept."""
    need = skip + length
    parts: list[bytes] = []
    pos = 0
    for piece in pieces:
        end = pos + len(piece)
        if end > skip:
            parts.append(piece[max(0, skip - pos) : need - pos])
        pos = end
        if pos >= need:
            break
    buf = b"".join(parts)
    if len(buf) < length:
        raise FormatError(f"{what}: compressed range ends after {min(pos, need)} of {need} bytes")
    return buf


def gunzip_range(data: bytes, skip: int, length: int, what: str) -> bytes:
    """Bytes ``[skip, skip+length)`` of the gzip members starting at ``data[0]``."""
    try:
        return _slice(_gzip_pieces(data), skip, length, what)
    except _ISAL_ERROR as err:
        raise FormatError(f"{what}: corrupt gzip data: {err}") from err


def unzstd_range(data: bytes, skip: int, length: int, what: str) -> bytes:
    """Bytes ``[skip, skip+length)`` of the zstd frames starting at ``data[0]``."""
    try:
        return _slice(_zstd_pieces(data), skip, length, what)
    except _ZSTD_ERROR as err:
        raise FormatError(f"{what}: corrupt zstd data: {err}") from err


def unzstd_bounded(data: bytes, limit: int, what: str) -> bytes:
    """Decompress zstd ``data`` whole, refusing more than ``limit`` bytes of output."""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
        out = reader.read(limit + 1)
        parts = [out]
        got = len(out)
        while out and got <= limit:
            out = reader.read(limit + 1 - got)
            parts.append(out)
            got += len(out)
    except _ZSTD_ERROR as err:
        raise FormatError(f"{what} is not valid zstd: {err}") from err
    if got > limit:
        raise FormatError(f"{what} decompresses to more than {limit} bytes")
    return b"".join(parts)


class GzipDecompressor:
    """Decodes gzip member ranges."""

    name = "gzip"

    def decompress(self, data: bytes, skip: int, length: int) -> bytes:
        return gunzip_range(data, skip, length, "gzip chunk")


class ZstdDecompressor:
    """Decodes zstd frame ranges."""

    name = "zstd"

    def decompress(self, data: bytes, skip: int, length: int) -> bytes:
        return unzstd_range(data, skip, length, "zstd chunk")


def decompressor(name: str) -> Decompressor:
    """The decompressor for ``"gzip"`` or ``"zstd"``."""
    if name == "gzip":
        return GzipDecompressor()
    if name == "zstd":
        return ZstdDecompressor()
    raise FormatError(f"unknown compression {name!r}")


#: What reading a damaged stream from :func:`decompressing` raises: gzip's OSError (bad header), EOFError
#: (truncated) or ISA-L's error (bad deflate data), zstd's ZstdError. Callers name the layer in their own
#: error for any of them.
DECOMPRESS_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, _ISAL_ERROR, _ZSTD_ERROR)


def decompressing(stream: BinaryIO, kind: Compression) -> BinaryIO:
    """A reader of ``stream``'s uncompressed bytes: gzip every member (an eStargz blob is many), zstd
    every frame (skippable frames skipped), ``"none"`` the stream itself. Closing it leaves ``stream``
    open. The one way whole layers are decompressed: DiffIDs and conversions (image), extraction
    (runtime) and the writer's input; reads raise :data:`DECOMPRESS_ERRORS` on damaged input."""
    if kind == "gzip":
        from isal import igzip  # (loads gzip's own module: only what decompresses a layer pays it)

        return cast(BinaryIO, igzip.GzipFile(fileobj=stream, mode="rb"))  # type: ignore[no-untyped-call]
    if kind == "zstd":
        checked = cast(BinaryIO, _FramesChecked(stream))
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(checked, read_across_frames=True,
                                                                         closefd=False))
    return stream


_ZSTD_FRAME = 0xFD2FB528
_SKIPPABLE_FRAMES = range(0x184D2A50, 0x184D2A60)
_FCS_SIZES = (0, 2, 4, 8)       # Frame_Content_Size bytes by its flag (flag 0: 1 byte if single-segment)
_DID_SIZES = (0, 1, 2, 4)       # Dictionary_ID bytes by its flag


class _ZstdFrameWalk:
    """Follows a zstd stream's frames as its bytes go by (RFC 8878 headers only; block bodies are passed
    over by their sizes), to tell a stream that ends inside a frame from one that ends after it:
    python-zstandard's stream reader ends quietly where its input ends, so a truncated layer read as a
    shorter one. What it does not know (a legacy frame, a reserved block type) is left to libzstd."""

    def __init__(self) -> None:
        self._state = "magic"
        self._need = 4          # bytes of the next header field
        self._field = b""       # what of it has come
        self._skip = 0          # bytes to pass over first (a header's rest, a block body, a checksum)
        self._checksum = False
        self.unknown = False

    @property
    def at_frame_end(self) -> bool:
        return self.unknown or (self._state == "magic" and not self._field and not self._skip)

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end and not self.unknown:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._field), end - pos)
            self._field += data[pos:pos + take]
            pos += take
            if len(self._field) == self._need:
                field, self._field = self._field, b""
                self._next(field)

    def _next(self, field: bytes) -> None:
        value = int.from_bytes(field, "little")
        if self._state == "magic":
            if value == _ZSTD_FRAME:
                self._state, self._need = "descriptor", 1
            elif value in _SKIPPABLE_FRAMES:
                self._state, self._need = "skippable", 4
            else:
                self.unknown = True
        elif self._state == "skippable":
            self._skip, self._state, self._need = value, "magic", 4
        elif self._state == "descriptor":
            single = value >> 5 & 1
            fcs = _FCS_SIZES[value >> 6] or single
            self._checksum = bool(value & 4)
            self._skip = (1 - single) + _DID_SIZES[value & 3] + fcs     # window descriptor, DID, FCS
            self._state, self._need = "block", 3
        else:                   # a block header: last-block bit, type, size
            kind, size = value >> 1 & 3, value >> 3
            if kind == 3:
                self.unknown = True
                return
            self._skip = 1 if kind == 1 else size       # an RLE block's body is its one byte
            if value & 1:
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4


class _FramesChecked(io.RawIOBase):
    """The compressed stream as read, refusing (EOFError) to end inside a zstd frame."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._walk = _ZstdFrameWalk()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        if not data:
            if not self._walk.at_frame_end:
                raise EOFError("the zstd stream ends inside a frame (truncated)")
            return 0
        self._walk.feed(data)
        buffer[:len(data)] = data
        return len(data)


def detect_compression(head: bytes) -> Compression:
    """``"gzip"``, ``"zstd"`` or ``"none"`` (a plain tar, or anything else) from the first 4 bytes of a
    blob: the one sniffer of layer blobs (the writer's input, extraction, pulls of unknown media type)."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"
