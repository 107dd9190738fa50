"""Go tar header encoding: the USTAR fast path gives the general path's bytes; parsing reads them back."""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazypull.format import FormatError
from lazypull.format import tarheader as th
from lazypull.format.tarheader import NS, TarHeader, TarScan, encode_go_header

NAMES = st.sampled_from(["a", "dir/", "x" * 100, "x" * 101, "é", "b/" * 30 + "c", "./a", "/abs"])
OCTAL8 = st.sampled_from([0, 7, 0o644, 8**7 - 1, 8**7])


@st.composite
def headers(draw: st.DrawFn) -> TarHeader:
    return TarHeader(
        name=draw(NAMES), typeflag=draw(st.sampled_from("0123456")),
        linkname=draw(st.sampled_from(["", "t", "l" * 100, "l" * 101])),
        size=draw(st.sampled_from([0, 5, 8**11 - 1, 8**11])), mode=draw(OCTAL8), uid=draw(OCTAL8),
        gid=draw(OCTAL8), uname=draw(st.sampled_from(["", "root", "u" * 32, "u" * 33, "ü"])), gname="g",
        mtime=draw(st.sampled_from([None, 0, 1609459200 * NS, 1609459200 * NS + 5, 8**11 * NS])),
        devmajor=draw(OCTAL8), devminor=draw(OCTAL8),
        format=draw(st.sampled_from([th.FORMAT_USTAR, th.FORMAT_UNKNOWN, th.FORMAT_PAX, th.FORMAT_GNU])),
    )


@settings(max_examples=400, deadline=None)
@given(h=headers())
def test_fast_path_equals_general_path(h: TarHeader) -> None:
    try:
        fast = encode_go_header(h)
    except FormatError:  # only the general path decides that something cannot be encoded
        assert th._fast_ustar(h) is None
        return
    with pytest.MonkeyPatch.context() as m:
        m.setattr(th, "_fast_ustar", lambda _h: None)
        slow = encode_go_header(h)
    assert fast == slow
    # and our parser reads back what was written
    with tempfile.TemporaryFile() as f:
        payload = 0 if h.typeflag in th.HEADER_ONLY_TYPES else h.size
        if payload > 1 << 20:
            return
        f.write(fast + bytes(payload + (-payload % 512)) + bytes(1024))
        f.flush()
        (member,) = list(TarScan(f.fileno(), 0, os.fstat(f.fileno()).st_size))
    got = member.header
    assert (got.name, got.linkname, got.size, got.mode, got.uid, got.gid) == (
        h.name, h.linkname, h.size, h.mode, h.uid, h.gid)
