"""The hand-written protobuf codec and the containerd snapshotter API on it: round trips and hostile bytes."""

from __future__ import annotations

import pytest

from lazypull.snapshot import protobuf
from lazypull.snapshot.proxy import wire


def test_request_fields_and_labels() -> None:
    labels = {"a": "1", "containerd.io/snapshot.ref": "sha256:x"}
    raw = (protobuf.enc_str(1, "lazypull") + protobuf.enc_str(2, "key-1") + protobuf.enc_str(3, "parent")
           + protobuf.enc_map(4, labels) + protobuf.enc_int(9, 7))
    req = wire.decode_request(raw)
    assert req["strings"][2] == "key-1" and req["strings"][3] == "parent"
    assert req["labels"] == {"a": "1", "containerd.io/snapshot.ref": "sha256:x"}


def test_info_round_trip_and_field_mask() -> None:
    info = {"name": "n", "parent": "p", "kind": wire.KIND_COMMITTED, "labels": {"k": "v"},
            "created": 1700000000.5, "updated": 1700000001.0}
    back = wire.decode_info(wire.enc_info(info))
    assert (back["name"], back["parent"], back["kind"], back["labels"]) == ("n", "p", 3, {"k": "v"})
    mask = protobuf.enc_str(1, "labels.k") + protobuf.enc_str(1, "labels")
    assert wire.decode_field_mask(mask) == ["labels.k", "labels"]


def test_mounts_encoding() -> None:
    raw = wire.enc_mounts([{"type": "overlay", "source": "overlay", "options": ["lowerdir=/a:/b"]}])
    [(number, _, mount)] = list(protobuf.fields(raw))
    assert number == 1
    assert [(n, v) for n, _, v in protobuf.fields(mount)] == [(1, b"overlay"), (2, b"overlay"),
                                                          (4, b"lowerdir=/a:/b")]


@pytest.mark.parametrize("raw", [b"\x12\x05ab", b"\x80", b"\x00\x01", b"\x13", b"\x22\x03\x0a\x05a"],
                         ids=["truncated-string", "truncated-varint", "field-zero", "bad-wire-type",
                              "truncated-label"])
def test_hostile_bytes_are_refused(raw: bytes) -> None:
    with pytest.raises(protobuf.WireError):
        wire.decode_request(raw)


def test_non_utf8_strings_are_not_taken_as_keys() -> None:
    assert 2 not in wire.decode_request(b"\x12\x02\xff\xfe")["strings"]
