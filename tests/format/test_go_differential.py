"""Differential test: random trees through Go's estargz.Build (the oracle) and ours give the same
decompressed data stream and the same TOC apart from member offsets."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazypull.format import BuildOptions, BytesSource, build, open_layer
from tests.format.test_roundtrip import Node, _tar, trees
from tests.helpers.oracle import Oracle


def _entries(blob: bytes) -> list[dict[str, object]]:
    raw = json.loads(open_layer(BytesSource(blob)).toc_json)["entries"]
    return [{k: v for k, v in e.items() if k != "offset"} for e in raw]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tree=trees(), gnu=st.booleans(), chunk=st.sampled_from([0, 512, 4096]))
def test_same_stream_and_toc_as_go(oracle: Oracle, tree: tuple[list[Node], int], gnu: bool,
                                   chunk: int) -> None:
    nodes, seed = tree
    tar = _tar(nodes, seed, tarfile.GNU_FORMAT if gnu else tarfile.PAX_FORMAT)
    with tempfile.TemporaryDirectory() as d:
        src, go_blob = Path(d) / "in.tar", Path(d) / "go.esgz"
        src.write_bytes(tar)
        oracle.build(src, go_blob, chunk_size=chunk)
        go = go_blob.read_bytes()
    ours_ext = io.BytesIO()
    build(io.BytesIO(tar), ours_ext, BuildOptions(external_toc=True, parallelism=1, chunk_size=chunk))
    data = gzip.decompress(ours_ext.getvalue())
    assert gzip.decompress(go)[: len(data)] == data
    ours = io.BytesIO()
    build(io.BytesIO(tar), ours, BuildOptions(parallelism=1, chunk_size=chunk))
    assert _entries(ours.getvalue()) == _entries(go)
