"""Differential test: random trees through Go's estargz.Build (the oracle) and ours give the same
decompressed data stream and the same TOC apart from member offsets."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazypull.format import BuildOptions, BytesSource, build, open_layer
from lazypull.format.names import clean_entry_name
from tests.format.test_roundtrip import Node, _tar, trees
from tests.helpers.oracle import Oracle


def _entries(blob: bytes) -> list[dict[str, object]]:
    raw = json.loads(open_layer(BytesSource(blob)).toc_json)["entries"]
    return [{k: v for k, v in e.items() if k != "offset"} for e in raw]


def _eligible(nodes: list[Node]) -> list[str]:
    """Names Go can prioritise too: every ancestor (also of a hardlink's target) is a tar entry."""
    by_name = {clean_entry_name(n.name): n for n in nodes}

    def ok(name: str) -> bool:
        parts = name.split("/")
        if any("/".join(parts[:i]) not in by_name for i in range(1, len(parts))):
            return False
        node = by_name[name]
        return node.kind != "hardlink" or ok(clean_entry_name(node.link))

    return sorted(n for n in by_name if ok(n))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tree=trees(), gnu=st.booleans(), chunk=st.sampled_from([0, 512, 4096]), zstd=st.booleans(),
       data=st.data())
def test_same_stream_and_toc_as_go(oracle: Oracle, tree: tuple[list[Node], int], gnu: bool, chunk: int,
                                   zstd: bool, data: st.DataObject) -> None:
    nodes, seed = tree
    tar = _tar(nodes, seed, tarfile.GNU_FORMAT if gnu else tarfile.PAX_FORMAT)
    prio = data.draw(st.lists(st.sampled_from([*_eligible(nodes), "missing"]), max_size=3, unique=True))
    with tempfile.TemporaryDirectory() as d:
        src, go_blob = Path(d) / "in.tar", Path(d) / "go.esgz"
        src.write_bytes(tar)
        go_res = oracle.build(src, go_blob, chunk_size=chunk, prioritized=prio, zstdchunked=zstd)
        go = go_blob.read_bytes()
    opts = BuildOptions(compression="zstd" if zstd else "gzip", parallelism=1, chunk_size=chunk,
                        prioritized_files=prio)
    ours = io.BytesIO()
    res = build(io.BytesIO(tar), ours, opts)
    assert res.missed == go_res.missed
    assert _entries(ours.getvalue()) == _entries(go)
    if zstd:
        assert res.diff_id == go_res.diff_id  # no TOC in the stream: the decompressed bytes are equal
    else:
        ours_ext = io.BytesIO()
        build(io.BytesIO(tar), ours_ext, dataclasses.replace(opts, external_toc=True))
        stream = gzip.decompress(ours_ext.getvalue())
        assert gzip.decompress(go)[: len(stream)] == stream
