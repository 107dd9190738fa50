"""Footers: the fixed-size tail of a blob that says where the TOC is (format.md 1.5, 2.1, 3.1, 3.2).

eStargz, 51 bytes (an empty gzip member)::

    1f 8b 08 04 00 00 00 00 00 ff | XLEN=26 (1a 00) | 'S' 'G' | LEN=22 (16 00)
    | %016x TOC c-offset | "STARGZ" | 01 00 00 ff ff | CRC32=0 | ISIZE=0

legacy stargz (CRFS), 47 bytes: the same without the subfield header (XLEN=22, ``%016xSTARGZ``).

external TOC, 46 bytes: XLEN=21, ``'S' 'G'``, LEN=17, ``"STARGZEXTERNALTOC"``, empty deflate, zeros.

zstd:chunked (stargz-snapshotter), skippable frame ``50 2a 4d 18 | 28 00 00 00`` + 40 bytes::

    u64 TOC c-offset | u64 compressed TOC length | u64 TOC JSON length | u64 type=1 | "GnUlInUx"

zstd:chunked (containers/storage), skippable frame ``50 2a 4d 18 | 40 00 00 00`` + 64 bytes::

    u64 TOC offset | u64 compressed len | u64 uncompressed len | u64 type=1
    | u64 tar-split offset | u64 tar-split compressed len | u64 tar-split uncompressed len | "GNUlInUx"

All integers little endian.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from lazypull.format.errors import FormatError

ESTARGZ_FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47
EXTERNAL_FOOTER_SIZE = 46
ZSTD_FOOTER_SIZE = 48  # skippable frame header + 40
CS_FOOTER_SIZE = 72  # skippable frame header + 64
MAX_FOOTER_SIZE = CS_FOOTER_SIZE

SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
EXTERNAL_TOC_MARK = b"STARGZEXTERNALTOC"      # in the footer of a blob whose TOC is in another image
_EXTERNAL_EXTRA = b"\x15\x00SG\x11\x00" + EXTERNAL_TOC_MARK
ZSTD_FOOTER_MAGIC = b"GnUlInUx"
CS_FOOTER_MAGIC = b"GNUlInUx"
MANIFEST_TYPE_CRFS = 1

_GZIP_EXTRA_HEADER = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
_EMPTY_DEFLATE_TRAILER = b"\x01\x00\x00\xff\xff" + b"\x00" * 8
_HEX16 = re.compile(rb"[0-9a-fA-F]{16}\Z")


@dataclass(frozen=True)
class Footer:
    """What a footer says."""

    kind: str
    """``"estargz" | "legacy" | "external" | "zstd-40" | "zstd-64"``."""
    size: int
    """Footer length in bytes at the end of the blob (zstd: including the skippable frame header)."""
    toc_offset: int
    """c-offset of the TOC (gzip: its member; zstd: the compressed TOC bytes); -1 when external."""
    toc_length: int
    """Compressed TOC length (gzip: up to the footer)."""
    toc_uncompressed: int = 0
    """zstd only: length of the TOC JSON."""

    @property
    def payload_end(self) -> int:
        """c-offset where the data frames/members end (start of TOC or footer)."""
        if self.kind in ("zstd-40", "zstd-64"):
            return self.toc_offset - 8
        return self.toc_offset


def estargz_footer(toc_offset: int) -> bytes:
    """The 51-byte eStargz footer pointing at ``toc_offset``."""
    return (_GZIP_EXTRA_HEADER + b"\x1a\x00SG\x16\x00" + b"%016x" % toc_offset + b"STARGZ"
            + _EMPTY_DEFLATE_TRAILER)


def legacy_footer(toc_offset: int) -> bytes:
    """The 47-byte CRFS stargz footer (written only for tests: readers must still accept it)."""
    return _GZIP_EXTRA_HEADER + b"\x16\x00" + b"%016x" % toc_offset + b"STARGZ" + _EMPTY_DEFLATE_TRAILER


def external_toc_footer() -> bytes:
    """The 46-byte footer saying the TOC is in a separate blob."""
    return _GZIP_EXTRA_HEADER + _EXTERNAL_EXTRA + _EMPTY_DEFLATE_TRAILER


def skippable_frame(content: bytes) -> bytes:
    """A zstd skippable frame (magic 0x184D2A50) holding ``content``."""
    return SKIPPABLE_MAGIC + struct.pack("<I", len(content)) + content


def zstd_footer(toc_offset: int, toc_compressed: int, toc_uncompressed: int) -> bytes:
    """The stargz-snapshotter zstd:chunked footer frame (48 bytes)."""
    body = struct.pack("<QQQQ", toc_offset, toc_compressed, toc_uncompressed, MANIFEST_TYPE_CRFS)
    return skippable_frame(body + ZSTD_FOOTER_MAGIC)


def _estargz(tail: bytes, blob_size: int) -> Footer | None:
    p = tail[-ESTARGZ_FOOTER_SIZE:]
    if len(p) != ESTARGZ_FOOTER_SIZE or p[:4] != b"\x1f\x8b\x08\x04" or p[10:16] != b"\x1a\x00SG\x16\x00":
        return None
    if p[32:38] != b"STARGZ":
        return None
    return _gzip_footer("estargz", p[16:32], ESTARGZ_FOOTER_SIZE, blob_size)


def _legacy(tail: bytes, blob_size: int) -> Footer | None:
    p = tail[-LEGACY_FOOTER_SIZE:]
    if len(p) != LEGACY_FOOTER_SIZE or p[:4] != b"\x1f\x8b\x08\x04" or p[10:12] != b"\x16\x00":
        return None
    if p[28:34] != b"STARGZ":
        return None
    return _gzip_footer("legacy", p[12:28], LEGACY_FOOTER_SIZE, blob_size)


def _gzip_footer(kind: str, hexdigits: bytes, size: int, blob_size: int) -> Footer:
    if not _HEX16.match(hexdigits):
        raise FormatError(f"{kind} footer: TOC offset {hexdigits!r} is not 16 hex digits")
    toc_offset = int(hexdigits, 16)
    if toc_offset > blob_size - size:
        raise FormatError(f"{kind} footer: TOC offset {toc_offset} is beyond the blob ({blob_size} bytes)")
    return Footer(kind=kind, size=size, toc_offset=toc_offset, toc_length=blob_size - size - toc_offset)


def _external(tail: bytes, blob_size: int) -> Footer | None:
    p = tail[-EXTERNAL_FOOTER_SIZE:]
    if len(p) != EXTERNAL_FOOTER_SIZE or p[:4] != b"\x1f\x8b\x08\x04":
        return None
    if p[10:33] != _EXTERNAL_EXTRA:
        return None
    return Footer(kind="external", size=EXTERNAL_FOOTER_SIZE, toc_offset=-1, toc_length=0)


def _zstd40(tail: bytes, blob_size: int) -> Footer | None:
    p = tail[-ZSTD_FOOTER_SIZE:]
    if len(p) != ZSTD_FOOTER_SIZE or p[-8:] != ZSTD_FOOTER_MAGIC:
        return None
    if p[:8] != SKIPPABLE_MAGIC + b"\x28\x00\x00\x00":
        raise FormatError("zstd:chunked footer is not inside a 40-byte skippable frame")
    off, clen, ulen, mtype = struct.unpack_from("<QQQQ", p, 8)
    return _zstd_footer("zstd-40", ZSTD_FOOTER_SIZE, off, clen, ulen, mtype, blob_size)


def _zstd64(tail: bytes, blob_size: int) -> Footer | None:
    p = tail[-CS_FOOTER_SIZE:]
    if len(p) != CS_FOOTER_SIZE or p[-8:] != CS_FOOTER_MAGIC:
        return None
    if p[:8] != SKIPPABLE_MAGIC + b"\x40\x00\x00\x00":
        raise FormatError("zstd:chunked footer is not inside a 64-byte skippable frame")
    off, clen, ulen, mtype = struct.unpack_from("<QQQQ", p, 8)
    return _zstd_footer("zstd-64", CS_FOOTER_SIZE, off, clen, ulen, mtype, blob_size)


def _zstd_footer(kind: str, size: int, off: int, clen: int, ulen: int, mtype: int, blob_size: int) -> Footer:
    if mtype != MANIFEST_TYPE_CRFS:
        raise FormatError(f"{kind} footer: unsupported manifest type {mtype}")
    if off < 8 or off + clen > blob_size - size:
        raise FormatError(f"{kind} footer: TOC range {off}+{clen} is outside the blob ({blob_size} bytes)")
    return Footer(kind=kind, size=size, toc_offset=off, toc_length=clen, toc_uncompressed=ulen)


def parse_footer(tail: bytes, blob_size: int) -> Footer:
    """Find the footer at the end of ``tail`` (the last bytes of a ``blob_size``-byte blob).

    Tries eStargz, legacy, external TOC, then both zstd:chunked forms, as Go's reader does.
    """
    for parser in (_estargz, _legacy, _external, _zstd64, _zstd40):
        found = parser(tail, blob_size)
        if found is not None:
            return found
    raise FormatError("no eStargz, stargz, external-TOC or zstd:chunked footer at the end of the blob")
