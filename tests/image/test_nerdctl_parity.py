"""Our ``image convert`` against Debian's ``ctr-remote image convert`` (containerd 1.6, stargz 0.12) — the
converter nerdctl shares — on the same input image.

Blob bytes cannot match (Go's gzip/zstd encoders differ from ours, and TOC offsets follow the compressed
bytes), so the manifests and configs are compared byte for byte after replacing only those values
(digests, sizes, TOC digests, uncompressed sizes, DiffIDs); the layers' TOCs are compared entry by entry
without offsets.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from lazypull.format import BytesSource, open_layer
from lazypull.image import Layout, Store
from lazypull.image import mediatypes as mt
from lazypull.image.convert import ConvertOptions, convert_image
from tests.helpers.containerd import Ctr, write_oci_archive
from tests.helpers.images import make_tar, sample_layers

VARIABLE = {"digest", "size"}
VARIABLE_ANNOTATIONS = {mt.TOC_DIGEST, mt.UNCOMPRESSED_SIZE, mt.ZSTD_MANIFEST_CHECKSUM,
                        mt.ZSTD_MANIFEST_POSITION}


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in VARIABLE:
                out[k] = "X"
            elif k == "annotations":
                out[k] = {ak: ("X" if ak in VARIABLE_ANNOTATIONS else av) for ak, av in v.items()}
            elif k == "diff_ids":
                out[k] = ["X"] * len(v)
            else:
                out[k] = _normalise(v)
        return out
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _shape(raw: bytes) -> str:
    """The JSON with its variable values replaced, keys in their stored order."""
    return json.dumps(_normalise(json.loads(raw)), separators=(",", ":"))


def _toc_entries(blob: bytes) -> list[tuple[Any, ...]]:
    """TOC entries without offsets. userName/groupName are compared too: Go writes them only on the
    first entry of each uid/gid per writer, and ``Build`` uses GOMAXPROCS writers, so ctr-remote runs
    with GOMAXPROCS equal to our writer's thread count (2)."""
    reader = open_layer(BytesSource(blob))
    return [(e.name, e.type, e.size, e.mode, e.uid, e.gid, e.user_name, e.group_name, e.link_name, e.digest,
             e.chunk_offset, e.chunk_size, e.chunk_digest, e.modtime, e.xattrs) for e in reader.toc.entries]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(OCI archive for ctr, the same layout extracted for us)."""
    work = tmp_path_factory.mktemp("parity")
    tars = []
    for i, entries in enumerate(sample_layers()):
        path = work / f"layer{i}.tar"
        path.write_bytes(make_tar(entries))
        tars.append(path)
    archive = work / "image.tar"
    write_oci_archive(tars, archive, "example.com/parity/src:v1")
    layout = work / "layout"
    with tarfile.open(archive) as tar:
        tar.extractall(layout)  # our own archive, made just above
    return archive, layout


@pytest.mark.parametrize("zstd", [False, True], ids=["estargz", "zstdchunked"])
def test_same_shape_as_ctr_remote(containerd: Ctr, source: tuple[Path, Path], tmp_path: Path,
                                  zstd: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, layout_dir = source
    monkeypatch.setenv("GOMAXPROCS", "2")  # ctr-remote's Build splits a layer among GOMAXPROCS writers
    if "example.com/parity/src:v1" not in containerd.image_names():
        containerd.import_archive(archive)
    dst = f"example.com/parity/dst:{'zstd' if zstd else 'esgz'}"
    containerd.convert("example.com/parity/src:v1", dst, zstdchunked=zstd)
    theirs = containerd.read_image(dst, tmp_path / "ctr")
    their_manifest = containerd.content_bytes(theirs.manifest_digest)
    their_config = containerd.content_bytes(theirs.manifest["config"]["digest"])

    store = Store(tmp_path / "root")
    with store.lease():
        result = convert_image(Layout(layout_dir).root("v1"), store,
                               ConvertOptions("zstdchunked" if zstd else "estargz", oci=True,
                                              writer_threads=2))
    our_manifest = store.read_blob(result.root.digest)
    our_manifest_doc = json.loads(our_manifest)
    our_config = store.read_blob(our_manifest_doc["config"]["digest"])

    assert _shape(our_manifest) == _shape(their_manifest)
    assert _shape(our_config) == _shape(their_config)
    # Compact Go encoding, config keys sorted as Go marshals a map.
    assert b" " not in our_manifest and list(json.loads(our_config)) == list(json.loads(their_config))
    for ours_desc, (their_desc, their_path) in zip(our_manifest_doc["layers"], theirs.layers, strict=True):
        assert set(ours_desc["annotations"]) == set(their_desc["annotations"])
        assert _toc_entries(store.read_blob(ours_desc["digest"])) == _toc_entries(their_path.read_bytes())
