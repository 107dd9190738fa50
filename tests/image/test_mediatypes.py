"""Media type mapping (Docker -> OCI, compression variants) and platform parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazypull.image import Layout, Store, copy_into_store
from lazypull.image import mediatypes as mt
from lazypull.image.errors import ImageError
from lazypull.image.platform import config_platform, parse_platform, platform_label
from lazypull.registry import Platform
from tests.helpers.images import make_oci_layout, sample_layers


@pytest.mark.parametrize("media, compression, expected", [
    (mt.DOCKER_LAYER, "gzip", mt.DOCKER_LAYER_GZIP),
    (mt.DOCKER_LAYER_GZIP, "none", mt.DOCKER_LAYER),
    (mt.DOCKER_LAYER_GZIP, "zstd", mt.DOCKER_LAYER_ZSTD),
    (mt.OCI_LAYER, "gzip", mt.OCI_LAYER_GZIP),
    (mt.OCI_LAYER_ZSTD, "gzip", mt.OCI_LAYER_GZIP),
    (mt.OCI_LAYER_ND_GZIP, "none", mt.OCI_LAYER_ND),
])
def test_with_compression(media: str, compression: str, expected: str) -> None:
    assert mt.with_compression(media, compression) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("docker, oci", [
    (mt.DOCKER_MANIFEST_LIST, mt.OCI_INDEX), (mt.DOCKER_MANIFEST, mt.OCI_MANIFEST),
    (mt.DOCKER_CONFIG, mt.OCI_CONFIG), (mt.DOCKER_LAYER_GZIP, mt.OCI_LAYER_GZIP),
    (mt.DOCKER_FOREIGN_LAYER, mt.OCI_LAYER_ND_GZIP), (mt.OCI_LAYER_GZIP, mt.OCI_LAYER_GZIP),
])
def test_to_oci(docker: str, oci: str) -> None:
    assert mt.to_oci(docker) == oci


def test_platforms() -> None:
    assert parse_platform("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert parse_platform("arm64") == Platform("linux", "arm64")
    with pytest.raises(ImageError, match="invalid platform"):
        parse_platform("linux//x")
    assert platform_label(config_platform({})) == "linux"
    assert platform_label(config_platform({"os": "linux", "architecture": "arm", "variant": "v7"})) == \
        "linux/arm/v7"


def test_store_image_for_a_platform(tmp_path: Path) -> None:
    built = make_oci_layout(tmp_path / "l", sample_layers()[:1], tag="m",
                            platforms=["linux/amd64", "linux/arm64"])
    layout = Layout(built.path)
    store = Store(tmp_path / "root")
    copy_into_store(store, layout.root("m"), layout, "example.com/m:1", source=None, platforms=None)
    image = store.image("example.com/m:1", Platform("linux", "arm64"))
    assert image.digest() == built.images[1].manifest_digest
    assert str(image.platform()) == "linux/arm64"
    assert store.root_image("example.com/m:1").digest() == built.root_digest
    layer = image.layers()[0]
    assert layer.diff_id() == built.images[1].diff_ids[0]
    with layer.uncompressed() as tar:
        assert tar.read() == built.images[1].tars[0]
