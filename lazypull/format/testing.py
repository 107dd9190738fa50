"""A shared check every Compressor/Decompressor pair must pass (like estargz's CompressionTestSuite).

Used by the tests for gzip and zstd; a new compression plugs in by passing the same check.
"""

from __future__ import annotations

import os

from lazypull.format.compression import Compressor, Decompressor
from lazypull.format.errors import FormatError


def check_compression(compressor: Compressor, decompressor: Decompressor) -> None:
    """Raise AssertionError if the pair does not behave as the writer and reader rely on."""
    payloads = [b"", b"x", os.urandom(3000), b"abc" * 50_000]
    members: list[bytes] = []
    for data in payloads:
        m = compressor.member()
        members.append(m.compress(data) + m.finish())
    blob = b"".join(members)
    whole = b"".join(payloads)
    # a range starting at a member boundary decodes across later members
    offset = 0
    for i, member in enumerate(members):
        rest = b"".join(payloads[i:])
        if rest:
            got = decompressor.decompress(blob[offset:], 0, len(rest))
            assert got == rest, f"member {i}: range decode differs"
            got = decompressor.decompress(blob[offset:], 1, len(rest) - 1)
            assert got == rest[1:], f"member {i}: skip of 1 byte differs"
        offset += len(member)
    assert decompressor.decompress(blob, 0, len(whole)) == whole
    # flush makes everything so far decodable without ending the member
    m = compressor.member()
    head = m.compress(b"hello " * 100) + m.flush()
    assert decompressor.decompress(head, 0, 600) == b"hello " * 100, "flush does not make data decodable"
    tail = m.compress(b"world") + m.finish()
    assert decompressor.decompress(head + tail, 600, 5) == b"world"
    # asking for more than there is fails cleanly
    try:
        decompressor.decompress(members[1], 0, 2)
    except FormatError:
        pass
    else:
        raise AssertionError("reading past the end did not raise FormatError")
    try:
        decompressor.decompress(b"\x00garbage" * 8, 0, 4)
    except FormatError:
        pass
    else:
        raise AssertionError("garbage did not raise FormatError")
