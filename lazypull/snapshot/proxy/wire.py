"""Protocol-buffers wire format for the few messages of containerd's snapshots API (no protoc, no
generated code): a tiny field-level encoder/decoder and one function per message.

Messages (``containerd.services.snapshots.v1``, ``containerd.types.Mount``) are represented as dicts;
field numbers are written next to each codec. Unknown fields are skipped, as protobuf requires.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from lazypull.errors import MountError

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5

KIND_VIEW, KIND_ACTIVE, KIND_COMMITTED = 1, 2, 3


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


def fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field; LEN values are bytes, numbers are ints."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wtype = key >> 3, key & 7
        value: Any
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


def text(value: Any) -> str:
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


def decode_request(data: bytes) -> dict[str, Any]:
    """Every snapshots request: snapshotter=1, key=2 (name=2 in Commit), parent=3 (key=3 in Commit),
    labels=4, info=2 (Update, a message), filters=2 (List, repeated), update_mask=3 (Update)."""
    out: dict[str, Any] = {"labels": {}, "strings": {}, "messages": {}, "repeated": []}
    for number, wtype, value in fields(data):
        if number == 4 and wtype == LEN:
            k, v = map_entry(value)
            out["labels"][k] = v
        elif wtype == LEN:
            out["messages"][number] = value
            out["repeated"].append((number, value))
            with contextlib.suppress(UnicodeDecodeError):
                out["strings"][number] = value.decode()
    return out


def decode_info(raw: bytes) -> dict[str, Any]:
    """Info: name=1, parent=2, kind=3, created_at=4, updated_at=5, labels=6."""
    info: dict[str, Any] = {"name": "", "parent": "", "kind": 0, "labels": {}}
    for number, wtype, value in fields(raw):
        if number == 1:
            info["name"] = text(value)
        elif number == 2:
            info["parent"] = text(value)
        elif number == 3 and wtype == VARINT:
            info["kind"] = value
        elif number == 6 and wtype == LEN:
            k, v = map_entry(value)
            info["labels"][k] = v
    return info


def decode_field_mask(raw: bytes) -> list[str]:
    """google.protobuf.FieldMask: paths=1 (repeated string)."""
    return [text(v) for number, _, v in fields(raw) if number == 1]


def enc_timestamp(number: int, seconds: float) -> bytes:
    """google.protobuf.Timestamp: seconds=1, nanos=2."""
    whole = int(seconds)
    return enc_msg(number, enc_int(1, whole) + enc_int(2, int((seconds - whole) * 1e9)))


def enc_info(info: dict[str, Any]) -> bytes:
    return (enc_str(1, info["name"]) + enc_str(2, info.get("parent", "")) + enc_int(3, info["kind"])
            + enc_timestamp(4, info["created"]) + enc_timestamp(5, info["updated"])
            + enc_map(6, info.get("labels", {})))


def enc_mount(mount: dict[str, Any]) -> bytes:
    """containerd.types.Mount: type=1, source=2, target=3, options=4 (repeated)."""
    return (enc_str(1, mount["type"]) + enc_str(2, mount["source"])
            + b"".join(enc_str(4, opt) for opt in mount.get("options", [])))


def enc_mounts(mounts: list[dict[str, Any]]) -> bytes:
    """Prepare/View/Mounts responses: mounts=1 (repeated Mount)."""
    return b"".join(enc_msg(1, enc_mount(m)) for m in mounts)


def enc_usage(size: int, inodes: int) -> bytes:
    """UsageResponse: size=1, inodes=2."""
    return enc_int(1, size) + enc_int(2, inodes)
