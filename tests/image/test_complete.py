"""``image convert`` of a stored image whose blobs are not all local completes it by digest from its
recorded source repository: the stored image is converted, whatever the source's tag names now."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lazypull.cli.main import cli
from lazypull.format import BytesSource, open_layer
from lazypull.image import Layout, Store, copy_into_store, pull_image
from lazypull.registry import RegistryClient
from tests.helpers.images import file, make_oci_layout, sample_layers
from tests.helpers.registry import RegistryServer


def run(root: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--root", str(root), "--insecure-registry", *args],
                              catch_exceptions=False)


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(insecure=True) as c:
        yield c


def _push(tmp_path: Path, ref: str, marker: str) -> list[str]:
    """Push a three-layer image with ``marker`` in its last layer as ``ref``; its layer digests."""
    layers = sample_layers()
    layers[2].append(file("data/marker", marker))
    built = make_oci_layout(tmp_path / f"layout-{marker}", layers, tag="v1")
    store = Store(tmp_path / f"src-{marker}")
    assert run(store.root, "image", "convert", "--oci", built.ref, ref).exit_code == 0
    pushed = run(store.root, "push", ref)
    assert pushed.exit_code == 0, pushed.stderr
    return built.images[0].layer_digests


def test_convert_of_a_lazy_image_whose_tag_moved_converts_the_stored_one(
        tmp_path: Path, registry: RegistryServer, unique_repo: str, client: RegistryClient) -> None:
    ref = f"{registry.host}/{unique_repo}:moving"
    first = _push(tmp_path, ref, "first")
    root = tmp_path / "root"
    pull_image(Store(root), client, ref, fetch_layers=False)        # what a lazy pull stores
    stored = Store(root).resolve(ref).manifest_digest
    second = _push(tmp_path, ref, "second")                         # the tag moves
    assert second[2] != first[2]
    converted = run(root, "image", "convert", "--estargz", "--oci", ref, "example.com/conv:1")
    assert converted.exit_code == 0, converted.stderr
    store = Store(root)
    assert store.resolve(ref).manifest_digest == stored              # the name still means what it did
    assert [store.has_blob(d) for d in first] == [True] * 3          # its layers fetched by digest
    assert not store.has_blob(second[2])
    diff_ids = store.resolve("example.com/conv:1").config["rootfs"]["diff_ids"]
    assert diff_ids != store.resolve(ref).diff_ids                   # eStargz layers, of the first image
    last = store.resolve("example.com/conv:1").layers[2]
    reader = open_layer(BytesSource(store.read_blob(last.digest)))
    entry = reader.lookup("data/marker")
    assert entry is not None and reader.read_file(entry) == b"first"


def test_missing_layer_without_a_source_is_one_error(tmp_path: Path) -> None:
    built = make_oci_layout(tmp_path / "layout", sample_layers(), tag="v1")
    root = tmp_path / "root"
    layout = Layout(built.path)
    copy_into_store(Store(root), layout.root("v1"), layout, "example.com/nosource:1", source=None,
                    platforms=None, fetch_layers=False)
    result = run(root, "image", "convert", "--oci", "--estargz", "example.com/nosource:1", "example.com/x:1")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].endswith(
        "is not in the store and the image has no source registry"), result.stderr
    assert "example.com/nosource:1" in result.stderr and built.images[0].layer_digests[0] in result.stderr
    assert Store(root).find_image("example.com/x:1") is None
