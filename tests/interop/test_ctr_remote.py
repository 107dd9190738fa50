"""Layers converted end to end by the reference converter (Debian ctr-remote 0.12 on a private containerd
1.6) are read and verified by our reader; their annotations and the config's diff_ids are consistent."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.helpers.containerd import (
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    ContainerdError,
    ConvertedImage,
    Ctr,
    write_oci_archive,
)
from tests.interop import compare
from tests.interop.tarcases import TarCase

ZSTD_CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
ZSTD_POSITION = "io.containers.zstd-chunked.manifest-position"
SOURCE = "example.test/lazypull/interop:src"


@pytest.fixture(scope="module")
def converted(
    containerd: Ctr, tar_cases: dict[str, TarCase], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ConvertedImage]]:
    """One two-layer source image (edge cases; `./` names) converted three ways by ctr-remote."""
    work = tmp_path_factory.mktemp("ctr")
    archive = work / "src.tar"
    write_oci_archive([tar_cases["edge"].path, tar_cases["dot"].path], archive, SOURCE)
    assert SOURCE in containerd.import_archive(archive)
    variants = {
        "estargz": {"zstdchunked": False},
        "estargz-chunk4096-level1": {"zstdchunked": False, "chunk_size": 4096, "level": 1},
        "zstdchunked": {"zstdchunked": True},
    }
    out = {}
    for name, opts in variants.items():
        dst = f"example.test/lazypull/interop:{name}"
        containerd.convert(SOURCE, dst, **opts)  # type: ignore[arg-type]
        out[name] = containerd.read_image(dst, work / name)
    yield out
    shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("variant", ["estargz", "estargz-chunk4096-level1", "zstdchunked"])
def test_ctr_remote_layers_read_by_us(
    variant: str, converted: dict[str, ConvertedImage], tar_cases: dict[str, TarCase]
) -> None:
    image = converted[variant]
    zstd = variant.startswith("zstd")
    diff_ids = image.config["rootfs"]["diff_ids"]
    assert len(diff_ids) == len(image.layers) == 2
    for i, ((desc, blob), source) in enumerate(zip(image.layers, ("edge", "dot"), strict=True)):
        where = f"{variant} layer {i} ({desc['digest']})"
        ann = desc.get("annotations", {})
        want_type = "application/vnd.oci.image.layer.v1.tar+" + ("zstd" if zstd else "gzip")
        assert desc["mediaType"] == want_type, f"{where}: media type {desc['mediaType']}"
        assert compare.file_sha256(blob) == desc["digest"] and blob.stat().st_size == desc["size"]

        with compare.opened(blob, ann[TOC_DIGEST_ANNOTATION]) as reader:
            assert reader.toc_digest == ann[TOC_DIGEST_ANNOTATION], where
            assert reader.compression == ("zstd" if zstd else "gzip"), where
            reader.verify()
            tree = compare.our_tree(reader)
        problems = compare.diff_tree_vs_tar(tree, tar_cases[source].files)
        assert not problems, f"{where}: our reader vs the source tar:\n" + "\n".join(problems)
        for link, target in tar_cases[source].symlinks.items():
            assert tree[link]["type"] == "symlink" and tree[link]["linkName"] == target, f"{where}: {link}"

        diff_id, usize = compare.decompressed_digest(blob, "zstd" if zstd else "gzip")
        assert diff_ids[i] == diff_id, f"{where}: config diff_id {diff_ids[i]}, decompressed blob {diff_id}"
        assert ann[UNCOMPRESSED_SIZE_ANNOTATION] == str(usize), f"{where}: uncompressed-size annotation"
        if zstd:
            data = blob.read_bytes()
            off, clen, ulen, kind = (int(x) for x in ann[ZSTD_POSITION].split(":"))
            assert ann[ZSTD_CHECKSUM] == compare.sha256(data[off : off + clen]), f"{where}: manifest-checksum"
            assert kind == 1 and ulen == len(compare.raw_toc(blob)[0]), f"{where}: manifest-position"


def test_ctr_remote_chunking_matches_go_build(
    converted: dict[str, ConvertedImage], tar_cases: dict[str, TarCase]
) -> None:
    """The chunk-size flag reached the converter: the 70 kB file is cut into 4096-byte chunks."""
    (desc, blob), _ = converted["estargz-chunk4096-level1"].layers
    with compare.opened(blob, desc["annotations"][TOC_DIGEST_ANNOTATION]) as reader:
        big = reader.lookup("bin/big")
        assert big is not None
        sizes = [c.chunk_size for c in reader.chunks(big)]
    assert sizes[:-1] == [4096] * (len(sizes) - 1) and sum(sizes) == big.size, sizes


def test_ctr_remote_missing_image_is_a_clear_error(containerd: Ctr) -> None:
    with pytest.raises(ContainerdError, match="no-such-image"):
        containerd.convert("example.test/lazypull/no-such-image:1", "example.test/lazypull/x:1")
