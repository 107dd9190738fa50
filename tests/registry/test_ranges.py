"""206 answers: Content-Range and multipart/byteranges, including hostile bodies."""

from __future__ import annotations

import pytest

from lazypull.registry._ranges import (
    RangeResponseError,
    merge_spans,
    parse_content_range,
    parse_range_response,
    unsatisfied_total,
)

BLOB = (bytes(range(256)) + b"\r\n--abc\r\n--abc--\r\n") * 4   # payload contains the delimiter


def _multipart(boundary: str, parts: list[tuple[int, int]], total: int | str = len(BLOB)) -> bytes:
    out = b""
    for start, end in parts:
        out += (f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {start}-{end - 1}/{total}\r\n\r\n").encode() + BLOB[start:end]
    return out + f"\r\n--{boundary}--\r\n".encode()


def test_content_range() -> None:
    assert parse_content_range("bytes 0-9/100") == (0, 10, 100)
    assert parse_content_range("bytes 5-5/*") == (5, 6, None)
    assert unsatisfied_total("bytes */1234") == 1234
    for bad in (None, "", "bytes 9-0/100", "bytes 0-100/100", "items 0-1/2", "bytes 0-1"):
        with pytest.raises(RangeResponseError):
            parse_content_range(bad)


def test_single_part() -> None:
    parts, total = parse_range_response("application/octet-stream", "bytes 10-19/1024",
                                        [BLOB[10:15], BLOB[15:20]])
    assert parts == {10: BLOB[10:20]} and total == 1024
    with pytest.raises(RangeResponseError, match="Content-Range says 10"):
        parse_range_response("application/octet-stream", "bytes 10-19/1024", [BLOB[10:15]])


def test_multipart_with_boundary_inside_payload() -> None:
    body = _multipart("abc", [(0, 300), (500, 520)])
    parts, total = parse_range_response('multipart/byteranges; boundary="abc"', None, [body[:7], body[7:]])
    assert parts == {0: BLOB[:300], 500: BLOB[500:520]} and total == len(BLOB)


@pytest.mark.parametrize(("content_type", "body", "message"), [
    ("multipart/byteranges", b"", "without boundary"),
    ("multipart/byteranges; boundary=x", b"nothing here", "no boundary"),
    ("multipart/byteranges; boundary=x", b"--x\r\nContent-Range: bytes 0-99/1024\r\n\r\nshort", "truncated"),
    ("multipart/byteranges; boundary=x", b"--x\r\nContent-Range: nonsense\r\n\r\n", "bad Content-Range"),
    ("multipart/byteranges; boundary=x", b"--x\r\nno end of headers", "not terminated"),
    ("multipart/byteranges; boundary=x", b"--x--", "no parts"),
    ("multipart/byteranges; boundary=x", b"--x\r\nContent-Range: bytes 0-1/2\r\n\r\nab", "not closed"),
])
def test_hostile_multipart(content_type: str, body: bytes, message: str) -> None:
    with pytest.raises(RangeResponseError, match=message):
        parse_range_response(content_type, None, [body])


def test_merge_spans_joins_overlaps_touching_and_gaps() -> None:
    """The one range merger: the client joins overlapping and touching spans (gap 0: servers reject or
    collapse overlapping Range specs), the lazy layer also neighbours closer than its merge_gap."""
    spans = [(50, 60), (0, 10), (10, 20), (5, 8), (0, 10), (30, 40), (61, 70)]
    assert merge_spans(spans) == [(0, 20), (30, 40), (50, 60), (61, 70)]
    assert merge_spans(spans, gap=1) == [(0, 20), (30, 40), (50, 70)]
    assert merge_spans(spans, gap=9) == [(0, 20), (30, 40), (50, 70)]
    assert merge_spans(spans, gap=10) == [(0, 70)]
    assert merge_spans([]) == []
