"""The image commands end to end, as the seed document runs them with nerdctl, against docker-registry.

convert -> images (seed columns) -> push -> pull into an empty store (verified, unpacked) -> images;
external TOC (the -esgztoc image in the registry, its annotations pointing at the pushed layers);
keep-diff-id; zstd:chunked; rmi/tag/inspect; flags before or after the subcommand.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lazypull.cli.image import human_duration, human_size, since, tabulate
from lazypull.cli.main import cli
from lazypull.image import Store
from lazypull.image import mediatypes as mt
from lazypull.registry import RegistryClient
from tests.helpers.images import BuiltLayout, file, make_oci_layout, sample_layers, sha256
from tests.helpers.registry import RegistryServer

HEADER = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "PLATFORM", "SIZE", "BLOB SIZE", "LOCAL"]


def run(root: Path, *args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(cli, ["--root", str(root), *args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result


def parse_table(text: str) -> list[dict[str, str]]:
    """Split the images table at the header's column starts (checks the tabwriter alignment)."""
    lines = text.rstrip("\n").split("\n")
    starts = [lines[0].index(h) for h in HEADER]
    assert starts[0] == 0
    rows = []
    for line in lines[1:]:
        ends = [*starts[1:], None]
        cells = [line[a:b].rstrip() if b else line[a:] for a, b in zip(starts, ends, strict=True)]
        for a in starts[1:]:
            assert line[a - 1] == " " and line[a] != " ", f"misaligned row: {line!r}"
        rows.append(dict(zip(HEADER, cells, strict=True)))
    return rows


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(insecure=True) as c:
        yield c


@pytest.fixture
def layout(tmp_path: Path, unique_repo: str) -> BuiltLayout:
    layers = sample_layers()
    layers[2].append(file("data/owner", unique_repo))  # this test's own blobs in the shared registry
    return make_oci_layout(tmp_path / "layout", layers, tag="22.04", docker=True)


def test_formatting_like_nerdctl() -> None:
    assert human_size(0) == "0.0 B"
    assert human_size(1023) == "1023.0 B"
    assert human_size(int(151.3 * 1024)) == "151.3 KiB"
    assert human_size(int(83.4 * 1024 * 1024)) == "83.4 MiB"
    assert human_size(29 * 1024 ** 3) == "29.0 GiB"
    assert human_duration(0.4) == "Less than a second"
    assert human_duration(1) == "1 second"
    assert human_duration(14.9) == "14 seconds"
    assert human_duration(61) == "About a minute"
    assert human_duration(3 * 60) == "3 minutes"
    assert human_duration(3600 * 1.4) == "About an hour"
    assert human_duration(3600 * 5) == "5 hours"
    assert human_duration(3600 * 24 * 3) == "3 days"
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert since(now - dt.timedelta(seconds=14), now) == "14 seconds ago"
    # Go tabwriter(minwidth 4, padding 4): each column as wide as its widest cell + 4, the last unpadded.
    assert tabulate([["REPOSITORY", "TAG", "X"], ["ghcr.io/stargz-containers/ubuntu", "22.04", "y"]]) == (
        "REPOSITORY                          TAG      X\n"
        "ghcr.io/stargz-containers/ubuntu    22.04    y\n")


def test_seed_flow_min_chunk_size(tmp_path: Path, registry: RegistryServer, layout: BuiltLayout,
                                  unique_repo: str, client: RegistryClient) -> None:
    name = f"{registry.host}/{unique_repo}:22.04-chunk50000"
    root = tmp_path / "root"
    out = run(root, "image", "convert", "--oci", "--estargz", "--estargz-min-chunk-size=50000",
              layout.ref, name)
    digest = out.stdout.strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    table = run(root, "images").stdout
    assert table.split("\n")[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "PLATFORM", "SIZE",
                                            "BLOB", "SIZE", "LOCAL"]
    (row,) = parse_table(table)
    store = Store(root)
    manifest = json.loads(store.read_blob(digest))
    blob_size = len(store.read_blob(digest)) + manifest["config"]["size"] + sum(
        layer["size"] for layer in manifest["layers"])
    assert row == {"REPOSITORY": f"{registry.host}/{unique_repo}", "TAG": "22.04-chunk50000",
                   "IMAGE ID": digest[7:19], "CREATED": row["CREATED"], "PLATFORM": "linux/amd64",
                   "SIZE": "0.0 B", "BLOB SIZE": human_size(blob_size), "LOCAL": "0.0 B"}
    assert re.fullmatch(r"(Less than a second|1 second|\d+ seconds) ago", row["CREATED"])
    assert run(root, "images", "-q").stdout == digest[7:19] + "\n"

    run(root, "push", "--insecure-registry", name)
    raw, _, pushed = client.get_manifest(name)
    assert pushed == digest and json.loads(raw)["layers"][0]["annotations"][mt.TOC_DIGEST]

    # Pull into an empty store (full pull: --snapshotter=overlayfs), verified and unpacked.
    other = tmp_path / "other"
    pulled = run(other, "pull", "--snapshotter=overlayfs", "--insecure-registry", name).stdout.strip()
    assert pulled == digest
    other_store = Store(other)
    resolved = other_store.resolve(name)
    for desc, diff_id in zip(resolved.layers, resolved.diff_ids, strict=True):
        other_store.verify_blob(desc.digest)
        info = other_store.uncompressed_info(desc.digest)
        assert info is not None and info[0] == diff_id
        assert (other / "snapshots" / desc.digest[7:] / "fs").is_dir()
    motd = other / "snapshots" / resolved.layers[1].digest[7:] / "fs" / "etc" / "motd"
    assert motd.read_text() == "hello\n"
    (row,) = parse_table(run(other, "images").stdout)
    unpacked = sum(int(d.annotations[mt.UNCOMPRESSED_SIZE]) for d in resolved.layers)
    assert row["SIZE"] == row["LOCAL"] == human_size(unpacked) != "0.0 B"
    assert row["BLOB SIZE"] == human_size(blob_size)


def test_seed_flow_external_toc(tmp_path: Path, registry: RegistryServer, layout: BuiltLayout,
                                unique_repo: str, client: RegistryClient) -> None:
    name = f"{registry.host}/{unique_repo}:22.04-ex"
    root = tmp_path / "root"
    out = run(root, "image", "convert", "--oci", "--estargz", "--estargz-external-toc", layout.ref, name)
    assert re.fullmatch(r"INFO\[\d{4}\] Extra image\(0\) " + re.escape(name + "-esgztoc") + "\n", out.stderr)
    digest = out.stdout.strip()
    rows = parse_table(run(root, "images").stdout)
    assert [(r["TAG"], r["PLATFORM"], r["SIZE"]) for r in rows] == [
        ("22.04-ex", "linux/amd64", "0.0 B"), ("22.04-ex-esgztoc", "linux", "0.0 B")]
    # Pushing the image pushes the TOC image alongside (nerdctl needs two pushes; one is enough here).
    run(root, "push", "--insecure-registry", name)
    raw, _, pushed = client.get_manifest(name)
    assert pushed == digest
    layers = json.loads(raw)["layers"]
    toc_raw, toc_type, _ = client.get_manifest(name + "-esgztoc")
    toc_manifest = json.loads(toc_raw)
    assert toc_type == mt.OCI_MANIFEST
    assert toc_manifest["config"]["digest"] == sha256(b"{}")
    pointed = {t["annotations"][mt.TOC_LAYER_DIGEST] for t in toc_manifest["layers"]}
    assert pointed == {layer["digest"] for layer in layers}
    for t in toc_manifest["layers"]:
        assert client.blob_exists(name, t["digest"])


def test_seed_flow_keep_diff_id(tmp_path: Path, registry: RegistryServer, layout: BuiltLayout,
                                unique_repo: str, client: RegistryClient) -> None:
    name = f"{registry.host}/{unique_repo}:22.04-ex-keepdiff"
    root = tmp_path / "root"
    run(root, "image", "convert", "--oci", "--estargz", "--estargz-external-toc", "--estargz-keep-diff-id",
        layout.ref, name)
    run(root, "push", "--insecure-registry", name)
    raw, _, _ = client.get_manifest(name)
    config = json.loads(client.fetch_blob(name, json.loads(raw)["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == layout.image.diff_ids
    assert client.get_manifest(name + "-esgztoc")[1] == mt.OCI_MANIFEST
    refused = run(root, "image", "convert", "--oci", "--estargz", "--estargz-keep-diff-id", layout.ref,
                  name + "x", ok=False)
    assert refused.exit_code == 2 and "--estargz-external-toc" in refused.stderr


def test_zstdchunked_and_warning_without_oci(tmp_path: Path, layout: BuiltLayout) -> None:
    root = tmp_path / "root"
    digest = run(root, "image", "convert", "--zstdchunked", "--oci", "--zstdchunked-compression-level", "7",
                 layout.ref, "example.com/foo:zstdchunked").stdout.strip()
    manifest = json.loads(Store(root).read_blob(digest))
    for layer in manifest["layers"]:
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        wanted = {mt.ZSTD_MANIFEST_CHECKSUM, mt.ZSTD_MANIFEST_POSITION, mt.TOC_DIGEST}
        assert wanted <= set(layer["annotations"])
    warned = run(root, "image", "convert", "--estargz", layout.ref, "example.com/foo:docker")
    warning = r"WARN\[\d{4}\] option --estargz should be used in conjunction with --oci"
    assert re.search(warning, warned.stderr)


def test_zstdchunked_record_in_prioritises_files(tmp_path: Path, layout: BuiltLayout) -> None:
    """nerdctl's --zstdchunked-record-in: the recorded files come first, then .prefetch.landmark."""
    from lazypull.format import FileSource, open_layer

    root = tmp_path / "root"
    record = tmp_path / "record.json"
    record.write_text('{"path": "data/text.txt", "layerIndex": 2}\n')
    misuse = run(root, "image", "convert", "--zstdchunked", "--oci", "--estargz-record-in", str(record),
                 layout.ref, "x:1", ok=False)
    assert misuse.exit_code == 2 and "--zstdchunked-record-in" in misuse.stderr
    digest = run(root, "image", "convert", "--zstdchunked", "--oci", "--zstdchunked-record-in", str(record),
                 layout.ref, "example.com/foo:zstd-opt").stdout.strip()
    store = Store(root)
    layers = json.loads(store.read_blob(digest))["layers"]
    names = []
    for desc in layers:
        path = store.blob_path(desc["digest"])
        assert path is not None
        reader = open_layer(FileSource(path), toc_digest=desc["annotations"][mt.TOC_DIGEST])
        names.append([e.name for e in reader.toc.entries if e.type != "chunk"])
    assert names[2][:3] == ["data/", "data/text.txt", ".prefetch.landmark"]
    assert names[0][0] == ".no.prefetch.landmark" and names[1][0] == ".no.prefetch.landmark"


def test_convert_from_registry_source_and_into_layout(tmp_path: Path, registry: RegistryServer,
                                                      layout: BuiltLayout, unique_repo: str) -> None:
    root = tmp_path / "root"
    src = f"{registry.host}/{unique_repo}:org"
    run(root, "image", "convert", "--oci", layout.ref, src)
    run(root, "push", "--insecure-registry", src)
    fresh = tmp_path / "fresh"
    # SRC not in the store: pulled first (like `nerdctl pull` + convert), then converted into a layout.
    out = tmp_path / "out"
    digest = run(fresh, "--insecure-registry", "image", "convert", "--estargz", "--oci", src,
                 f"oci:{out}:esgz").stdout.strip()
    index = json.loads((out / "index.json").read_text())
    assert [(m["digest"], m["annotations"][mt.REF_NAME]) for m in index["manifests"]] == [(digest, "esgz")]
    assert [r.name for r in Store(fresh).list_images()] == [src]


def test_tag_rmi_inspect_and_flag_positions(tmp_path: Path, layout: BuiltLayout) -> None:
    root = tmp_path / "root"
    digest = run(root, "image", "convert", "--estargz", "--oci", layout.ref, "example.com/a:1").stdout.strip()
    # Global flags after the subcommand work too.
    CliRunner().invoke(cli, ["tag", "example.com/a:1", "b", "--root", str(root)], catch_exceptions=False)
    rows = parse_table(run(root, "image", "ls").stdout)
    assert [(r["REPOSITORY"], r["TAG"], r["IMAGE ID"]) for r in rows] == [
        ("b", "latest", digest[7:19]), ("example.com/a", "1", digest[7:19])]
    info = json.loads(run(root, "image", "inspect", "b").stdout)
    assert info[0]["Id"] == digest and info[0]["Platform"] == "linux/amd64"
    assert sorted(info[0]["RepoTags"]) == ["b:latest", "example.com/a:1"]
    assert len(info[0]["Layers"]) == 3
    out = run(root, "rmi", "b").stdout
    assert out == f"Untagged: docker.io/library/b:latest@{digest}\n"  # still named example.com/a:1
    store = Store(root)
    assert store.has_blob(digest)
    out = run(root, "image", "rm", "example.com/a:1").stdout
    assert f"Deleted: {digest}" in out
    assert not store.has_blob(digest) and list(store.blobs_dir.iterdir()) == []
    missing = run(root, "rmi", "example.com/nope:1", ok=False)
    assert missing.exit_code == 1 and "not found" in missing.stderr
    assert run(root, "rmi", "-f", "example.com/nope:1").exit_code == 0


def test_bad_input_is_a_clear_error(tmp_path: Path, layout: BuiltLayout) -> None:
    root = tmp_path / "root"
    bad = run(root, "image", "convert", "--estargz", "--oci", f"oci:{layout.path}:nope", "x:1", ok=False)
    assert bad.exit_code == 1 and "no image tagged 'nope'" in bad.stderr
    both = run(root, "image", "convert", "--estargz", "--zstdchunked", layout.ref, "x:1", ok=False)
    assert both.exit_code == 2 and "mutually exclusive" in both.stderr
    record = tmp_path / "record.json"
    record.write_text('{"path": 1}')
    rec = run(root, "image", "convert", "--estargz", "--oci", "--estargz-record-in", str(record), layout.ref,
              "x:1", ok=False)
    assert rec.exit_code == 1 and 'has no "path" string' in rec.stderr
    assert Store(root).list_images() == []
    unreachable = run(root, "--insecure-registry", "image", "convert", "--estargz", "--oci",
                      "127.0.0.1:1/nothing/here:v1", "x:1", ok=False)
    assert unreachable.exit_code == 1 and "127.0.0.1:1" in unreachable.stderr
    assert unreachable.stderr.count("\n") == 1  # one line, no traceback
    bad_name = run(root, "tag", "x:1", "Not/Valid:1", ok=False)
    assert bad_name.exit_code == 1 and "not found" in bad_name.stderr
    (root / "images.json").write_text("{broken")
    broken = run(root, "images", ok=False)
    assert broken.exit_code == 1 and "images.json is not valid JSON" in broken.stderr


def test_lazy_pull_mounts_layers(tmp_path: Path, registry: RegistryServer, layout: BuiltLayout,
                                 unique_repo: str) -> None:
    """Default snapshotter (stargz): manifest and config only, then the mount server mounts the layers."""
    import subprocess

    from lazypull.snapshot import MountClient

    name = f"{registry.host}/{unique_repo}:esgz"
    src = tmp_path / "src"
    run(src, "image", "convert", "--oci", "--estargz", layout.ref, name)
    run(src, "push", "--insecure-registry", name)
    root = tmp_path / "lazy"
    root.mkdir()
    (root / "config.toml").write_text("prefetch_timeout = 5.0\nbackground_fetch = false\n")
    try:
        digest = run(root, "pull", "--insecure-registry", name).stdout.strip()
        store = Store(root)
        resolved = store.resolve(name)
        assert resolved.manifest_digest == digest
        assert not any(store.has_blob(d.digest) for d in resolved.layers)
        motd = root / "snapshots" / resolved.layers[1].digest[7:] / "fs" / "etc" / "motd"
        assert motd.read_text() == "hello\n"
        (row,) = parse_table(run(root, "images").stdout)
        mounted = sum(int(d.annotations[mt.UNCOMPRESSED_SIZE]) for d in resolved.layers)
        assert row["SIZE"] == human_size(mounted)

        def fuse_mounts() -> list[str]:
            out = subprocess.run(["mount"], capture_output=True, text=True, check=True).stdout
            return [line for line in out.splitlines() if str(root) in line and "fuse" in line]

        assert len(fuse_mounts()) == 3
        # rmi drops the pull's hold: nobody else holds the layers, so they are unmounted.
        run(root, "rmi", name)
        assert fuse_mounts() == []
    finally:
        MountClient(root, autostart=False).shutdown()
        mounts = subprocess.run(["mount"], capture_output=True, text=True, check=True).stdout
        for line in mounts.splitlines():
            if str(root) in line:
                subprocess.run(["umount", "-l", line.split()[2]], check=False)


def test_convert_completes_a_lazily_pulled_source(tmp_path: Path, registry: RegistryServer,
                                                  layout: BuiltLayout, unique_repo: str,
                                                  client: RegistryClient) -> None:
    from lazypull.image import pull_image

    src = f"{registry.host}/{unique_repo}:org"
    run(tmp_path / "a", "image", "convert", "--oci", layout.ref, src)
    run(tmp_path / "a", "push", "--insecure-registry", src)
    root = tmp_path / "b"
    pull_image(Store(root), client, src, fetch_layers=False)  # what `pull --snapshotter=stargz` stores
    assert not any(Store(root).has_blob(d) for d in layout.image.layer_digests)
    run(root, "--insecure-registry", "image", "convert", "--estargz", "--oci", src, "example.com/c:1")
    store = Store(root)
    assert all(store.has_blob(d) for d in layout.image.layer_digests)
    assert store.resolve("example.com/c:1").layers[0].annotations[mt.TOC_DIGEST]


def test_rmi_refuses_an_image_a_container_uses(tmp_path: Path, layout: BuiltLayout) -> None:
    from lazypull.runtime import ContainerRecord, Containers

    root = tmp_path / "root"
    run(root, "image", "convert", "--oci", layout.ref, "example.com/used:1")
    containers = Containers(root)
    containers.path("c0ffee" * 10 + "abcd").mkdir(parents=True)
    containers.save(ContainerRecord(id="c0ffee" * 10 + "abcd", name="box", image="example.com/used:1",
                                    command=["/bin/sh"], created="2026-01-01T00:00:00Z"))
    refused = run(root, "rmi", "example.com/used:1", ok=False)
    assert refused.exit_code == 1 and "in use by container c0ffeec0ffee" in refused.stderr
    assert Store(root).find_image("example.com/used:1") is not None
    assert run(root, "rmi", "-f", "example.com/used:1").stdout.startswith("Untagged: example.com/used:1@")
    assert Store(root).list_images() == []
