"""The protocol-buffers wire format, field by field (no protoc, no generated code): what the containerd
snapshots API (``snapshot.proxy.wire``) and the CRI image service (``snapshot.cri.messages``) are written
and read with. Unknown fields are skipped by callers, as protobuf requires; malformed bytes raise
:class:`WireError`.
"""

from __future__ import annotations

from collections.abc import Iterator

from lazypull.errors import MountError

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5

Value = int | bytes
"""A field's value: bytes for a length-delimited field (``LEN``: strings, messages), else a number."""


class WireError(MountError):
    """A request that is not valid protobuf."""


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> Iterator[tuple[int, int, Value]]:
    """(field number, wire type, value) of each field; LEN values are bytes, numbers are ints."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wtype = key >> 3, key & 7
        value: Value
        if number == 0:
            raise WireError("field number 0")
        if wtype == VARINT:
            value, pos = _read_varint(data, pos)
        elif wtype == LEN:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise WireError("truncated length-delimited field")
            value, pos = data[pos : pos + length], pos + length
        elif wtype == FIXED64:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wtype == FIXED32:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        else:
            raise WireError(f"unsupported wire type {wtype}")
        if pos > len(data):
            raise WireError("truncated field")
        yield number, wtype, value


def text(value: Value) -> str:
    """A string field's value (UTF-8), or WireError."""
    if not isinstance(value, bytes):
        raise WireError("expected a string field")
    try:
        return value.decode()
    except UnicodeDecodeError as err:
        raise WireError("string field is not UTF-8") from err


def enc_str(number: int, value: str) -> bytes:
    if not value:
        return b""
    raw = value.encode()
    return _varint(number << 3 | LEN) + _varint(len(raw)) + raw


def enc_msg(number: int, raw: bytes) -> bytes:
    return _varint(number << 3 | LEN) + _varint(len(raw)) + raw


def enc_int(number: int, value: int) -> bytes:
    return _varint(number << 3 | VARINT) + _varint(value) if value else b""


def enc_map(number: int, mapping: dict[str, str]) -> bytes:
    return b"".join(enc_msg(number, enc_str(1, k) + enc_str(2, v)) for k, v in sorted(mapping.items()))


def map_entry(raw: bytes) -> tuple[str, str]:
    """One ``map<string, string>`` entry: key=1, value=2."""
    key = value = ""
    for number, _, v in fields(raw):
        if number == 1:
            key = text(v)
        elif number == 2:
            value = text(v)
    return key, value
