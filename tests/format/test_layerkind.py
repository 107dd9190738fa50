"""The one lazy/plain decision and what a descriptor says about opening a layer (format.layerkind)."""

from __future__ import annotations

import pytest

from lazypull.format import FormatError
from lazypull.format.annotations import (
    CS_MANIFEST_CHECKSUM_ANNOTATION,
    CS_MANIFEST_POSITION_ANNOTATION,
    MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_POSITION_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
)
from lazypull.format.layerkind import LayerSpec, is_lazy, layer_kind

DIGEST = "sha256:" + "a" * 64
TOC = "sha256:" + "b" * 64
SUM = "sha256:" + "c" * 64
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def test_kind_by_the_keys_present() -> None:
    assert layer_kind(None) == layer_kind({}) == "plain"
    assert layer_kind({TOC_DIGEST_ANNOTATION: ""}) == "plain"
    assert layer_kind({TOC_DIGEST_ANNOTATION: TOC}, GZIP) == "estargz"
    assert layer_kind({TOC_DIGEST_ANNOTATION: TOC}) == "estargz"
    assert layer_kind({TOC_DIGEST_ANNOTATION: TOC}, ZSTD) == "zstdchunked"
    # stargz-snapshotter's zstd:chunked, media type unknown (containerd's labels)
    stargz_zstd = {TOC_DIGEST_ANNOTATION: TOC, MANIFEST_POSITION_ANNOTATION: "1:2:3:1"}
    assert layer_kind(stargz_zstd) == "zstdchunked"
    assert layer_kind(stargz_zstd, GZIP) == "estargz", "a declared media type names the compression"
    # containers/storage: checksum and position of one prefix authenticate the TOC
    for checksum, position in ((CS_MANIFEST_CHECKSUM_ANNOTATION, CS_MANIFEST_POSITION_ANNOTATION),
                               (MANIFEST_CHECKSUM_ANNOTATION, MANIFEST_POSITION_ANNOTATION)):
        assert layer_kind({checksum: SUM, position: "1:2:3:1"}, ZSTD) == "zstdchunked"
        assert layer_kind({checksum: SUM}, ZSTD) == "plain", "no position: the TOC cannot be checked"
    mixed = {CS_MANIFEST_CHECKSUM_ANNOTATION: SUM, MANIFEST_POSITION_ANNOTATION: "1:2:3:1"}
    assert layer_kind(mixed) == "plain", "checksum and position must come from one writer"
    assert is_lazy({TOC_DIGEST_ANNOTATION: TOC}) and not is_lazy({"other": "x"})


def test_spec_of_an_estargz_layer() -> None:
    spec = LayerSpec.from_descriptor(DIGEST, 1234, GZIP, {TOC_DIGEST_ANNOTATION: TOC,
                                                          UNCOMPRESSED_SIZE_ANNOTATION: "4096"})
    assert (spec.kind, spec.lazy, spec.toc_digest, spec.uncompressed_size) == ("estargz", True, TOC, 4096)
    assert spec.toc_offset_hint is None and spec.manifest_checksum is None
    plain = LayerSpec.from_descriptor(DIGEST, 1, GZIP, {UNCOMPRESSED_SIZE_ANNOTATION: "nonsense"})
    assert (plain.kind, plain.lazy, plain.toc_digest) == ("plain", False, None)


def test_spec_of_a_containers_storage_layer() -> None:
    spec = LayerSpec.from_descriptor(DIGEST, None, "", {CS_MANIFEST_CHECKSUM_ANNOTATION: SUM,
                                                        CS_MANIFEST_POSITION_ANNOTATION: "258:335:771:1",
                                                        MANIFEST_POSITION_ANNOTATION: "9:9:9:1"})
    assert spec.kind == "zstdchunked" and spec.toc_digest is None
    assert (spec.manifest_checksum, spec.toc_position, spec.toc_offset_hint) == (SUM, (258, 335), 258)


@pytest.mark.parametrize(("key", "value"), [
    (UNCOMPRESSED_SIZE_ANNOTATION, "-1"),
    (UNCOMPRESSED_SIZE_ANNOTATION, "12x"),
    (MANIFEST_POSITION_ANNOTATION, "1:2:3"),
    (MANIFEST_POSITION_ANNOTATION, "a:b:c:d"),
])
def test_a_malformed_value_names_the_layer_and_key(key: str, value: str) -> None:
    ann = {TOC_DIGEST_ANNOTATION: TOC, key: value}
    assert is_lazy(ann), "the kind is decided by the keys, the values are checked when opened"
    with pytest.raises(FormatError, match=f"layer {DIGEST}: malformed {key} annotation"):
        LayerSpec.from_descriptor(DIGEST, 1, GZIP, ann)
