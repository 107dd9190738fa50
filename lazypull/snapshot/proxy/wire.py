"""The few messages of containerd's snapshots API, on the protobuf codec of :mod:`lazypull.snapshot.protobuf`.

Messages (``containerd.services.snapshots.v1``, ``containerd.types.Mount``) are typed dicts; field
numbers are written next to each codec. Unknown fields are skipped, as protobuf requires.
"""

from __future__ import annotations

import contextlib
from typing import TypedDict

from lazypull.snapshot.protobuf import VARINT, enc_int, enc_map, enc_msg, enc_str, fields, map_entry, text

KIND_VIEW, KIND_ACTIVE, KIND_COMMITTED = 1, 2, 3


class Request(TypedDict):
    """What a snapshots request carries: its labels, and its other length-delimited fields by number
    (as text where they are UTF-8)."""

    labels: dict[str, str]
    strings: dict[int, str]
    messages: dict[int, bytes]


class LabelUpdate(TypedDict):
    """What ``Update`` changes of a snapshot: its labels (the snapshot named by ``name``)."""

    name: str
    labels: dict[str, str]


class DecodedInfo(LabelUpdate):
    """Info as a request carries it (no times)."""

    parent: str
    kind: int


class Info(DecodedInfo):
    """Info as answered: name=1, parent=2, kind=3, created_at=4, updated_at=5, labels=6."""

    created: float
    updated: float


class Mount(TypedDict):
    """containerd.types.Mount: type=1, source=2, target=3 (not used), options=4 (repeated)."""

    type: str
    source: str
    options: list[str]


def decode_request(data: bytes) -> Request:
    """Every snapshots request: snapshotter=1, key=2 (name=2 in Commit), parent=3 (key=3 in Commit),
    labels=4, info=2 (Update, a message), filters=2 (List, repeated: not read), update_mask=3 (Update)."""
    out: Request = {"labels": {}, "strings": {}, "messages": {}}
    for number, _, value in fields(data):
        if not isinstance(value, bytes):
            continue
        if number == 4:
            k, v = map_entry(value)
            out["labels"][k] = v
        else:
            out["messages"][number] = value
            with contextlib.suppress(UnicodeDecodeError):
                out["strings"][number] = value.decode()
    return out


def decode_info(raw: bytes) -> DecodedInfo:
    """Info: name=1, parent=2, kind=3, created_at=4, updated_at=5 (not read), labels=6."""
    info: DecodedInfo = {"name": "", "parent": "", "kind": 0, "labels": {}}
    for number, wtype, value in fields(raw):
        if number == 1:
            info["name"] = text(value)
        elif number == 2:
            info["parent"] = text(value)
        elif number == 3 and wtype == VARINT and isinstance(value, int):
            info["kind"] = value
        elif number == 6 and isinstance(value, bytes):
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


def enc_info(info: Info) -> bytes:
    return (enc_str(1, info["name"]) + enc_str(2, info["parent"]) + enc_int(3, info["kind"])
            + enc_timestamp(4, info["created"]) + enc_timestamp(5, info["updated"])
            + enc_map(6, info["labels"]))


def enc_mount(mount: Mount) -> bytes:
    """containerd.types.Mount: type=1, source=2, target=3, options=4 (repeated)."""
    return (enc_str(1, mount["type"]) + enc_str(2, mount["source"])
            + b"".join(enc_str(4, opt) for opt in mount["options"]))


def enc_mounts(mounts: list[Mount]) -> bytes:
    """Prepare/View/Mounts responses: mounts=1 (repeated Mount)."""
    return b"".join(enc_msg(1, enc_mount(m)) for m in mounts)


def enc_usage(size: int, inodes: int) -> bytes:
    """UsageResponse: size=1, inodes=2."""
    return enc_int(1, size) + enc_int(2, inodes)
