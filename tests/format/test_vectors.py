"""Every Go-made vector is read, verified and means what its source tar says (format.md 1.12-3.2)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from lazypull.format import BuildOptions, FileSource, build, open_layer
from lazypull.format.footer import ESTARGZ_FOOTER_SIZE, legacy_footer
from lazypull.format.landmarks import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from tests.format.tarcompare import assert_same_tree, decompressed, sha256
from tests.format.test_roundtrip import Node, _tar
from tests.helpers.oracle import Oracle

ESGZ = [
    # blob, source tar, build json, toc json, external toc blob
    ("tiny.esgz", "tiny.tar", "tiny.build.json", "tiny.esgz.toc.json", None),
    ("small.esgz", "small.tar", "small.build.json", "small.esgz.toc.json", None),
    ("small-prio.esgz", "small.tar", "small-prio.build.json", "small-prio.esgz.toc.json", None),
    ("many-min.esgz", "many.tar", "many-min.build.json", "many-min.esgz.toc.json", None),
    ("tiny-ext.esgz", "tiny.tar", "tiny-ext.build.json", None, "tiny-ext.toc.gz"),
    ("tiny.zstd", "tiny.tar", "tiny.zstd.build.json", "tiny.zstd.toc.json", None),
]


@pytest.mark.parametrize(("blob", "tar", "build", "toc", "ext"), ESGZ, ids=[c[0] for c in ESGZ])
def test_vector_reads_verifies_and_matches_source(
    vectors: Path, blob: str, tar: str, build: str, toc: str | None, ext: str | None
) -> None:
    meta = json.loads((vectors / build).read_text())
    data = (vectors / blob).read_bytes()
    external = (vectors / ext).read_bytes() if ext else None
    reader = open_layer(FileSource(vectors / blob), toc_digest=meta["tocDigest"], external_toc=external)
    assert reader.verified_by == "toc"
    assert reader.toc_digest == meta["tocDigest"]
    if toc is not None:
        assert reader.toc_json == (vectors / toc).read_bytes()
    reader.verify()
    assert sha256(data) == meta["blobDigest"]
    assert len(data) == meta["blobSize"]
    assert sha256(decompressed(data)) == meta["diffID"]
    assert_same_tree(reader, (vectors / tar).read_bytes())
    for key, value in meta["metadata"].items():
        if key.endswith("manifest-checksum"):
            assert reader.manifest_checksum == value
        if key.endswith("manifest-position"):
            f = reader.footer
            assert value == f"{f.toc_offset}:{f.toc_length}:{f.toc_uncompressed}:1"


def test_legacy_footer_vector(vectors: Path) -> None:
    meta = json.loads((vectors / "tiny.build.json").read_text())
    reader = open_layer(FileSource(vectors / "tiny-legacy.stargz"), toc_digest=meta["tocDigest"])
    assert reader.footer_kind == "legacy"
    reader.verify()
    assert_same_tree(reader, (vectors / "tiny.tar").read_bytes())


def test_lossless_external_vector_decompresses_to_source(vectors: Path) -> None:
    data = (vectors / "tiny-ll-ext.esgz").read_bytes()
    reader = open_layer(FileSource(vectors / "tiny-ll-ext.esgz"),
                        external_toc=(vectors / "tiny-ll-ext.toc.gz").read_bytes())
    assert reader.footer_kind == "external"
    reader.verify()
    assert decompressed(data) == (vectors / "tiny.tar").read_bytes()
    assert reader.landmark() is None
    assert_same_tree(reader, (vectors / "tiny.tar").read_bytes())


def test_containers_storage_vector(vectors: Path) -> None:
    meta = json.loads((vectors / "tiny.cs.build.json").read_text())
    ann = meta["annotations"]
    checksum = ann["io.github.containers.zstd-chunked.manifest-checksum"]
    reader = open_layer(FileSource(vectors / "tiny.cs.zstd"), toc_digest=checksum)
    assert reader.footer_kind == "zstd-64"
    assert reader.verified_by == "manifest"
    assert reader.toc.schema == "cs"
    assert reader.toc_json == (vectors / "tiny.cs.zstd.toc.json").read_bytes()
    f = reader.footer
    assert ann["io.github.containers.zstd-chunked.manifest-position"] == (
        f"{f.toc_offset}:{f.toc_length}:{f.toc_uncompressed}:1")
    reader.verify()
    data = (vectors / "tiny.cs.zstd").read_bytes()
    assert sha256(data) == meta["blobDigest"]
    assert decompressed(data) == (vectors / "tiny.tar").read_bytes()
    hello = reader.lookup("a/hello.txt")
    assert hello is not None
    (chunk,) = reader.chunks(hello)
    assert (chunk.offset, chunk.end) == (106, 125)
    assert_same_tree(reader, (vectors / "tiny.tar").read_bytes(), check_names=False)


def test_chunking_and_min_chunk_ends(vectors: Path) -> None:
    small = open_layer(FileSource(vectors / "small.esgz"))
    big = small.lookup("/bin/big")
    assert big is not None
    chunks = small.chunks(big)
    assert [(c.chunk_offset, c.chunk_size, c.offset) for c in chunks] == [
        (0, 4096, 452), (4096, 4096, 4576), (8192, 1808, 8700)]
    assert [c.end for c in chunks[:2]] == [4576, 8700]
    many = open_layer(FileSource(vectors / "many-min.esgz"))
    f00, f03 = many.lookup("d/f00"), many.lookup("d/f03")
    assert f00 is not None and f03 is not None
    (c00,) = many.chunks(f00)
    (c03,) = many.chunks(f03)
    assert (c00.offset, c00.inner_offset, c00.end) == (90, 1536, 1222)
    assert (c03.offset, c03.inner_offset) == (1222, 0)


def test_tree_semantics(vectors: Path) -> None:
    r = open_layer(FileSource(vectors / "small.esgz"))
    # hardlink resolved to its target, which counts both names
    hard, hello = r.lookup("etc/hard"), r.lookup("etc/hello.txt")
    assert hard is hello and hello is not None and hello.num_link == 2
    # implied dir bin/ exists; duplicates: last wins
    bin_dir = r.lookup("bin")
    assert bin_dir is not None and bin_dir.type == "dir" and bin_dir.mode == 0o755
    dup = r.lookup("etc/dup")
    assert dup is not None and r.read_file(dup) == b"second"
    # whiteouts and opaque markers stay visible as ordinary entries
    assert r.lookup("etc/.wh.removed") is not None
    assert ".wh..wh..opq" in r.children("var")
    # group names come from the group map (the Go reader < 0.18.2 gets this wrong)
    u2 = r.lookup("home/u2")
    assert u2 is not None and (u2.user_name, u2.group_name) == ("user", "grp")
    assert set(r.children("")) >= {"etc", "var", "bin", "usr", "dev", "home", NO_PREFETCH_LANDMARK}
    assert r.lookup("dev/null") is not None
    prio = open_layer(FileSource(vectors / "small-prio.esgz"))
    landmark = prio.lookup(PREFETCH_LANDMARK)
    assert landmark is not None and prio.prefetch_range() == (0, landmark.offset)
    assert r.prefetch_range() is None


class CountingSource(FileSource):
    """Counts the reads open_layer makes."""

    reads: list[tuple[int, int]]

    def read_at(self, offset: int, length: int) -> bytes:
        self.reads = [*getattr(self, "reads", []), (offset, length)]
        return super().read_at(offset, length)


def test_footer_and_toc_in_one_read_when_the_tail_holds_them(vectors: Path, tmp_path: Path) -> None:
    src = CountingSource(vectors / "small.esgz")
    open_layer(src)
    assert len(src.reads) == 1
    zsrc = CountingSource(vectors / "tiny.zstd")
    open_layer(zsrc, toc_offset_hint=258)
    assert len(zsrc.reads) == 1
    # a TOC larger than the 64 KiB tail costs exactly one more read
    nodes = [Node(name=f"dir{i // 100}/file-long-name-{i:05d}", kind="file", size=64) for i in range(3000)]
    tar = _tar(nodes, 1, tarfile.PAX_FORMAT)
    out = tmp_path / "big-toc.esgz"
    with out.open("wb") as f:
        build(io.BytesIO(tar), f, BuildOptions())
    big = CountingSource(out)
    reader = open_layer(big)
    assert reader.footer.toc_length > 64 << 10 and len(big.reads) == 2


def test_reader_normalises_its_own_entries_while_toc_entries_stay_as_stored(vectors: Path) -> None:
    with open(vectors / "small.esgz", "rb") as f:
        reader = open_layer(FileSource(f))
        stored = json.loads((vectors / "small.esgz.toc.json").read_bytes())["entries"]
        toc = reader.toc.entries
        assert [e.name for e in toc] == [e["name"] for e in stored]
        assert [e.user_name for e in toc] == [e.get("userName", "") for e in stored]
        assert all(e.num_link == 0 for e in toc), "num_link is the reader's"
        assert reader.toc.entries is toc, "decoded once"
        etc = reader.lookup("etc/")
        assert etc is not None and etc.name == "etc" and etc.num_link == 2
        assert toc[1].name == "etc/" and toc[1] is not etc
        assert {id(e) for e in reader.entries()}.isdisjoint(id(e) for e in toc)
        hello = reader.lookup("etc/hello.txt")
        assert hello is not None and hello.user_name == "root", "filled in from the last name seen for uid 0"
        assert reader.read_file(hello) and len(reader.chunks(hello)) == 1


REBUILDABLE = [
    # vector build json, source tar, oracle options (as tests/data/vectors/README.md gives them)
    ("tiny.build.json", "tiny.tar", {}),
    ("small.build.json", "small.tar", {"chunk_size": 4096}),
    ("small-prio.build.json", "small.tar",
     {"chunk_size": 4096, "prioritized": ["etc/hello.txt", "etc/hard", "/bin/big", "nonexistent"]}),
    ("tiny.zstd.build.json", "tiny.tar", {"zstdchunked": True}),
]


@pytest.mark.parametrize(("build", "tar", "options"), REBUILDABLE, ids=[c[0] for c in REBUILDABLE])
def test_oracle_rebuilds_the_012_vectors(
    vectors: Path, oracle: Oracle, tmp_path: Path, build: str, tar: str, options: dict[str, Any]
) -> None:
    """The README's recipe for the estargz 0.12 vectors holds: the oracle makes the same TOC and DiffID."""
    meta = json.loads((vectors / build).read_text())
    made = oracle.build(vectors / tar, tmp_path / "out", **options)
    assert (made.toc_digest, made.diff_id) == (meta["tocDigest"], meta["diffID"])
    assert made.missed == (meta["missed"] or [])
    assert meta["metadata"].items() <= made.annotations.items()


def test_legacy_vector_is_tiny_with_the_legacy_footer(vectors: Path) -> None:
    """tiny-legacy.stargz is made from tiny.esgz as the README says."""
    tiny = (vectors / "tiny.esgz").read_bytes()
    reader = open_layer(FileSource(vectors / "tiny.esgz"))
    made = tiny[:-ESTARGZ_FOOTER_SIZE] + legacy_footer(reader.footer.toc_offset)
    assert made == (vectors / "tiny-legacy.stargz").read_bytes()
