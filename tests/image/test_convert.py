"""Conversion (image -> image): what nerdctl produces (format.md 1.11, 2.3, 2.4, 3.1), checked by reading
the results back with lazypull.format, gunzip/zstd, and skopeo."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import zstandard

from lazypull.format import BytesSource, open_layer
from lazypull.image import Layout, Store, UnsupportedMediaTypeError
from lazypull.image import mediatypes as mt
from lazypull.image.convert import ConvertOptions, ConvertResult, convert_image
from lazypull.image.errors import DigestMismatchError, ImageError
from lazypull.image.record import parse_record
from lazypull.registry import Descriptor, Platform
from tests.helpers.images import BuiltLayout, file, make_oci_layout, sample_layers, sha256

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _convert(store: Store, built: BuiltLayout, options: ConvertOptions) -> ConvertResult:
    layout = Layout(built.path)
    with store.lease():
        return convert_image(layout.root(built.tag), store, options)


def _json(store: Store, digest: str) -> Any:
    return json.loads(store.read_blob(digest))


@pytest.fixture
def docker_layout(tmp_path: Path) -> BuiltLayout:
    return make_oci_layout(tmp_path / "layout", sample_layers(), tag="v1", docker=True)


def test_estargz_oci_layers_annotations_and_diff_ids(tmp_path: Path, docker_layout: BuiltLayout) -> None:
    store = Store(tmp_path / "root")
    result = _convert(store, docker_layout, ConvertOptions("estargz", oci=True))
    manifest = _json(store, result.root.digest)
    assert result.root.media_type == manifest["mediaType"] == mt.OCI_MANIFEST
    assert manifest["config"]["mediaType"] == mt.OCI_CONFIG
    config = _json(store, manifest["config"]["digest"])
    assert result.toc_image is None
    for i, layer in enumerate(manifest["layers"]):
        assert layer["mediaType"] == OCI_GZIP
        assert set(layer["annotations"]) == {mt.TOC_DIGEST, mt.UNCOMPRESSED_SIZE}
        blob = store.read_blob(layer["digest"])
        assert sha256(blob) == layer["digest"] and len(blob) == layer["size"]
        tar = gzip.decompress(blob)
        assert config["rootfs"]["diff_ids"][i] == sha256(tar)
        assert layer["annotations"][mt.UNCOMPRESSED_SIZE] == str(len(tar))
        reader = open_layer(BytesSource(blob), toc_digest=layer["annotations"][mt.TOC_DIGEST])
        reader.verify()
    reader = open_layer(BytesSource(store.read_blob(manifest["layers"][1]["digest"])))
    motd = reader.lookup("etc/motd")
    assert motd is not None and reader.read_file(motd) == b"hello\n"
    assert reader.lookup("etc/.wh.hostname") is not None
    # The rest of the config is kept, keys sorted as Go marshals a map.
    assert config["config"] == docker_layout.image.config["config"]
    assert list(config) == sorted(config)
    assert config["rootfs"]["diff_ids"] != docker_layout.image.diff_ids


def test_estargz_without_oci_keeps_docker_media_types(tmp_path: Path, docker_layout: BuiltLayout) -> None:
    store = Store(tmp_path / "root")
    result = _convert(store, docker_layout, ConvertOptions("estargz", oci=False))
    manifest = _json(store, result.root.digest)
    assert manifest["mediaType"] == mt.DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == mt.DOCKER_CONFIG
    assert {layer["mediaType"] for layer in manifest["layers"]} == {mt.DOCKER_LAYER_GZIP}


def test_external_toc_and_keep_diff_id(tmp_path: Path, docker_layout: BuiltLayout) -> None:
    store = Store(tmp_path / "root")
    result = _convert(store, docker_layout, ConvertOptions("estargz", oci=True, estargz_external_toc=True,
                                                            estargz_keep_diff_id=True))
    manifest = _json(store, result.root.digest)
    config = _json(store, manifest["config"]["digest"])
    assert config["rootfs"]["diff_ids"] == docker_layout.image.diff_ids
    for i, layer in enumerate(manifest["layers"]):
        assert gzip.decompress(store.read_blob(layer["digest"])) == docker_layout.image.tars[i]
        assert layer["annotations"][mt.UNCOMPRESSED_SIZE] == str(len(docker_layout.image.tars[i]))
    # The TOC image (format.md 2.3).
    assert result.toc_image is not None
    toc_manifest = _json(store, result.toc_image.digest)
    assert toc_manifest["mediaType"] == mt.OCI_MANIFEST and toc_manifest["schemaVersion"] == 2
    assert toc_manifest["config"] == {"mediaType": mt.OCI_CONFIG, "digest": sha256(b"{}"), "size": 2}
    assert store.read_blob(sha256(b"{}")) == b"{}"
    toc_layers = toc_manifest["layers"]
    assert [t["digest"] for t in toc_layers] == sorted(t["digest"] for t in toc_layers)
    by_layer = {t["annotations"][mt.TOC_LAYER_DIGEST]: t for t in toc_layers}
    assert set(by_layer) == {layer["digest"] for layer in manifest["layers"]}
    for layer in manifest["layers"]:
        toc = by_layer[layer["digest"]]
        assert toc["mediaType"] == OCI_GZIP
        toc_blob = store.read_blob(toc["digest"])
        reader = open_layer(BytesSource(store.read_blob(layer["digest"])), external_toc=toc_blob,
                            toc_digest=layer["annotations"][mt.TOC_DIGEST])
        reader.verify()


def test_external_toc_without_keep_diff_id_changes_diff_ids(tmp_path: Path,
                                                            docker_layout: BuiltLayout) -> None:
    store = Store(tmp_path / "root")
    result = _convert(store, docker_layout, ConvertOptions("estargz", oci=True, estargz_external_toc=True))
    manifest = _json(store, result.root.digest)
    config = _json(store, manifest["config"]["digest"])
    for i, layer in enumerate(manifest["layers"]):
        assert config["rootfs"]["diff_ids"][i] == sha256(gzip.decompress(store.read_blob(layer["digest"])))
    assert result.toc_image is not None


def test_zstdchunked_annotations(tmp_path: Path, docker_layout: BuiltLayout) -> None:
    store = Store(tmp_path / "root")
    result = _convert(store, docker_layout, ConvertOptions("zstdchunked", oci=True, zstd_level=5))
    manifest = _json(store, result.root.digest)
    config = _json(store, manifest["config"]["digest"])
    for i, layer in enumerate(manifest["layers"]):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        ann = layer["annotations"]
        assert set(ann) == {mt.TOC_DIGEST, mt.UNCOMPRESSED_SIZE, mt.ZSTD_MANIFEST_CHECKSUM,
                            mt.ZSTD_MANIFEST_POSITION}
        blob = store.read_blob(layer["digest"])
        offset, length, ulength, kind = (int(x) for x in ann[mt.ZSTD_MANIFEST_POSITION].split(":"))
        assert kind == 1
        compressed_toc = blob[offset:offset + length]
        assert sha256(compressed_toc) == ann[mt.ZSTD_MANIFEST_CHECKSUM]
        toc_json = zstandard.ZstdDecompressor().decompress(compressed_toc, max_output_size=ulength)
        assert len(toc_json) == ulength and sha256(toc_json) == ann[mt.TOC_DIGEST]
        tar = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True).read()
        assert ann[mt.UNCOMPRESSED_SIZE] == str(len(tar))
        assert config["rootfs"]["diff_ids"][i] == sha256(tar)
        open_layer(BytesSource(blob), toc_digest=ann[mt.TOC_DIGEST]).verify()


def test_uncompress_and_gzip(tmp_path: Path, docker_layout: BuiltLayout) -> None:
    store = Store(tmp_path / "root")
    plain = _convert(store, docker_layout, ConvertOptions("uncompress", oci=True))
    manifest = _json(store, plain.root.digest)
    assert [store.read_blob(layer["digest"]) for layer in manifest["layers"]] == docker_layout.image.tars
    assert {layer["mediaType"] for layer in manifest["layers"]} == {mt.OCI_LAYER}
    assert _json(store, manifest["config"]["digest"])["rootfs"]["diff_ids"] == docker_layout.image.diff_ids
    gz = _convert(store, docker_layout, ConvertOptions("gzip"))
    manifest = _json(store, gz.root.digest)
    assert {layer["mediaType"] for layer in manifest["layers"]} == {mt.DOCKER_LAYER_GZIP}
    assert [gzip.decompress(store.read_blob(layer["digest"])) for layer in manifest["layers"]] == \
        docker_layout.image.tars


@pytest.mark.parametrize("docker", [False, True], ids=["oci-index", "docker-list"])
def test_index_keeps_index_and_converts_shared_layers_once(tmp_path: Path, docker: bool) -> None:
    built = make_oci_layout(tmp_path / "layout", sample_layers()[:2], tag="m", docker=docker,
                            platforms=["linux/amd64", "linux/arm64"])
    store = Store(tmp_path / "root")
    both = _convert(store, built, ConvertOptions("estargz", oci=True))
    index = _json(store, both.root.digest)
    assert both.root.media_type == index["mediaType"] == mt.OCI_INDEX
    assert {m["mediaType"] for m in index["manifests"]} == {mt.OCI_MANIFEST}
    kept = _convert(store, built, ConvertOptions("estargz", oci=False))
    assert kept.root.media_type == (mt.DOCKER_MANIFEST_LIST if docker else mt.OCI_INDEX)
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    layers = [[layer["digest"] for layer in _json(store, m["digest"])["layers"]] for m in index["manifests"]]
    assert layers[0] == layers[1]
    one = _convert(store, built, ConvertOptions("estargz", oci=True, platforms=[Platform("linux", "arm64")]))
    index = _json(store, one.root.digest)
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["arm64"]


def test_record_in_prioritises_per_layer(tmp_path: Path, docker_layout: BuiltLayout) -> None:
    manifest_digest = docker_layout.image.manifest_digest
    record = parse_record(
        json.dumps({"path": "data/text.txt", "manifestDigest": manifest_digest, "layerIndex": 2}) + "\n"
        + json.dumps({"path": "etc/passwd"}) + "\n"
        + json.dumps({"path": "data/text.txt", "manifestDigest": "sha256:" + "0" * 64, "layerIndex": 0}))
    assert record.files_for(manifest_digest, 2) == ["data/text.txt", "etc/passwd"]
    assert record.files_for(manifest_digest, 0) == ["etc/passwd"]
    store = Store(tmp_path / "root")
    result = _convert(store, docker_layout, ConvertOptions("estargz", oci=True, record=record))
    manifest = _json(store, result.root.digest)

    def names(i: int) -> list[str]:
        reader = open_layer(BytesSource(store.read_blob(manifest["layers"][i]["digest"])))
        return [e.name for e in reader.toc.entries]

    two, zero = names(2), names(0)
    assert two.index("data/text.txt") < two.index(".prefetch.landmark") < two.index("data/blob.bin")
    assert zero.index("etc/passwd") < zero.index(".prefetch.landmark") < zero.index("usr/bin/tool")
    # Layer 1 has none of the recorded files: the landmark comes first (Go's allow-not-found Build).
    assert names(1)[0] == ".prefetch.landmark"


@pytest.mark.parametrize("text, message", [
    ("{", "entry 1 is not valid JSON"),
    ('{"path": 3}', 'no "path"'),
    ('{"path": "a", "manifestDigest": 7, "layerIndex": 0}', "non-string manifestDigest"),
    ('{"path": "a", "layerIndex": "0"}', "non-integer layerIndex"),
    ("[1]", "not a JSON object"),
])
def test_bad_record_files(text: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        parse_record(text)


@pytest.mark.parametrize("options, message", [
    (ConvertOptions("estargz", estargz_keep_diff_id=True), "keep-diff-id must be used with"),
    (ConvertOptions("zstdchunked", estargz_external_toc=True), "need --estargz"),
    (ConvertOptions("estargz", estargz_level=12), "compression-level"),
    (ConvertOptions("estargz", estargz_external_toc=True, estargz_keep_diff_id=True,
                    record=parse_record('{"path": "a"}')), "record-in cannot be used"),
])
def test_refused_option_combinations(options: ConvertOptions, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        options.check()


def test_corrupt_source_layer_leaves_nothing(tmp_path: Path) -> None:
    layers = sample_layers()
    built = make_oci_layout(tmp_path / "layout", layers, tag="v1")
    victim = built.path / "blobs/sha256" / built.image.layer_digests[2][7:]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    store = Store(tmp_path / "root")
    with pytest.raises((ImageError, DigestMismatchError)):
        _convert(store, built, ConvertOptions("estargz", oci=True))
    assert not store.blobs_dir.exists() or list(store.blobs_dir.iterdir()) == []
    assert store.list_images() == []
    assert not store.ingest_dir.exists() or list(store.ingest_dir.iterdir()) == []


def test_unknown_layer_media_type_is_refused(tmp_path: Path) -> None:
    built = make_oci_layout(tmp_path / "layout", sample_layers()[:1], tag="v1")
    manifest = dict(built.image.manifest)
    manifest["layers"] = [dict(manifest["layers"][0], mediaType="application/vnd.example.unknown")]
    raw = json.dumps(manifest).encode()
    (built.path / "blobs/sha256" / sha256(raw)[7:]).write_bytes(raw)
    index = {"schemaVersion": 2, "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": sha256(raw),
                                                 "size": len(raw),
                                                 "annotations": {mt.REF_NAME: "v1"}}]}
    (built.path / "index.json").write_text(json.dumps(index))
    store = Store(tmp_path / "root")
    with pytest.raises(UnsupportedMediaTypeError, match=re.escape("application/vnd.example.unknown")):
        _convert(store, built, ConvertOptions("estargz", oci=True))


def test_convert_into_layout_is_read_by_skopeo(tmp_path: Path, docker_layout: BuiltLayout) -> None:
    out = Layout(tmp_path / "out")
    result = convert_image(Layout(docker_layout.path).root("v1"), out,
                           ConvertOptions("estargz", oci=True, estargz_external_toc=True))
    out.add_entry(result.root, "esgz")
    assert result.toc_image is not None
    out.add_entry(result.toc_image, "esgz-esgztoc")
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{out.path}:esgz"], check=True,
                         capture_output=True, timeout=60).stdout
    manifest = json.loads(raw)
    assert sha256(raw) == result.root.digest
    assert all(mt.TOC_DIGEST in layer["annotations"] for layer in manifest["layers"])
    info = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{out.path}:esgz"], check=True,
                                     capture_output=True, timeout=60).stdout)
    assert info["Architecture"] == "amd64" and len(info["Layers"]) == 3
    # Our reader reads it back too, and the layer data is the source's.
    root = out.root("esgz")
    assert root.digest() == result.root.digest


def test_layout_tag_lookup_errors(tmp_path: Path) -> None:
    built = make_oci_layout(tmp_path / "layout", [[file("a", "b")]], tag="v1")
    layout = Layout(built.path)
    with pytest.raises(ImageError, match=r"no image tagged 'v2' \(tags: v1\)"):
        layout.root("v2")
    with pytest.raises(ImageError, match="not an OCI image layout"):
        Layout(tmp_path / "missing").root(None)


@pytest.mark.parametrize("layer_format", ["estargz", "zstdchunked", "gzip"])
def test_a_converted_layer_carries_no_annotation_of_its_old_blob(tmp_path: Path, layer_format: str) -> None:
    """Keys describing the source blob (both zstd:chunked spellings, containers/storage's tar-split) are
    not carried onto the rewritten blob (a plain result would look lazy with another blob's TOC), and a
    declared DiffID follows the new blob (else the converted image fails its own DiffID check)."""
    from lazypull.format.annotations import UNCOMPRESSED_DIGEST_ANNOTATION
    from lazypull.format.layerkind import layer_kind
    from lazypull.image.partial import check_declared_diff_ids

    probe = make_oci_layout(tmp_path / "probe", sample_layers()[:1], tag="v1")
    stale = {"io.github.containers.zstd-chunked.manifest-checksum": "sha256:" + "1" * 64,
             "io.github.containers.zstd-chunked.manifest-position": "10:20:30:1",
             "io.github.containers.zstd-chunked.tarsplit-position": "40:50:60:1",
             UNCOMPRESSED_DIGEST_ANNOTATION: probe.image.diff_ids[0], "org.example.kept": "yes"}
    built = make_oci_layout(tmp_path / "layout", sample_layers()[:1], tag="v1", layer_annotations=[stale])
    assert built.image.diff_ids == probe.image.diff_ids
    store = Store(tmp_path / "root")
    result = _convert(store, built, ConvertOptions(layer_format, oci=True))  # type: ignore[arg-type]
    manifest = _json(store, result.root.digest)
    layer = manifest["layers"][0]
    annotations = layer["annotations"]
    assert not any(k.startswith("io.github.containers") for k in annotations), annotations
    assert annotations["org.example.kept"] == "yes"
    expected_kind = "plain" if layer_format == "gzip" else layer_format
    assert layer_kind(annotations, layer["mediaType"]) == expected_kind
    config = _json(store, manifest["config"]["digest"])
    assert annotations[UNCOMPRESSED_DIGEST_ANNOTATION] == config["rootfs"]["diff_ids"][0]
    check_declared_diff_ids([Descriptor.from_json(layer)], config["rootfs"]["diff_ids"])
