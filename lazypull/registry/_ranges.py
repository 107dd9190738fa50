"""Byte ranges over HTTP: merging the spans a request asks for, and parsing 206 answers (one
``Content-Range`` part, or ``multipart/byteranges``, RFC 9110 14.6).

:func:`merge_spans` is the one range merger: the registry client joins overlapping spans (servers reject
or collapse them) and the lazy layers join neighbouring chunks into one request (``merge_gap``).

A multipart body is read part by part using each part's own ``Content-Range`` for its length,
so a payload that happens to contain the boundary string cannot confuse the parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*\Z", re.IGNORECASE)
_UNSATISFIED = re.compile(r"\s*bytes\s+\*/(\d+)\s*\Z", re.IGNORECASE)
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
MAX_PART_HEADERS = 8 << 10


def merge_spans(spans: Iterable[tuple[int, int]], gap: int = 0) -> list[tuple[int, int]]:
    """Sorted ``(start, end)`` spans covering ``spans``: overlapping ones, touching ones and ones at most
    ``gap`` bytes apart joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1] + gap:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


class RangeResponseError(ValueError):
    """A range answer that does not parse or does not match what was asked."""


def parse_content_range(value: str | None) -> tuple[int, int, int | None]:
    """``bytes START-END/TOTAL`` -> (start, end exclusive, total or None for ``*``)."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        raise RangeResponseError(f"bad Content-Range {value!r}")
    start, last = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if last < start or (total is not None and last >= total):
        raise RangeResponseError(f"inconsistent Content-Range {value!r}")
    return start, last + 1, total


def unsatisfied_total(value: str | None) -> int | None:
    """The total size from a 416 answer's ``Content-Range: bytes */TOTAL``."""
    m = _UNSATISFIED.match(value or "")
    return int(m.group(1)) if m else None


def parse_range_response(content_type: str, content_range: str | None,
                         chunks: Iterable[bytes]) -> tuple[dict[int, bytes], int | None]:
    """The parts of a 206 body as ``{start offset: bytes}`` and the blob's total size if given."""
    if content_type.lower().startswith("multipart/byteranges"):
        m = _BOUNDARY.search(content_type)
        if not m:
            raise RangeResponseError(f"multipart answer without boundary: {content_type!r}")
        return _parse_multipart(m.group(1).encode(), b"".join(chunks))
    start, end, total = parse_content_range(content_range)
    body = b"".join(chunks)
    if len(body) != end - start:
        raise RangeResponseError(f"range body has {len(body)} bytes, Content-Range says {end - start}")
    return {start: body}, total


def _parse_multipart(boundary: bytes, body: bytes) -> tuple[dict[int, bytes], int | None]:
    delimiter = b"--" + boundary
    parts: dict[int, bytes] = {}
    total: int | None = None
    pos = body.find(delimiter)
    if pos < 0:
        raise RangeResponseError("multipart body has no boundary")
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):
            break                                   # closing delimiter
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0 or head_end - pos > MAX_PART_HEADERS:
            raise RangeResponseError("multipart part headers not terminated")
        headers: dict[str, str] = {}
        for line in body[pos:head_end].decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        start, end, part_total = parse_content_range(headers.get("content-range"))
        total = part_total if part_total is not None else total
        data_start = head_end + 4
        data = body[data_start:data_start + (end - start)]
        if len(data) != end - start:
            raise RangeResponseError(f"multipart part {start}-{end - 1} is truncated")
        parts[start] = data
        pos = body.find(delimiter, data_start + len(data))
        if pos < 0:
            raise RangeResponseError("multipart body is not closed")
    if not parts:
        raise RangeResponseError("multipart body has no parts")
    return parts, total
