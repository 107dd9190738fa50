"""A lazily mounted layer's TOC is the one its descriptor authenticates: a registry serving other bytes
(its blob digest is never checked whole) cannot make the mount parse a TOC of its own choosing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard

from lazypull.errors import MountError
from lazypull.format import LayerReader
from lazypull.format.footer import skippable_frame, zstd_footer
from lazypull.fs.config import FsConfig
from lazypull.fs.layer.toc import open_toc
from lazypull.fs.remote import FileRangeSource, RecordingSource, RemoteBlob
from lazypull.fs.stats import LayerStats


def _open(tmp: Path, blob: Path, digest: str, annotations: dict[str, str]) -> LayerReader:
    tmp.mkdir()
    remote = RemoteBlob(FileRangeSource(blob), LayerStats(digest), FsConfig())
    return open_toc(digest, annotations, RecordingSource(remote, tmp / "toc.record"), None)


def test_a_footer_pointing_past_the_checksummed_toc_is_refused(vectors: Path, tmp_path: Path) -> None:
    """containers/storage's zstd:chunked layer is authenticated by ``manifest-checksum`` over the
    compressed TOC at ``manifest-position``. A blob that keeps those bytes but ends with another footer,
    pointing at a TOC appended after them (here: a file renamed), must not be mounted with that TOC."""
    info = json.loads((vectors / "tiny.cs.build.json").read_text())
    annotations = dict(info["annotations"])
    digest = info["blobDigest"]
    genuine = _open(tmp_path / "genuine", vectors / "tiny.cs.zstd", digest, annotations)
    assert genuine.lookup("a/hello.txt") is not None

    toc = json.loads(genuine.toc_json)
    for entry in toc["entries"]:
        if entry.get("name") == "a/hello.txt":
            entry["name"] = "a/evil.txt"
    evil_json = json.dumps(toc).encode()
    evil = zstandard.ZstdCompressor().compress(evil_json)
    original = (vectors / "tiny.cs.zstd").read_bytes()
    hostile = tmp_path / "hostile.zstd"
    hostile.write_bytes(original + skippable_frame(evil)
                        + zstd_footer(len(original) + 8, len(evil), len(evil_json)))
    with pytest.raises(MountError, match=f"layer {digest}: cannot open its TOC"):
        _open(tmp_path / "hostile", hostile, digest, annotations)
