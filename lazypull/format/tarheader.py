"""Tar headers as Go's ``archive/tar`` reads and re-writes them.

The eStargz writer parses every input header and writes it again with Go's tar writer, so the
decompressed layer (and its DiffID) is what stargz-snapshotter would produce. This module is a
faithful port of the parts of ``archive/tar`` that decide those bytes:

* reading: checksum (signed or unsigned), format guess from magic (``"ustar\\0" "00"`` = USTAR|PAX,
  ``"ustar " " \\0"`` = GNU, else V7), a USTAR block with non-ASCII bytes or numeric fields not ending
  in NUL counts as "unknown format", PAX ``x`` records merged (path, linkpath, uname, gname, uid, gid,
  size, mtime/atime/ctime with up to 9 fraction digits, ``SCHILY.xattr.*``), GNU ``L``/``K`` long names,
  USTAR prefix joined with ``/``, legacy ``\\0`` typeflag promoted to ``0`` or ``5``;
* writing (``encode_go_header``): the first of USTAR, PAX, GNU that can carry the header, restricted to
  the input's format; PAX records sorted by key in a ``<dir>/PaxHeaders.0/<base>`` header; GNU
  ``././@LongLink`` headers; octal fields zero-padded with a NUL; GNU base-256 numbers; checksum
  ``%06o\\0 ``.

Header block layout (offset:length): name 0:100, mode 100:8, uid 108:8, gid 116:8, size 124:12,
mtime 136:12, chksum 148:8, typeflag 156:1, linkname 157:100, magic 257:6, version 263:2, uname 265:32,
gname 297:32, devmajor 329:8, devminor 337:8, prefix 345:155 (USTAR) or atime 345:12, ctime 357:12 (GNU).
Strings are bytes in tar and Go; here they are ``str`` decoded with ``surrogateescape``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from lazypull.format.errors import FormatError
from lazypull.format.names import go_join, go_split

FORMAT_UNKNOWN = 0
FORMAT_V7 = 1
FORMAT_USTAR = 2
FORMAT_PAX = 4
FORMAT_GNU = 8
FORMAT_STAR = 16

BLOCK = 512
NAME_SIZE = 100
PREFIX_SIZE = 155
ZERO_BLOCK = bytes(BLOCK)
HEADER_ONLY_TYPES = frozenset("123456")  # link symlink char block dir fifo
BASIC_KEYS = frozenset(
    {"path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime", "atime", "ctime"})
XATTR_PREFIX = "SCHILY.xattr."
MAX_SPECIAL_FILE_SIZE = 1 << 20  # Go's archive/tar limit for PAX and GNU long-name data
NS = 1_000_000_000


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


@dataclass(slots=True)
class TarHeader:
    """A parsed header (what Go's ``tar.Header`` holds). Times are ns since the epoch; None = zero."""

    name: str
    typeflag: str = "0"
    linkname: str = ""
    size: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: int | None = None
    atime: int | None = None
    ctime: int | None = None
    devmajor: int = 0
    devminor: int = 0
    pax_records: dict[str, str] = field(default_factory=dict)
    format: int = FORMAT_UNKNOWN

    @property
    def xattrs(self) -> dict[str, bytes]:
        """Extended attributes from ``SCHILY.xattr.*`` PAX records (raw bytes)."""
        n = len(XATTR_PREFIX)
        return {k[n:]: _b(v) for k, v in self.pax_records.items() if k.startswith(XATTR_PREFIX)}


@dataclass(slots=True)
class TarMember:
    """One entry of an input tar and where its bytes are."""

    header: TarHeader
    raw_offset: int
    """Offset of the first header block (extension headers included)."""
    data_offset: int
    data_size: int
    """Payload bytes present in the archive (0 for header-only types)."""

    @property
    def end(self) -> int:
        """Offset just after the payload (before its padding)."""
        return self.data_offset + self.data_size


# ---------------------------------------------------------------------------------------------------------
# reading


def _parse_string(b: bytes) -> bytes:
    i = b.find(b"\x00")
    return b if i < 0 else b[:i]


def _parse_numeric(b: bytes, what: str) -> int:
    if b and b[0] & 0x80:
        inv = 0xFF if b[0] & 0x40 else 0
        x = 0
        for i, c in enumerate(b):
            c ^= inv
            if i == 0:
                c &= 0x7F
            if x >> 56:
                raise FormatError(f"tar header: {what} overflows")
            x = x << 8 | c
        if x >> 63:
            raise FormatError(f"tar header: {what} overflows")
        return ~x if inv else x
    t = b.strip(b" \x00")
    if not t:
        return 0
    t = _parse_string(t)
    try:
        if not t or t.startswith((b"+", b"-")) or b"_" in t:
            raise ValueError(t)
        return int(t, 8)
    except ValueError as err:
        raise FormatError(f"tar header: {what} field {b!r} is not an octal number") from err


def _checksum_ok(blk: bytes, value: int) -> bool:
    """Go accepts the sum of the bytes taken as unsigned or as signed (chksum field counted as spaces)."""
    outside = blk[:148] + blk[156:]
    unsigned = sum(outside) + 8 * 32
    if value == unsigned:
        return True
    return value == unsigned - 256 * sum(1 for c in outside if c >= 0x80)


def _get_format(blk: bytes) -> int:
    try:
        value = _parse_numeric(blk[148:156], "checksum") if not blk[148] & 0x80 else -1
    except FormatError:
        return FORMAT_UNKNOWN
    if not _checksum_ok(blk, value):
        return FORMAT_UNKNOWN
    magic, version, trailer = blk[257:263], blk[263:265], blk[508:512]
    if magic == b"ustar\x00" and trailer == b"tar\x00":
        return FORMAT_STAR
    if magic == b"ustar\x00":
        return FORMAT_USTAR | FORMAT_PAX
    if magic == b"ustar " and version == b" \x00":
        return FORMAT_GNU
    return FORMAT_V7


_INT = re.compile(r"[+-]?[0-9]+\Z")
_PAX_TIME = re.compile(r"([+-]?[0-9]+)(?:\.([0-9]*))?\Z")


def _parse_int64(v: str) -> int:
    if not _INT.match(v):
        raise ValueError(v)
    n = int(v, 10)
    if not -(1 << 63) <= n < 1 << 63:
        raise ValueError(v)
    return n


def _parse_pax_time(s: str) -> int:
    m = _PAX_TIME.match(s)
    if m is None:
        raise FormatError(f"tar PAX time {s!r} is not a number")
    secs = int(m.group(1), 10)
    frac = m.group(2) or ""
    nsecs = int((frac + "000000000")[:9])
    return secs * NS - nsecs if m.group(1).startswith("-") else secs * NS + nsecs


def _parse_pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    while data:
        sp = data.find(b" ")
        if sp <= 0:
            raise FormatError("tar PAX record has no length")
        try:
            n = int(data[:sp], 10)
        except ValueError as err:
            raise FormatError(f"tar PAX record length {data[:sp]!r} is not a number") from err
        if n <= sp + 1 or n > len(data) or data[n - 1 : n] != b"\n":
            raise FormatError("tar PAX record is malformed")
        rec = data[sp + 1 : n - 1]
        data = data[n:]
        key, eq, value = rec.partition(b"=")
        if not eq or not key:
            raise FormatError(f"tar PAX record {rec[:40]!r} has no key")
        k, v = _s(key), _s(value)
        if not _valid_pax_record(k, v):
            raise FormatError(f"tar PAX record {k!r} contains NUL")
        if k.startswith("GNU.sparse."):
            raise FormatError("unsupported input tar entry: GNU sparse file")
        out[k] = v
    return out


def _merge_pax(h: TarHeader, pax: dict[str, str]) -> None:
    for k, v in pax.items():
        try:
            if k == "path":
                h.name = v
            elif k == "linkpath":
                h.linkname = v
            elif k == "uname":
                h.uname = v
            elif k == "gname":
                h.gname = v
            elif k in ("uid", "gid", "size"):
                setattr(h, k, _parse_int64(v))
            elif k in ("mtime", "atime", "ctime"):
                setattr(h, k, _parse_pax_time(v))
        except ValueError as err:
            raise FormatError(f"tar PAX record {k}={v!r} is invalid") from err
    h.pax_records = dict(pax)


class TarScan:
    """Iterates members; afterwards ``end`` is where the archive's trailing bytes start."""

    def __init__(self, fd: int, base: int, size: int) -> None:
        self._fd, self._base, self._size = fd, base, size
        self.end = 0

    def _read(self, pos: int, n: int) -> bytes:
        if pos + n > self._size:
            raise FormatError(f"tar is truncated: {n} bytes needed at offset {pos}, archive has {self._size}")
        data = os.pread(self._fd, n, self._base + pos)
        if len(data) != n:
            raise FormatError(f"tar is truncated at offset {pos}")
        return data

    def __iter__(self) -> Iterator[TarMember]:
        pos = 0
        while True:
            self.end = pos
            if pos + BLOCK > self._size:
                if pos != self._size:
                    raise FormatError(f"tar is truncated: partial header block at offset {pos}")
                return
            member = self._next(pos)
            if member is None:
                return
            yield member
            pos = member.data_offset + ((member.data_size + BLOCK - 1) // BLOCK) * BLOCK

    def _next(self, pos: int) -> TarMember | None:
        raw_offset = pos
        fmt = FORMAT_USTAR | FORMAT_PAX | FORMAT_GNU
        pax: dict[str, str] | None = None
        long_name: str | None = None
        long_link: str | None = None
        while True:
            blk = self._read(pos, BLOCK)
            if blk == ZERO_BLOCK:
                if pos + 2 * BLOCK <= self._size and self._read(pos + BLOCK, BLOCK) != ZERO_BLOCK:
                    raise FormatError(f"tar: zero block followed by data at offset {pos}")
                if pos != raw_offset:
                    raise FormatError(f"tar: extension header at {raw_offset} is followed by no entry")
                return None
            h, hfmt = self._header(blk, pos)
            fmt &= hfmt
            pos += BLOCK
            flag = h.typeflag
            if flag in ("x", "g", "L", "K") and not 0 <= h.size <= MAX_SPECIAL_FILE_SIZE:
                raise FormatError(f"tar extension header at offset {pos - BLOCK} is {h.size} bytes "
                                  f"(limit {MAX_SPECIAL_FILE_SIZE})")
            if flag in ("x", "g"):
                fmt &= FORMAT_PAX
                data = self._read(pos, h.size) if h.size > 0 else b""
                pos += ((h.size + BLOCK - 1) // BLOCK) * BLOCK
                recs = _parse_pax(data)
                if flag == "g":
                    raise FormatError(
                        f"unsupported input tar entry: global PAX header at offset {raw_offset}")
                pax = recs
                continue
            if flag in ("L", "K"):
                fmt &= FORMAT_GNU
                data = self._read(pos, h.size) if h.size > 0 else b""
                pos += ((h.size + BLOCK - 1) // BLOCK) * BLOCK
                if flag == "L":
                    long_name = _s(_parse_string(data))
                else:
                    long_link = _s(_parse_string(data))
                continue
            if pax is not None:
                _merge_pax(h, pax)
            if long_name is not None:
                h.name = long_name
            if long_link is not None:
                h.linkname = long_link
            if flag == "\x00":
                h.typeflag = "5" if h.name.endswith("/") else "0"
            if fmt & FORMAT_USTAR and fmt & FORMAT_PAX:
                fmt = FORMAT_USTAR
            h.format = fmt
            if h.size < 0:
                raise FormatError(f"tar entry {h.name!r} has negative size")
            data_size = 0 if h.typeflag in HEADER_ONLY_TYPES else h.size
            if h.typeflag == "S":
                raise FormatError(f"unsupported input tar entry {h.name!r}: GNU sparse file")
            return TarMember(header=h, raw_offset=raw_offset, data_offset=pos, data_size=data_size)

    def _header(self, blk: bytes, pos: int) -> tuple[TarHeader, int]:
        fmt = _get_format(blk)
        if fmt == FORMAT_UNKNOWN:
            raise FormatError(f"tar: invalid header (bad checksum or magic) at offset {pos}")
        h = TarHeader(
            name=_s(_parse_string(blk[0:100])),
            typeflag=chr(blk[156]),
            linkname=_s(_parse_string(blk[157:257])),
            size=_parse_numeric(blk[124:136], "size"),
            mode=_parse_numeric(blk[100:108], "mode"),
            uid=_parse_numeric(blk[108:116], "uid"),
            gid=_parse_numeric(blk[116:124], "gid"),
            mtime=_parse_numeric(blk[136:148], "mtime") * NS,
        )
        hfmt = FORMAT_UNKNOWN
        if fmt > FORMAT_V7:
            h.uname = _s(_parse_string(blk[265:297]))
            h.gname = _s(_parse_string(blk[297:329]))
            h.devmajor = _parse_numeric(blk[329:337], "devmajor")
            h.devminor = _parse_numeric(blk[337:345], "devminor")
            prefix = b""
            if fmt & (FORMAT_USTAR | FORMAT_PAX):
                hfmt = fmt
                prefix = _parse_string(blk[345:500])
                if not blk.isascii():
                    hfmt = FORMAT_UNKNOWN
                fields = (blk[124:136], blk[100:108], blk[108:116], blk[116:124], blk[136:148],
                          blk[329:337], blk[337:345])
                if not all(f[-1] == 0 for f in fields):
                    hfmt = FORMAT_UNKNOWN
            elif fmt & FORMAT_STAR:
                prefix = _parse_string(blk[345:476])
                h.atime = _parse_numeric(blk[476:488], "atime") * NS
                h.ctime = _parse_numeric(blk[488:500], "ctime") * NS
            elif fmt & FORMAT_GNU:
                hfmt = fmt
                if blk[345]:
                    h.atime = _parse_numeric(blk[345:357], "atime") * NS
                if blk[357]:
                    h.ctime = _parse_numeric(blk[357:369], "ctime") * NS
            if prefix:
                h.name = _s(prefix) + "/" + h.name
        return h, hfmt


# ---------------------------------------------------------------------------------------------------------
# writing


def _fits_base256(n: int, x: int) -> bool:
    if n <= 8:
        bits = (n - 1) * 8
        return -(1 << bits) <= x < (1 << bits)
    return True


def _fits_octal(n: int, x: int) -> bool:
    return x >= 0 and (n >= 22 or x < 1 << ((n - 1) * 3))


def _is_ascii(b: bytes) -> bool:
    return b.isascii()


def _to_ascii(b: bytes) -> bytes:
    if _is_ascii(b):
        return b
    return bytes(c for c in b if c < 0x80 and c != 0)


def _valid_pax_record(k: str, v: str) -> bool:
    if k == "" or "=" in k:
        return False
    if k in ("path", "linkpath", "uname", "gname"):
        return "\x00" not in v
    return "\x00" not in k


def _split_ustar_path(name: bytes) -> tuple[bytes, bytes] | None:
    length = len(name)
    if length <= NAME_SIZE or not _is_ascii(name):
        return None
    if length > PREFIX_SIZE + 1:
        length = PREFIX_SIZE + 1
    elif name[length - 1 : length] == b"/":
        length -= 1
    i = name.rfind(b"/", 0, length)
    nlen = len(name) - i - 1
    if i <= 0 or nlen > NAME_SIZE or nlen == 0 or i > PREFIX_SIZE:
        return None
    return name[:i], name[i + 1 :]


def _pax_time(ns: int) -> str:
    secs, nsecs = divmod(ns, NS)
    if nsecs == 0:
        return str(secs)
    sign = ""
    if secs < 0:
        sign = "-"
        secs = -(secs + 1)
        nsecs = -(nsecs - NS)
    return f"{sign}{secs}.{nsecs:09d}".rstrip("0")


def _pax_record(k: str, v: str) -> bytes:
    kb, vb = _b(k), _b(v)
    size = len(kb) + len(vb) + 3
    size += len(str(size))
    rec = str(size).encode() + b" " + kb + b"=" + vb + b"\n"
    if len(rec) != size:
        size = len(rec)
        rec = str(size).encode() + b" " + kb + b"=" + vb + b"\n"
    return rec


class _Block:
    def __init__(self) -> None:
        self.b = bytearray(BLOCK)
        self.err = False

    def string(self, off: int, n: int, s: bytes) -> None:
        if len(s) > n:
            self.err = True
        self.b[off : off + n] = bytes(n)
        chunk = s[:n]
        self.b[off : off + len(chunk)] = chunk
        if len(s) > n and self.b[off + n - 1] == ord("/"):
            k = len(s[: n - 1].rstrip(b"/"))
            self.b[off + k] = 0

    def octal(self, off: int, n: int, x: int) -> None:
        if not _fits_octal(n, x):
            x = 0
            self.err = True
        s = format(x, "o")
        pad = n - len(s) - 1
        if pad > 0:
            s = "0" * pad + s
        self.string(off, n, s.encode())

    def numeric(self, off: int, n: int, x: int) -> None:
        if _fits_octal(n, x):
            self.octal(off, n, x)
            return
        if _fits_base256(n, x):
            v = x & ((1 << (8 * n)) - 1)
            raw = bytearray(v.to_bytes(n, "big"))
            raw[0] |= 0x80
            self.b[off : off + n] = raw
            return
        self.octal(off, n, 0)
        self.err = True

    def finish(self, fmt: int) -> bytes:
        if fmt & FORMAT_GNU:
            self.b[257:263] = b"ustar "
            self.b[263:265] = b" \x00"
        else:
            self.b[257:263] = b"ustar\x00"
            self.b[263:265] = b"00"
        self.b[148:156] = b"        "
        chk = sum(self.b)
        self.b[148:155] = b"%06o\x00" % chk
        self.b[155] = ord(" ")
        return bytes(self.b)


def _template(h: TarHeader, name: bytes, link: bytes, uname: bytes, gname: bytes, mtime: int,
              ascii_only: bool, gnu: bool) -> _Block:
    blk = _Block()
    conv = _to_ascii if ascii_only else (lambda x: x)
    num = blk.numeric if gnu else blk.octal
    blk.b[156] = ord(h.typeflag)
    blk.string(0, 100, conv(name))
    blk.string(157, 100, conv(link))
    num(100, 8, h.mode)
    num(108, 8, h.uid)
    num(116, 8, h.gid)
    num(124, 12, h.size)
    num(136, 12, mtime)
    blk.string(265, 32, conv(uname))
    blk.string(297, 32, conv(gname))
    num(329, 8, h.devmajor)
    num(337, 8, h.devminor)
    return blk


def _raw_file(name: bytes, data: bytes, flag: str, fmt: int) -> bytes:
    name = _to_ascii(name)[:NAME_SIZE].rstrip(b"/")
    blk = _Block()
    blk.b[156] = ord(flag)
    blk.string(0, 100, name)
    blk.octal(100, 8, 0)
    blk.octal(108, 8, 0)
    blk.octal(116, 8, 0)
    blk.octal(124, 12, len(data))
    blk.octal(136, 12, 0)
    return blk.finish(fmt) + data + bytes(-len(data) % BLOCK)


def _round_second(ns: int) -> int:
    secs, rem = divmod(ns, NS)
    return (secs + (1 if rem * 2 >= NS else 0)) * NS


_OCTAL8 = 8**7
_OCTAL12 = 8**11


def _fast_ustar(h: TarHeader) -> bytes | None:
    """The common case (plain USTAR fits, no PAX records) built in one go; None when it does not apply.

    Gives the same bytes as the general path: Go picks USTAR whenever it can.
    """
    if h.format not in (FORMAT_USTAR, FORMAT_UNKNOWN) or h.pax_records or h.typeflag == "\x00":
        return None
    mtime = h.mtime
    if mtime is not None and (mtime % NS or not 0 <= mtime < _OCTAL12 * NS):
        return None
    if h.format == FORMAT_USTAR and (h.atime is not None or h.ctime is not None):
        return None
    try:
        name, link = h.name.encode("ascii"), h.linkname.encode("ascii")
        uname, gname = h.uname.encode("ascii"), h.gname.encode("ascii")
    except UnicodeEncodeError:
        return None
    if (len(name) > NAME_SIZE or len(link) > NAME_SIZE or len(uname) > 32 or len(gname) > 32
            or b"\x00" in name + link + uname + gname):
        return None
    if h.typeflag in ("0", "3", "4", "6") and name.endswith(b"/"):
        return None
    nums = (h.mode, h.uid, h.gid, h.devmajor, h.devminor)
    if not all(0 <= n < _OCTAL8 for n in nums) or not 0 <= h.size < _OCTAL12:
        return None
    secs = 0 if mtime is None else mtime // NS
    blk = bytearray(b"".join((
        name.ljust(100, b"\x00"), b"%07o\x00" % h.mode, b"%07o\x00" % h.uid, b"%07o\x00" % h.gid,
        b"%011o\x00" % h.size, b"%011o\x00" % secs, b"        ", h.typeflag.encode("latin-1"),
        link.ljust(100, b"\x00"), b"ustar\x0000", uname.ljust(32, b"\x00"), gname.ljust(32, b"\x00"),
        b"%07o\x00" % h.devmajor, b"%07o\x00" % h.devminor, bytes(167),
    )))
    blk[148:156] = b"%06o\x00 " % sum(blk)
    return bytes(blk)


def encode_go_header(h: TarHeader) -> bytes:
    """The header blocks Go's ``tar.Writer.WriteHeader(h)`` emits (extension headers included)."""
    fast = _fast_ustar(h)
    if fast is not None:
        return fast
    typeflag = h.typeflag
    name, link, uname, gname = _b(h.name), _b(h.linkname), _b(h.uname), _b(h.gname)
    if typeflag == "\x00":
        typeflag = "5" if name.endswith(b"/") else "0"
    mtime, atime, ctime = h.mtime, h.atime, h.ctime
    if h.format == FORMAT_UNKNOWN:
        mtime = None if mtime is None else _round_second(mtime)
        atime = ctime = None
    allowed = FORMAT_USTAR | FORMAT_PAX | FORMAT_GNU
    pax: dict[str, bytes] = {}
    prefer_pax = False
    recs = h.pax_records

    def verify_string(s: bytes, size: int, key: str) -> None:
        nonlocal allowed
        too_long = len(s) > size
        if b"\x00" in s or (too_long and key not in ("path", "linkpath")):
            allowed &= ~FORMAT_GNU
        if not _is_ascii(s) or too_long:
            if not (key == "path" and _split_ustar_path(s) is not None):
                allowed &= ~FORMAT_USTAR
            pax[key] = s
        if key in recs and _b(recs[key]) == s:
            pax[key] = s

    def verify_numeric(n: int, size: int, key: str | None) -> None:
        nonlocal allowed
        if not _fits_base256(size, n):
            allowed &= ~FORMAT_GNU
        if not _fits_octal(size, n):
            allowed &= ~FORMAT_USTAR
            if key is None:
                allowed &= ~FORMAT_PAX
            else:
                pax[key] = str(n).encode()
        if key is not None and recs.get(key) == str(n):
            pax[key] = str(n).encode()

    def verify_time(ts: int | None, size: int, key: str) -> None:
        nonlocal allowed, prefer_pax
        if ts is None:
            return
        secs = ts // NS
        if not _fits_base256(size, secs):
            allowed &= ~FORMAT_GNU
        is_mtime = key == "mtime"
        fits = _fits_octal(size, secs)
        if not is_mtime or not fits:
            allowed &= ~FORMAT_USTAR
        if not is_mtime or not fits or ts % NS:
            prefer_pax = True
            pax[key] = _pax_time(ts).encode()
        if recs.get(key) == _pax_time(ts):
            pax[key] = _pax_time(ts).encode()

    verify_string(name, 100, "path")
    verify_string(link, 100, "linkpath")
    verify_string(uname, 32, "uname")
    verify_string(gname, 32, "gname")
    verify_numeric(h.mode, 8, None)
    verify_numeric(h.uid, 8, "uid")
    verify_numeric(h.gid, 8, "gid")
    verify_numeric(h.size, 12, "size")
    verify_numeric(h.devmajor, 8, None)
    verify_numeric(h.devminor, 8, None)
    verify_time(mtime, 12, "mtime")
    verify_time(atime, 12, "atime")
    verify_time(ctime, 12, "ctime")

    if typeflag in ("0", "3", "4", "6") and name.endswith(b"/"):
        raise FormatError(f"tar entry {h.name!r}: a file name may not end in '/'")
    if recs:
        for k, v in recs.items():
            if k in pax:
                continue
            if k not in BASIC_KEYS and not k.startswith("GNU.sparse"):
                pax[k] = _b(v)
        allowed &= FORMAT_PAX
    for k, vb in pax.items():
        if not _valid_pax_record(k, _s(vb)):
            allowed &= ~FORMAT_PAX
    if h.format != FORMAT_UNKNOWN:
        want = h.format
        if want & FORMAT_PAX and not prefer_pax:
            want |= FORMAT_USTAR
        allowed &= want
    mtime_secs = 0 if mtime is None else mtime // NS
    hh = TarHeader(name=h.name, typeflag=typeflag, size=h.size, mode=h.mode, uid=h.uid, gid=h.gid,
                   devmajor=h.devmajor, devminor=h.devminor)
    if allowed & FORMAT_USTAR:
        prefix = b""
        split = _split_ustar_path(name)
        if split is not None:
            prefix, name = split
        blk = _template(hh, name, link, uname, gname, mtime_secs, False, False)
        blk.string(345, 155, prefix)
        return blk.finish(FORMAT_USTAR)
    if allowed & FORMAT_PAX:
        out = b""
        if pax:
            data = b"".join(_pax_record(k, _s(pax[k])) for k in sorted(pax))
            d, f = go_split(h.name)
            out = _raw_file(_b(go_join(d, "PaxHeaders.0", f)), data, "x", FORMAT_PAX)
        blk = _template(hh, name, link, uname, gname, mtime_secs, True, False)
        return out + blk.finish(FORMAT_PAX)
    if allowed & FORMAT_GNU:
        out = b""
        if len(name) > NAME_SIZE:
            out += _raw_file(b"././@LongLink", name + b"\x00", "L", FORMAT_GNU)
        if len(link) > NAME_SIZE:
            out += _raw_file(b"././@LongLink", link + b"\x00", "K", FORMAT_GNU)
        blk = _template(hh, name, link, uname, gname, mtime_secs, False, True)
        if atime is not None:
            blk.numeric(345, 12, atime // NS)
        if ctime is not None:
            blk.numeric(357, 12, ctime // NS)
        return out + blk.finish(FORMAT_GNU)
    raise FormatError(f"tar entry {h.name!r} cannot be encoded in USTAR, PAX or GNU format")
