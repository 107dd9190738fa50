"""ctr-remote record files."""

from __future__ import annotations

import pytest

from lazypull.format import FormatError
from lazypull.format.record import parse_record

RECORD = b"""{"path":"/bin/sh","manifestDigest":"sha256:aa","layerIndex":0}
{"path":"/etc/passwd","manifestDigest":"sha256:aa","layerIndex":1}
{"path":"/bin/sh","manifestDigest":"sha256:aa","layerIndex":0}

{"path":"lib/x.so"} {"path":"/other","manifestDigest":"sha256:bb","layerIndex":0}
"""


def test_all_paths_in_order_without_duplicates() -> None:
    assert parse_record(RECORD) == ["/bin/sh", "/etc/passwd", "lib/x.so", "/other"]


def test_layer_and_manifest_filters() -> None:
    assert parse_record(RECORD, layer_index=1) == ["/etc/passwd", "lib/x.so"]
    assert parse_record(RECORD, layer_index=0, manifest_digest="sha256:aa") == ["/bin/sh", "lib/x.so"]


@pytest.mark.parametrize(("data", "message"), [
    (b'{"path": 1}', "no \"path\""),
    (b"[1]", "not a JSON object"),
    (b'{"path": "a"} {oops', "entry 2 is not valid JSON"),
    (b'{"path": "a", "layerIndex": "0"}', "non-integer"),
    (b"\xff", "not UTF-8"),
])
def test_bad_records(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_record(data)
