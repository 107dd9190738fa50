"""Damaged blobs: whatever the damage, opening and verifying ends in success or FormatError, quickly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazypull.format import BytesSource, FormatError, open_layer
from lazypull.format.footer import estargz_footer
from tests.conftest import VECTORS
from tests.format.test_bad_input import _with_toc

BLOBS = {name: (VECTORS / name).read_bytes()
         for name in ("tiny.esgz", "small.esgz", "many-min.esgz", "tiny.zstd", "tiny.cs.zstd")}


def _open_and_verify(blob: bytes, external: bytes | None = None) -> None:
    try:
        reader = open_layer(BytesSource(blob), external_toc=external)
        reader.verify()
        for entry in reader.entries():
            reader.children(entry.name)
            reader.lookup(entry.name)
        reader.prefetch_range()
    except FormatError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(BLOBS)),
       flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), min_size=1, max_size=4),
       tail=st.booleans())
def test_flipped_bytes(name: str, flips: list[tuple[int, int]], tail: bool) -> None:
    blob = bytearray(BLOBS[name])
    for pos, xor in flips:
        # bias towards the footer and TOC, where the parsing happens
        index = len(blob) - 1 - pos % min(len(blob), 600) if tail else pos % len(blob)
        blob[index] ^= xor
    _open_and_verify(bytes(blob))


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(BLOBS)), cut=st.integers(1, 2000))
def test_truncations(name: str, cut: int) -> None:
    blob = BLOBS[name]
    _open_and_verify(blob[: max(0, len(blob) - cut)])
    _open_and_verify(blob[cut % len(blob) :])


SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
JSON_VALUES = st.recursive(
    SCALARS | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)
KEYS = st.sampled_from(["name", "type", "size", "offset", "innerOffset", "chunkOffset", "chunkSize",
                        "chunkDigest", "digest", "linkName", "mode", "xattrs", "modtime", "uid", "NAME",
                        "endOffset", "chunkType", "userName"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, 10), KEYS, JSON_VALUES), min_size=1, max_size=5),
       vectors=st.just(VECTORS))
def test_mutated_toc_entries(edits: list[tuple[int, str, object]], vectors: Path) -> None:
    toc = json.loads((vectors / "small.esgz.toc.json").read_bytes())
    for index, key, value in edits:
        entries = toc["entries"]
        entries[index % len(entries)][key] = value
    blob = _with_toc(vectors, toc)
    _open_and_verify(blob)


@pytest.mark.parametrize("offset", [0, 1, 244, 245, 10**15])
def test_footer_offsets(vectors: Path, offset: int) -> None:
    blob = BLOBS["tiny.esgz"][:-51] + estargz_footer(offset)
    _open_and_verify(blob)
