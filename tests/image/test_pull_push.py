"""Push to and pull from Debian's real docker-registry; faults leave the store untouched."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.image import (
    DigestMismatchError,
    Layout,
    PlatformNotFoundError,
    Store,
    UnsupportedMediaTypeError,
    copy_into_store,
    pull_image,
)
from lazypull.image.partial import ManifestImage
from lazypull.image.push import push_image
from lazypull.registry import Platform, RegistryClient
from tests.helpers.images import BuiltLayout, directory, file, make_oci_layout, sample_layers, sha256
from tests.helpers.registry import Fault, FaultProxy, RegistryServer


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(insecure=True) as c:
        yield c


def _import(tmp_path: Path, store: Store, name: str, *, unique: bool = False, **kw: object) -> BuiltLayout:
    layers = sample_layers()
    if unique:  # registry blobs are shared across repositories: tests that damage one need their own
        layers[2].append(file("data/unique", name))
    built = make_oci_layout(tmp_path / "layout", layers, tag="v1", **kw)  # type: ignore[arg-type]
    layout = Layout(built.path)
    copy_into_store(store, layout.root("v1"), layout, name, source=None, platforms=None)
    return built


def _blob_count(store: Store) -> int:
    return len(list(store.blobs_dir.iterdir())) if store.blobs_dir.is_dir() else 0


def test_push_then_pull_into_empty_store(tmp_path: Path, registry: RegistryServer, unique_repo: str,
                                         client: RegistryClient) -> None:
    name = f"{registry.host}/{unique_repo}:v1"
    src = Store(tmp_path / "src")
    built = make_oci_layout(tmp_path / "layout", sample_layers(), tag="v1")
    layout = Layout(built.path)
    copy_into_store(src, layout.root("v1"), layout, name, source=None, platforms=None)
    result = push_image(src, client, name)
    assert result.digest == built.root_digest
    assert src.get_image(name).source == name
    # Pushing again uploads nothing new (HEAD finds every blob).
    mark = registry.log_mark()
    push_image(src, client, name)
    assert not [e for e in registry.access_log(mark) if e.method in ("POST", "PATCH")]

    dst = Store(tmp_path / "dst")
    record = pull_image(dst, client, name)
    assert record.target.digest == built.root_digest
    resolved = dst.resolve(name)
    assert [d.digest for d in resolved.layers] == built.image.layer_digests
    assert resolved.source is not None and str(resolved.source) == name
    for digest in built.image.layer_digests:
        dst.verify_blob(digest)
    assert [dst.uncompressed_info(d) for d in built.image.layer_digests] == [
        (sha256(t), len(t)) for t in built.image.tars]


def test_lazy_pull_fetches_metadata_only(tmp_path: Path, registry: RegistryServer, unique_repo: str,
                                         client: RegistryClient) -> None:
    name = f"{registry.host}/{unique_repo}:lazy"
    src = Store(tmp_path / "src")
    built = _import(tmp_path, src, name)
    push_image(src, client, name)
    dst = Store(tmp_path / "dst")
    pull_image(dst, client, name, fetch_layers=False)
    resolved = dst.resolve(name)
    assert resolved.manifest_digest == built.image.manifest_digest
    assert not any(dst.has_blob(d.digest) for d in resolved.layers)
    assert _blob_count(dst) == 2  # manifest + config


def test_multi_platform_pull_and_push(tmp_path: Path, registry: RegistryServer, unique_repo: str,
                                      client: RegistryClient) -> None:
    name = f"{registry.host}/{unique_repo}:multi"
    src = Store(tmp_path / "src")
    built = make_oci_layout(tmp_path / "layout", sample_layers()[:1], tag="m",
                            platforms=["linux/amd64", "linux/arm64"])
    layout = Layout(built.path)
    copy_into_store(src, layout.root("m"), layout, name, source=None, platforms=None)
    assert push_image(src, client, name).digest == built.root_digest
    one = Store(tmp_path / "one")
    pull_image(one, client, name, platform="linux/arm64")
    assert one.resolve(name, Platform("linux", "arm64")).manifest_digest == built.images[1].manifest_digest
    assert not one.has_blob(built.images[0].manifest_digest)
    every = Store(tmp_path / "all")
    pull_image(every, client, name, all_platforms=True)
    assert every.has_blob(built.images[0].manifest_digest) and every.has_blob(built.images[1].manifest_digest)
    two = Store(tmp_path / "two")
    pull_image(two, client, name, platforms=[Platform("linux", "amd64"), Platform("linux", "arm64")])
    assert two.has_blob(built.images[0].manifest_digest) and two.has_blob(built.images[1].manifest_digest)
    with pytest.raises(PlatformNotFoundError, match="no manifest for platform linux/s390x"):
        pull_image(Store(tmp_path / "none"), client, name, platform="linux/s390x")


def test_pull_refuses_truncated_blob_and_leaves_nothing(tmp_path: Path, registry: RegistryServer,
                                                        unique_repo: str, client: RegistryClient) -> None:
    name = f"{registry.host}/{unique_repo}:bad"
    src = Store(tmp_path / "src")
    built = _import(tmp_path, src, name, unique=True)
    push_image(src, client, name)
    # Damage the registry's copy of the last layer (the registry serves files as stored).
    victim = registry.blob_path(built.image.layer_digests[2])
    victim.write_bytes(victim.read_bytes()[:-7])
    dst = Store(tmp_path / "dst")
    with pytest.raises(Exception, match=built.image.layer_digests[2][7:19]):
        pull_image(dst, client, name)
    assert dst.list_images() == []
    assert _blob_count(dst) == 0
    assert list(dst.ingest_dir.iterdir()) == []


def test_pull_refuses_unknown_layer_media_type(tmp_path: Path, registry: RegistryServer, unique_repo: str,
                                               client: RegistryClient) -> None:
    name = f"{registry.host}/{unique_repo}:odd"
    built = make_oci_layout(tmp_path / "layout", sample_layers()[:1], tag="v1")
    manifest = dict(built.image.manifest)
    manifest["layers"] = [dict(manifest["layers"][0], mediaType="application/x-unknown-layer")]
    raw = json.dumps(manifest).encode()
    for digest, blob in built.image.blobs.items():
        if digest != built.image.manifest_digest:
            client.push_blob(name, digest, len(blob), blob)
    client.put_manifest(name, raw, manifest["mediaType"])
    dst = Store(tmp_path / "dst")
    with pytest.raises(UnsupportedMediaTypeError, match="application/x-unknown-layer"):
        pull_image(dst, client, name)
    assert dst.list_images() == [] and _blob_count(dst) == 0


def test_pull_by_digest_checks_the_manifest(tmp_path: Path, registry: RegistryServer, unique_repo: str,
                                            client: RegistryClient) -> None:
    name = f"{registry.host}/{unique_repo}:d"
    src = Store(tmp_path / "src")
    built = _import(tmp_path, src, name, unique=True)
    push_image(src, client, name)
    dst = Store(tmp_path / "dst")
    with pytest.raises(Exception, match=r"manifest unknown|not found|404"):
        pull_image(dst, client, f"{registry.host}/{unique_repo}@{sha256(b'not the manifest')}")
    ok = pull_image(dst, client, f"{registry.host}/{unique_repo}@{built.root_digest}")
    assert ok.target.digest == built.root_digest
    assert len(dst.list_images()) == 1
    # The registry now serves other bytes under that digest (same length): refused, nothing stored.
    stored = registry.blob_path(built.root_digest)
    config_hex = built.image.config_digest[7:].encode()
    flipped = (b"0" if config_hex[:1] != b"0" else b"1") + config_hex[1:]
    stored.write_bytes(stored.read_bytes().replace(config_hex, flipped))
    fresh = Store(tmp_path / "fresh")
    with pytest.raises(Exception, match=f"expected {built.root_digest}, got sha256:"):
        pull_image(fresh, client, f"{registry.host}/{unique_repo}@{built.root_digest}")
    with pytest.raises(Exception, match=f"expected {built.root_digest}, got sha256:"):
        pull_image(fresh, client, name)
    assert fresh.list_images() == []
    assert not fresh.blobs_dir.exists() or list(fresh.blobs_dir.iterdir()) == []


def test_skopeo_reads_what_we_push_and_we_read_skopeo_layouts(
        tmp_path: Path, registry: RegistryServer, unique_repo: str, client: RegistryClient) -> None:
    name = f"{registry.host}/{unique_repo}:sk"
    src = Store(tmp_path / "src")
    built = _import(tmp_path, src, name,
                    layer_annotations=[{"org.example.note": "one"}, {}, {}])
    push_image(src, client, name)
    out = tmp_path / "skopeo-layout"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{name}",
                    f"oci:{out}:t"], check=True, capture_output=True, timeout=120)
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{name}"],
                         check=True, capture_output=True, timeout=60).stdout
    assert json.loads(raw)["layers"][0]["annotations"] == {"org.example.note": "one"}
    layout = Layout(out)
    root = layout.root("t")
    assert root.digest() == built.root_digest
    again = Store(tmp_path / "again")
    copy_into_store(again, root, layout, "example.com/from-skopeo:t", source=None, platforms=None)
    assert again.resolve("example.com/from-skopeo:t").diff_ids == built.image.diff_ids


def test_corrupt_local_blob_is_not_pushed(tmp_path: Path, registry: RegistryServer, unique_repo: str,
                                          client: RegistryClient) -> None:
    name = f"{registry.host}/{unique_repo}:corrupt"
    src = Store(tmp_path / "src")
    built = _import(tmp_path, src, name, unique=True)
    path = src.blob_path(built.image.layer_digests[2])
    assert path is not None
    path.write_bytes(b"garbage" + path.read_bytes()[7:])
    with pytest.raises(Exception, match="local content: expected " + built.image.layer_digests[2]):
        push_image(src, client, name)
    assert not client.blob_exists(name, built.image.layer_digests[2])
    with pytest.raises(DigestMismatchError):
        src.verify_blob(built.image.layer_digests[2])


def test_skopeo_copies_converted_estargz_with_annotations(
        tmp_path: Path, registry: RegistryServer, unique_repo: str, client: RegistryClient) -> None:
    from lazypull.format import BytesSource, open_layer
    from lazypull.image import ConvertOptions, convert_image
    from lazypull.image import mediatypes as mt

    name = f"{registry.host}/{unique_repo}:esgz"
    built = make_oci_layout(tmp_path / "layout", sample_layers(), tag="v1", docker=True)
    store = Store(tmp_path / "src")
    with store.lease():
        result = convert_image(Layout(built.path).root("v1"), store,
                               ConvertOptions("estargz", oci=True, estargz_external_toc=True))
        store.put_image(name, result.root)
        assert result.toc_image is not None
        store.put_image(name + "-esgztoc", result.toc_image)
    pushed = push_image(store, client, name)
    assert pushed.toc_image is not None and str(pushed.toc_image.ref) == name + "-esgztoc"
    out = tmp_path / "skopeo"
    for tag in ("esgz", "esgz-esgztoc"):
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{registry.host}/{unique_repo}:{tag}", f"oci:{out}:{tag}"],
                       check=True, capture_output=True, timeout=120)
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{name}"],
                         check=True, capture_output=True, timeout=60).stdout
    assert raw == store.read_blob(result.root.digest)
    layers = json.loads(raw)["layers"]
    assert all(set(layer["annotations"]) == {mt.TOC_DIGEST, mt.UNCOMPRESSED_SIZE} for layer in layers)
    # Our reader reads skopeo's layout: the eStargz layers open with the TOCs of the TOC image.
    layout = Layout(out)
    image = layout.root("esgz")
    toc_image = layout.root("esgz-esgztoc")
    assert isinstance(toc_image, ManifestImage) and isinstance(image, ManifestImage)
    tocs = {layer.annotations()[mt.TOC_LAYER_DIGEST]: layer for layer in toc_image.layers()}
    for layer in image.layers():
        with layer.compressed() as f:
            blob = f.read()
        with tocs[layer.digest()].compressed() as f:
            toc_blob = f.read()
        open_layer(BytesSource(blob), external_toc=toc_blob,
                   toc_digest=layer.annotations()[mt.TOC_DIGEST]).verify()


def _pushed_then_pulled_lazily(tmp_path: Path, client: RegistryClient,
                               name: str) -> tuple[BuiltLayout, Store]:
    """A fresh image pushed as ``name``, and a store that pulled it without its layers."""
    src = Store(tmp_path / "src")
    built = _import(tmp_path, src, name, unique=True)
    push_image(src, client, name)
    lazy = Store(tmp_path / "lazy")
    pull_image(lazy, client, name, fetch_layers=False)
    return built, lazy


def test_push_of_a_lazily_pulled_image_mounts_or_copies_layers(
        tmp_path: Path, registry: RegistryServer, unique_repo: str, client: RegistryClient) -> None:
    name = f"{registry.host}/{unique_repo}:lazy"
    built, lazy = _pushed_then_pulled_lazily(tmp_path, client, name)
    # Same registry, other repository: layers are mounted across repositories, not uploaded.
    other = f"{registry.host}/{unique_repo}-copy:v1"
    lazy.tag(name, other)
    mark = registry.log_mark()
    push_image(lazy, client, other)
    log = registry.access_log(mark)
    assert not [e for e in log if e.method == "PATCH"]
    assert len([e for e in log if e.method == "POST" and "mount=" in e.path]) == 3
    for digest in built.image.layer_digests:
        assert client.blob_exists(other, digest)
    # A blob missing everywhere is a clear error.
    orphan = Store(tmp_path / "orphan")
    copy_into_store(orphan, Layout(built.path).root("v1"), Layout(built.path), "example.com/o:1",
                    source=None, platforms=None)
    assert orphan.delete_blob(built.image.layer_digests[0])
    with pytest.raises(Exception, match="not in the store and the image has no source registry"):
        push_image(orphan, client, "example.com/o:1", dest=f"{registry.host}/{unique_repo}-orphan:v1")


def test_push_of_a_lazily_pulled_image_to_another_registry_copies_layers(
        tmp_path: Path, registry: RegistryServer, registry_redirect: RegistryServer, unique_repo: str,
        client: RegistryClient) -> None:
    name = f"{registry.host}/{unique_repo}:lazy"
    built, lazy = _pushed_then_pulled_lazily(tmp_path, client, name)
    elsewhere = f"{registry_redirect.host}/{unique_repo}:copied"
    result = push_image(lazy, client, name, dest=elsewhere)
    assert result.digest == built.root_digest
    again = Store(tmp_path / "again")
    pull_image(again, client, elsewhere)
    for digest in built.image.layer_digests:
        again.verify_blob(digest)
    assert not any(lazy.has_blob(d) for d in built.image.layer_digests)  # nothing was stored on the way


def test_pull_unpacks_layers_while_downloading(tmp_path: Path, registry: RegistryServer, unique_repo: str,
                                               client: RegistryClient) -> None:
    from lazypull.runtime.layers import snapshot_dir, streaming_unpacker

    name = f"{registry.host}/{unique_repo}:unpack"
    src = Store(tmp_path / "src")
    built = _import(tmp_path, src, name)
    push_image(src, client, name)
    root = tmp_path / "dst"
    dst = Store(root)
    pull_image(dst, client, name, unpack=streaming_unpacker(root))
    dirs = [snapshot_dir(root, d) for d in built.image.layer_digests]
    assert (dirs[0] / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (dirs[1] / "etc/motd").read_bytes() == b"hello\n"
    assert (dirs[2] / "data/blob.bin").read_bytes() == bytes(range(256)) * 400
    # The DiffIDs were checked on the way (no second decompression pass needed).
    assert [dst.uncompressed_info(d) for d in built.image.layer_digests] == [
        (sha256(t), len(t)) for t in built.image.tars]
    assert [p.name for p in (root / "snapshots").glob("*/.*")] == []   # no temporary dirs left


def test_pull_with_unpack_refuses_wrong_diff_id_and_extracts_nothing(
        tmp_path: Path, registry: RegistryServer, unique_repo: str, client: RegistryClient) -> None:
    from lazypull.runtime.layers import streaming_unpacker

    name = f"{registry.host}/{unique_repo}:baddiff"
    src = Store(tmp_path / "src")
    wrong = "sha256:" + "0" * 64
    layers = sample_layers()
    layers[2].append(file("data/unique", name))
    built = make_oci_layout(tmp_path / "layout", layers, tag="v1",
                            config={"rootfs": {"type": "layers", "diff_ids": [wrong] * 3}})
    layout = Layout(built.path)
    copy_into_store(src, layout.root("v1"), layout, name, source=None, platforms=None, verify_diff_ids=False)
    push_image(src, client, name)
    root = tmp_path / "dst"
    dst = Store(root)
    with pytest.raises(DigestMismatchError, match="diff_id"):
        pull_image(dst, client, name, unpack=streaming_unpacker(root))
    assert dst.list_images() == [] and _blob_count(dst) == 0
    assert [p for p in (root / "snapshots").rglob("*") if p.parent.parent == root / "snapshots"] == []


@pytest.mark.parametrize("ignore_range", [False, True])
def test_pull_with_unpack_survives_broken_downloads(tmp_path: Path, registry: RegistryServer,
                                                    fault_proxy: FaultProxy, unique_repo: str,
                                                    client: RegistryClient, ignore_range: bool) -> None:
    """A download resumed with Range keeps feeding the extraction; one that starts over (the server
    ignored Range) cannot, so the pull verifies the stored blob and leaves extraction to lower_dirs."""
    from lazypull.runtime.layers import lower_dirs, snapshot_dir, streaming_unpacker

    layers = [[directory("data"), file("data/random", os.urandom(300_000)), file("data/tag", unique_repo)]]
    built = make_oci_layout(tmp_path / "layout", layers, tag="v1")
    layout = Layout(built.path)
    src = Store(tmp_path / "src")
    name = f"{fault_proxy.host}/{unique_repo}:v1"
    copy_into_store(src, layout.root("v1"), layout, name, source=None, platforms=None)
    push_image(src, client, name)
    fault_proxy.clear()
    layer_path = "/blobs/" + built.image.layer_digests[0]
    fault_proxy.add(Fault("truncate", method="GET", path_contains=layer_path, after_bytes=100_000))
    if ignore_range:
        fault_proxy.add(Fault("no_range", method="GET", path_contains=layer_path))
    root = tmp_path / "dst"
    dst = Store(root)
    pull_image(dst, client, name, unpack=streaming_unpacker(root))
    gets = [r for r in fault_proxy.requests if layer_path in r.path]
    assert [r.status for r in gets] == [200, 200 if ignore_range else 206]
    layer_dir = snapshot_dir(root, built.image.layer_digests[0])
    assert layer_dir.is_dir() is (not ignore_range)
    assert dst.uncompressed_info(built.image.layer_digests[0]) == (sha256(built.image.tars[0]),
                                                                   len(built.image.tars[0]))
    lower_dirs(root, dst, dst.resolve(name), None)
    assert (layer_dir / "data" / "tag").read_text() == unique_repo
    assert [p.name for p in layer_dir.parent.iterdir()] == ["fs"]
