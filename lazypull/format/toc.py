"""The TOC ("table of contents") model and its JSON forms.

Two JSON schemas are read (format.md 1.6 and 3.2):

* eStargz ``JTOC`` (also the zstd:chunked TOC of stargz-snapshotter): ``{"version": 1, "entries": [...]}``
  with keys ``name type size modtime linkName mode uid gid userName groupName offset innerOffset devMajor
  devMinor xattrs digest chunkOffset chunkSize chunkDigest`` in that order, all but name/type omitted when
  zero. Written as Go's ``json.MarshalIndent(toc, "", "\\t")``: tab indentation, ``": "`` separators, no
  trailing newline, ``& < >`` escaped as ``\\u0026 \\u003c \\u003e``, invalid UTF-8 as ``\\ufffd``,
  xattr values base64 (std alphabet, padded), xattr keys sorted.
* containers/storage ``minimal.TOC``: same idea plus ``endOffset``, ``chunkType`` (``"zeros"``),
  ``accesstime``/``changetime`` and a top-level ``tarSplitDigest``; no user/group names, no innerOffset.

Keys are matched case-insensitively and unknown keys are ignored, as Go's ``encoding/json`` does.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from lazypull.format.errors import FormatError

TOC_TAR_NAME = "stargz.index.json"
ENTRY_TYPES = frozenset({"dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"})


_NonNegative = Annotated[int, msgspec.Meta(ge=0)]
_EntryType = Literal["dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"]


class TOCEntry(msgspec.Struct, rename="camel", forbid_unknown_fields=True, gc=False):
    """One TOC entry; field names mirror the JSON keys (format.md 1.6).

    A msgspec ``Struct``: :func:`parse_toc` decodes the JSON straight into entries in C (values type- and
    range-checked there), falling back to the general rules for anything unusual. ``gc=False``: entries
    hold only strings, numbers and the xattrs dict, never cycles, so the collector need not track them.
    """

    name: str
    if TYPE_CHECKING:
        type: str
    else:
        type: _EntryType    # decoding refuses other types (the general path names the error)
    size: _NonNegative = 0
    if TYPE_CHECKING:
        modtime: datetime | None = None
    else:
        # While decoding the RFC 3339 text (null refused), replaced by its datetime before anyone sees it.
        modtime: str = None
    link_name: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    offset: _NonNegative = 0
    inner_offset: _NonNegative = 0
    dev_major: int = 0
    dev_minor: int = 0
    if TYPE_CHECKING:
        xattrs: dict[str, bytes] = msgspec.field(default_factory=dict)
    else:
        # While decoding the base64 text of the values, replaced by the bytes before anyone sees them.
        xattrs: dict[str, str] = msgspec.field(default_factory=dict)
    digest: str = ""
    chunk_offset: _NonNegative = 0
    chunk_size: _NonNegative = 0
    chunk_digest: str = ""
    end_offset: _NonNegative = 0
    """containers/storage only: c-offset just after the last frame of a ``reg`` payload."""
    chunk_type: str = ""
    """containers/storage only: ``"zeros"`` for a hole."""
    num_link: Annotated[int, msgspec.Meta(ge=0, le=0)] = 0
    """Computed by the reader: how many names (and, for dirs, subdirs) refer to this entry. Not read from
    the JSON: decoding takes ``"numLink": 0`` (no change) and refuses other values, which sends the TOC
    down the general path (which ignores the key, as Go does)."""


class TOC:
    """A decoded TOC; ``entries`` are in stored order with names as stored (not normalised).

    ``TOC.lazy`` keeps only the JSON: the reader owns (and normalises) the entries it decoded, and a
    caller that wants the TOC's own entries gets them decoded afresh on first use.
    """

    __slots__ = ("_entries", "_json", "schema", "tar_split_digest", "version")

    def __init__(self, entries: list[TOCEntry], version: int = 1, tar_split_digest: str = "",
                 schema: str = "estargz") -> None:
        self._entries: list[TOCEntry] | None = entries
        self._json = b""
        self.version = version
        self.tar_split_digest = tar_split_digest
        self.schema = schema
        """``"estargz"`` (JTOC) or ``"cs"`` (containers/storage minimal.TOC)."""

    @classmethod
    def lazy(cls, data: bytes, version: int, tar_split_digest: str, schema: str) -> TOC:
        """A TOC of already validated JSON ``data`` whose entries are decoded when first asked for."""
        toc = cls([], version, tar_split_digest, schema)
        toc._entries = None
        toc._json = data
        return toc

    @property
    def entries(self) -> list[TOCEntry]:
        if self._entries is None:
            self._entries = parse_toc(self._json).entries
        return self._entries

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TOC):
            return NotImplemented
        return ((self.entries, self.version, self.tar_split_digest, self.schema)
                == (other.entries, other.version, other.tar_split_digest, other.schema))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"TOC(entries=<{len(self.entries)}>, version={self.version}, "
                f"tar_split_digest={self.tar_split_digest!r}, schema={self.schema!r})")


# ---------------------------------------------------------------------------------------------------------
# decoding

_INT_WRITTEN = {
    "size": "size", "mode": "mode", "uid": "uid", "gid": "gid", "offset": "offset",
    "innerOffset": "inner_offset", "devMajor": "dev_major", "devMinor": "dev_minor",
    "chunkOffset": "chunk_offset", "chunkSize": "chunk_size", "endOffset": "end_offset",
}
_STR_WRITTEN = {
    "name": "name", "type": "type", "linkName": "link_name", "userName": "user_name",
    "groupName": "group_name", "digest": "digest", "chunkDigest": "chunk_digest", "chunkType": "chunk_type",
}
"""The keys as writers spell them (no ``lower()`` needed): the fast path of :func:`_entry_from_json`."""
_INT, _STR, _MODTIME, _XATTRS = range(4)
_KEYS: dict[str, tuple[str, int]] = {
    **{key.lower(): (attr, _INT) for key, attr in _INT_WRITTEN.items()},
    **{key.lower(): (attr, _STR) for key, attr in _STR_WRITTEN.items()},
    "modtime": ("modtime", _MODTIME), "xattrs": ("xattrs", _XATTRS),
}
"""Lower-cased JSON key -> (TOCEntry attribute, kind of value): Go matches keys case-insensitively."""
_NON_NEGATIVE = ("size", "offset", "inner_offset", "chunk_offset", "chunk_size", "end_offset")
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))\Z"
)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")


def parse_rfc3339(text: str) -> datetime | None:
    """Go's ``time.Parse(time.RFC3339, s)``; None when it does not parse (readers ignore bad times)."""
    if (len(text) == 20 and text[19] in "Zz" and text[10] in "Tt" and text[4] == "-" and text[7] == "-"
            and text[13] == ":" and text[16] == ":"):
        # What Go writes (whole seconds, UTC): fixed positions, no regex. ASCII digits only here: the
        # regex's \d also takes other Unicode digits, which the general path below keeps accepting.
        digits = text[:4] + text[5:7] + text[8:10] + text[11:13] + text[14:16] + text[17:19]
        if digits.isascii() and digits.isdigit():
            if text[10] == "T" and text[19] == "Z":     # exactly ISO 8601's form: parsed in C
                try:
                    return datetime.fromisoformat(text)
                except ValueError:
                    return None
            try:
                return datetime(int(digits[:4]), int(digits[4:6]), int(digits[6:8]), int(digits[8:10]),
                                int(digits[10:12]), int(digits[12:]), tzinfo=UTC)
            except ValueError:
                return None
    m = _RFC3339.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, sec = (int(m.group(i)) for i in range(1, 7))
    frac = m.group(7) or ""
    micro = int((frac + "000000")[:6])
    if m.group(8):
        tz = UTC
    else:
        delta = timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        tz = timezone(-delta if m.group(9) == "-" else delta)
    try:
        return datetime(year, month, day, hour, minute, sec, micro, tzinfo=tz).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def is_digest(value: str) -> bool:
    """A ``sha256:<64 lowercase hex>`` string."""
    return _DIGEST.match(value) is not None


def _decode_xattrs(index: int, value: object, into: dict[str, bytes]) -> None:
    """Add the base64-decoded values of a JSON ``xattrs`` object to ``into``."""
    if not isinstance(value, dict):
        raise FormatError(f"TOC entry {index}: 'xattrs' must be an object")
    for xk, xv in value.items():
        if not isinstance(xv, str):
            raise FormatError(f"TOC entry {index}: xattr {xk!r} must be a base64 string")
        try:
            into[xk] = base64.b64decode(xv, validate=True)
        except (binascii.Error, ValueError) as err:
            raise FormatError(f"TOC entry {index}: xattr {xk!r} is not valid base64") from err


def _other_field(index: int, key: str, value: Any, fields: dict[str, Any],
                 times: dict[str, datetime | None]) -> None:
    """Apply one JSON key of an entry to ``fields`` (the general case of :func:`_entry_from_json`)."""
    spec = _KEYS.get(key.lower())
    if spec is None or value is None:
        return          # unknown keys are ignored, as encoding/json does; null leaves the field as it is
    attr, kind = spec
    if kind == _INT:
        if not isinstance(value, int) or isinstance(value, bool):
            raise FormatError(f"TOC entry {index}: {key!r} must be an integer, not {value!r}")
    elif kind == _STR:
        if not isinstance(value, str):
            raise FormatError(f"TOC entry {index}: {key!r} must be a string, not {value!r}")
    elif kind == _MODTIME:
        if not isinstance(value, str):
            raise FormatError(f"TOC entry {index}: 'modtime' must be a string")
        parsed = times.get(value, False)
        if parsed is False:
            parsed = times[value] = parse_rfc3339(value)
        value = parsed
    else:
        _decode_xattrs(index, value, fields.setdefault("xattrs", {}))
        return
    fields[attr] = value


def _entry_from_json(index: int, obj: Any, times: dict[str, datetime | None]) -> TOCEntry:
    """One entry, validated; ``times`` caches parsed modtimes (a layer has few distinct ones).

    Keys are applied in document order, so a later spelling of a key (``Size`` after ``size``) wins as in
    Go; ``null`` leaves a field as it was; xattrs objects of several spellings are merged.
    """
    if not isinstance(obj, dict):
        raise FormatError(f"TOC entry {index} is not a JSON object")
    fields: dict[str, Any] = {}
    for key, value in obj.items():
        # Fast paths for a key spelt as writers spell it with a value of the right type; anything else
        # (other spellings, null, wrong types, xattrs, unknown keys) goes through _other_field.
        cls = type(value)
        if cls is str:
            attr = _STR_WRITTEN.get(key)
            if attr is not None:
                fields[attr] = value
                continue
            if key == "modtime":
                parsed = times.get(value, False)
                if parsed is False:
                    parsed = times[value] = parse_rfc3339(value)
                fields["modtime"] = parsed
                continue
        elif cls is int:
            attr = _INT_WRITTEN.get(key)
            if attr is not None:
                fields[attr] = value
                continue
        _other_field(index, key, value, fields, times)
    name = fields.get("name")
    kind_name = fields.get("type")
    if kind_name not in ENTRY_TYPES:
        raise FormatError(f"TOC entry {index} ({name or ''!r}) has unknown type {kind_name or ''!r}")
    if name is None and kind_name != "chunk":
        raise FormatError(f"TOC entry {index} has no name")
    for attr in _NON_NEGATIVE:
        if fields.get(attr, 0) < 0:
            raise FormatError(f"TOC entry {index} ({name or ''!r}): negative {attr}")
    if name is None:
        fields["name"] = ""
    return TOCEntry(**fields)


class _WireTOC(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """The top level of a TOC as writers spell it (the fast path of :func:`parse_toc`)."""

    version: int = 0
    entries: list[TOCEntry] = msgspec.field(default_factory=list)
    tar_split_digest: str = ""


_DECODER = msgspec.json.Decoder(_WireTOC)


def parse_toc(data: bytes) -> TOC:
    """Decode TOC JSON of either schema; raises FormatError on anything not decodable."""
    fast = _parse_fast(data)
    return fast if fast is not None else _parse_general(data)


def _parse_fast(data: bytes) -> TOC | None:
    """The TOC, when every key is spelt as writers spell it (decoded and checked in C), else None.

    None sends the TOC to :func:`_parse_general`, which decides (and names the error) as always: keys of
    other spellings or unknown ones, nulls, wrong types, negative sizes, JSON that only Python's parser
    takes (lone surrogates, NaN, a BOM), bad xattrs, an unknown type and a non-zero ``numLink`` (ignored by
    the general rules). A key given twice: the last one wins in both.
    """
    try:
        wire = _DECODER.decode(data)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return None
    entries = wire.entries
    times: dict[str, datetime | None] = {}
    cs = False
    for e in entries:
        if e.end_offset or e.chunk_type:
            cs = True
        text: Any = e.modtime
        if text is not None:
            parsed: Any = times.get(text, False)
            if parsed is False:
                parsed = times[text] = parse_rfc3339(text)
            e.modtime = parsed
        if e.xattrs:
            values: dict[str, Any] = e.xattrs
            try:
                e.xattrs = {k: base64.b64decode(v, validate=True) for k, v in values.items()}
            except (binascii.Error, ValueError):
                return None
    schema = "cs" if wire.tar_split_digest or cs else "estargz"
    return TOC(entries, wire.version, wire.tar_split_digest, schema)


def _parse_general(data: bytes) -> TOC:
    """Go's ``encoding/json`` rules written out: any key spelling, nulls, merged xattrs, clear errors."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise FormatError(f"TOC is not valid JSON: {err}") from err
    if not isinstance(obj, dict):
        raise FormatError("TOC JSON is not an object")
    fields = {k.lower(): v for k, v in obj.items()}
    raw_entries = fields.get("entries")
    if raw_entries is None:
        raw_entries = []
    if not isinstance(raw_entries, list):
        raise FormatError("TOC 'entries' is not a list")
    version = fields.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise FormatError(f"TOC 'version' is not an integer: {version!r}")
    tar_split = fields.get("tarsplitdigest", "")
    if not isinstance(tar_split, str):
        raise FormatError("TOC 'tarSplitDigest' is not a string")
    times: dict[str, datetime | None] = {}
    entries = [_entry_from_json(i, e, times) for i, e in enumerate(raw_entries)]
    schema = "cs" if tar_split or any(e.end_offset or e.chunk_type for e in entries) else "estargz"
    return TOC(entries=entries, version=version, tar_split_digest=tar_split, schema=schema)


# ---------------------------------------------------------------------------------------------------------
# encoding (Go MarshalIndent)

_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: re.Match[str]) -> str:
    c = m.group(0)
    if c in _ESCAPES:
        return _ESCAPES[c]
    if "\ud800" <= c <= "\udfff":
        return "\\ufffd"
    return f"\\u{ord(c):04x}"


def go_json_string(value: str) -> str:
    """A JSON string literal exactly as Go's encoding/json writes it (HTML-safe escaping)."""
    return '"' + _ESCAPE.sub(_escape_char, value) + '"'


def format_modtime(value: datetime) -> str:
    """RFC 3339 in UTC, whole seconds (the caller has rounded)."""
    t = value.astimezone(UTC)
    return (f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z")


def _entry_fields(e: TOCEntry) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = [("name", go_json_string(e.name)), ("type", go_json_string(e.type))]
    if e.size:
        out.append(("size", str(e.size)))
    if e.modtime is not None:
        out.append(("modtime", go_json_string(format_modtime(e.modtime))))
    if e.link_name:
        out.append(("linkName", go_json_string(e.link_name)))
    for key, num in (("mode", e.mode), ("uid", e.uid), ("gid", e.gid)):
        if num:
            out.append((key, str(num)))
    if e.user_name:
        out.append(("userName", go_json_string(e.user_name)))
    if e.group_name:
        out.append(("groupName", go_json_string(e.group_name)))
    for key, num in (("offset", e.offset), ("innerOffset", e.inner_offset),
                     ("devMajor", e.dev_major), ("devMinor", e.dev_minor)):
        if num:
            out.append((key, str(num)))
    if e.xattrs:
        lines = [
            f"\t\t\t\t{go_json_string(k)}: {go_json_string(base64.b64encode(e.xattrs[k]).decode())}"
            for k in sorted(e.xattrs)
        ]
        out.append(("xattrs", "{\n" + ",\n".join(lines) + "\n\t\t\t}"))
    if e.digest:
        out.append(("digest", go_json_string(e.digest)))
    if e.chunk_offset:
        out.append(("chunkOffset", str(e.chunk_offset)))
    if e.chunk_size:
        out.append(("chunkSize", str(e.chunk_size)))
    if e.chunk_digest:
        out.append(("chunkDigest", go_json_string(e.chunk_digest)))
    return out


def encode_toc(entries: Sequence[TOCEntry] | Iterable[TOCEntry], version: int = 1) -> bytes:
    """The JTOC JSON bytes Go's ``json.MarshalIndent(toc, "", "\\t")`` would produce."""
    blocks = [
        "\t\t{\n" + ",\n".join(f'\t\t\t"{k}": {v}' for k, v in _entry_fields(e)) + "\n\t\t}"
        for e in entries
    ]
    body = "[\n" + ",\n".join(blocks) + "\n\t]" if blocks else "[]"
    text = '{\n\t"version": ' + str(version) + ',\n\t"entries": ' + body + "\n}"
    return text.encode("utf-8")
