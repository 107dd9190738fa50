"""OCI layouts: tags in index.json, atomic writes, and hostile layouts refused with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazypull.image import DigestMismatchError, Layout, Store, copy_into_store
from lazypull.image import mediatypes as mt
from lazypull.image.errors import ImageError
from lazypull.registry import Descriptor
from tests.helpers.images import file, make_oci_layout, sample_layers, sha256


def _rewrite_index(path: Path, entries: list[dict[str, object]]) -> None:
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))


def test_manifest_not_matching_its_digest_is_refused(tmp_path: Path) -> None:
    built = make_oci_layout(tmp_path / "l", [[file("a", "b")]], tag="v1")
    blob = built.path / "blobs/sha256" / built.root_digest[7:]
    raw = blob.read_bytes()
    blob.write_bytes(raw.replace(b'"schemaVersion":2', b'"schemaVersion":3'))  # same size, other digest
    store = Store(tmp_path / "root")
    layout = Layout(built.path)
    with pytest.raises(DigestMismatchError, match=f"manifest {built.root_digest}: content has digest"):
        copy_into_store(store, layout.root("v1"), layout, "example.com/t:1", source=None, platforms=None)
    assert store.list_images() == []
    assert not store.blobs_dir.exists() or list(store.blobs_dir.iterdir()) == []


def test_oversized_manifest_blob_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    built = make_oci_layout(tmp_path / "l", [[file("a", "b")]], tag="v1")
    blob = built.path / "blobs/sha256" / built.root_digest[7:]
    blob.write_bytes(blob.read_bytes() + b" " * (1 << 20))
    # Only size + 1 bytes are read: enough to know it is too long.
    expected = f"size {built.root_size + 1} does not match descriptor size {built.root_size}"
    with pytest.raises(DigestMismatchError, match=expected):
        Layout(built.path).root("v1").raw_manifest()


@pytest.mark.parametrize("index, message", [
    ("not json", "not valid JSON"),
    ("[]", "not a JSON object"),
    (json.dumps({"schemaVersion": 1, "manifests": []}), "schemaVersion"),
    (json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": mt.OCI_MANIFEST,
                                                     "digest": "sha256:../../etc/passwd", "size": 1}]}),
     "invalid digest"),
    (json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": mt.OCI_MANIFEST,
                                                     "digest": "sha256:" + "a" * 64, "size": -1}]}),
     "invalid size"),
])
def test_hostile_index_json(tmp_path: Path, index: str, message: str) -> None:
    built = make_oci_layout(tmp_path / "l", [[file("a", "b")]], tag="v1")
    (built.path / "index.json").write_text(index)
    with pytest.raises(ImageError, match=message):
        Layout(built.path).root("v1")


def test_unknown_root_media_type(tmp_path: Path) -> None:
    built = make_oci_layout(tmp_path / "l", [[file("a", "b")]], tag="v1")
    _rewrite_index(built.path, [{"mediaType": "application/vnd.example.thing+json",
                                 "digest": built.root_digest, "size": built.root_size,
                                 "annotations": {mt.REF_NAME: "v1"}}])
    with pytest.raises(ImageError, match=r"unsupported manifest media type 'application/vnd\.example"):
        Layout(built.path).root("v1")


def test_write_tags_and_replace(tmp_path: Path) -> None:
    src = make_oci_layout(tmp_path / "src", sample_layers(), tag="v1")
    out = Layout(tmp_path / "out")
    info = out.put_blob(Path(src.path / "blobs/sha256" / src.root_digest[7:]).read_bytes(), src.root_digest)
    desc = Descriptor(mt.OCI_MANIFEST, info.digest, info.size)
    out.add_entry(desc, "a")
    out.add_entry(desc, "b")
    out.add_entry(desc, "a")
    index = json.loads((out.path / "index.json").read_text())
    assert [m["annotations"][mt.REF_NAME] for m in index["manifests"]] == ["b", "a"]
    assert json.loads((out.path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert not (out.path / ".lazypull-ingest").exists()
    with pytest.raises(ImageError, match="2 images in the layout"):
        out.find(None)
    assert out.find("a").digest == src.root_digest
    with pytest.raises(ImageError, match="blob not in the layout"):
        out.add_entry(Descriptor(mt.OCI_MANIFEST, sha256(b"x"), 1), "c")
    # Blobs a failed write added go away unless an entry reaches them.
    extra = out.put_blob(b"orphan")
    out.discard_unreferenced([extra.digest, info.digest])
    assert not out.has_blob(extra.digest) and out.has_blob(info.digest)
