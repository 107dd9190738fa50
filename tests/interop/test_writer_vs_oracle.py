"""Our writer against the Go reference (Debian estargz 0.12): every blob we write, with every option
0.12 understands, must be accepted by the Go reader (TOC digest and every chunk verified), list the same
tree as our reader, and carry the TOC Go's `Build` writes for the same tar and options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from lazypull.format import BuildOptions, BuildResult, build
from lazypull.format.annotations import TOC_DIGEST_ANNOTATION as TOC_DIGEST
from tests.helpers.oracle import Oracle
from tests.interop import compare
from tests.interop.tarcases import TarCase

USIZE = "io.containers.estargz.uncompressed-size"
ZSTD_CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
ZSTD_POSITION = "io.containers.zstd-chunked.manifest-position"


@dataclass(frozen=True)
class Case:
    tar: str
    compression: str = "gzip"
    chunk_size: int = 0
    level: int | None = None
    prioritized: tuple[str, ...] | None = None
    parallelism: int = 1  # Go: GOMAXPROCS during Build; the part count shapes the TOC (name dedupe)

    def options(self) -> BuildOptions:
        return BuildOptions(
            compression="zstd" if self.compression == "zstd" else "gzip",
            level=self.level,
            chunk_size=self.chunk_size,
            prioritized_files=list(self.prioritized) if self.prioritized is not None else None,
            parallelism=self.parallelism,
        )


# Not "/bin/big": its parent is implied, which our writer prioritises on purpose (see the test below).
PRIO = ("etc/hard", "./etc/longlink", "nonexistent", "home/u1", "../etc/xattr", "etc/dup")
CASES = {
    "gzip-defaults": Case("edge"),
    "gzip-chunk4096": Case("edge", chunk_size=4096),
    "gzip-chunk1000-level1": Case("edge", chunk_size=1000, level=1),
    "gzip-level6-big-file-default-chunks": Case("bigchunk", level=6),
    "gzip-prioritized": Case("edge", chunk_size=8192, prioritized=PRIO),
    "gzip-2-parts": Case("edge", chunk_size=4096, parallelism=2),
    "gzip-3-parts-prioritized": Case("many", prioritized=("d2/f000",), parallelism=3),
    "gzip-prioritized-many": Case("many", prioritized=("d1/f005", "d0/f001", "d2/")),
    "gzip-dot-names": Case("dot", chunk_size=4096),
    "gzip-dot-prioritized": Case("dot", prioritized=("usr/bin/tool", "bin")),
    "zstd-defaults": Case("edge", compression="zstd"),
    "zstd-chunk4096-level9": Case("edge", compression="zstd", chunk_size=4096, level=9),
    "zstd-prioritized": Case("many", compression="zstd", chunk_size=1024, prioritized=("d2/f010", "x")),
    "zstd-dot-names": Case("dot", compression="zstd"),
    "zstd-2-parts": Case("edge", compression="zstd", parallelism=2),
}


def _build_ours(tar: Path, out: Path, case: Case) -> BuildResult:
    with tar.open("rb") as src, out.open("wb") as dst:
        return build(src, dst, case.options())


def _check_result(blob: Path, res: BuildResult, compression: str) -> list[str]:
    """What our BuildResult claims vs what the blob is."""
    diffs = []
    if res.blob_digest != compare.file_sha256(blob):
        diffs.append(f"blob_digest {res.blob_digest} != sha256 of the blob {compare.file_sha256(blob)}")
    if res.blob_size != blob.stat().st_size:
        diffs.append(f"blob_size {res.blob_size} != {blob.stat().st_size}")
    diff_id, usize = compare.decompressed_digest(blob, compression)
    if (res.diff_id, res.uncompressed_size) != (diff_id, usize):
        diffs.append(f"diff_id/uncompressed_size {res.diff_id}/{res.uncompressed_size} != {diff_id}/{usize}")
    raw, _, kind = compare.raw_toc(blob)
    if kind != compression:
        diffs.append(f"blob footer says {kind}, asked for {compression}")
    if compare.sha256(raw) != res.toc_digest:
        diffs.append(f"toc_digest {res.toc_digest} != sha256 of the stored TOC JSON {compare.sha256(raw)}")
    want = {TOC_DIGEST: res.toc_digest, USIZE: str(usize)}
    if compression == "zstd":
        data = blob.read_bytes()
        off, clen, ulen, _ = (int(x) for x in res.annotations.get(ZSTD_POSITION, "0:0:0:0").split(":"))
        want[ZSTD_CHECKSUM] = compare.sha256(data[off : off + clen])
        want[ZSTD_POSITION] = f"{off}:{clen}:{len(raw)}:1"
        if data[off - 8 : off - 4] != compare.ZSTD_SKIPPABLE or ulen != len(raw):
            diffs.append(f"manifest-position {res.annotations.get(ZSTD_POSITION)} does not point at the TOC")
    for k, v in want.items():
        if res.annotations.get(k) != v:
            diffs.append(f"annotation {k}: {res.annotations.get(k)!r}, want {v!r}")
    return diffs


@pytest.mark.parametrize("name", list(CASES))
def test_our_blob_verified_by_go(
    name: str, oracle: Oracle, tar_cases: dict[str, TarCase], tmp_path: Path
) -> None:
    case = CASES[name]
    tar = tar_cases[case.tar]
    ours_path, go_path = tmp_path / "ours.blob", tmp_path / "go.blob"
    res = _build_ours(tar.path, ours_path, case)
    go = oracle.build(
        tar.path,
        go_path,
        chunk_size=case.chunk_size,
        level=case.level,
        prioritized=case.prioritized,
        zstdchunked=case.compression == "zstd",
        procs=case.parallelism,
    )

    problems = _check_result(ours_path, res, case.compression)
    assert not problems, f"{name}: our BuildResult disagrees with our blob:\n" + "\n".join(problems)

    # The Go reader accepts our blob with our TOC digest and verifies every chunk of every file.
    verified = oracle.verify(ours_path, toc_digest=res.toc_digest)
    assert verified["tocVerified"] and verified["tocDigest"] == res.toc_digest
    go_view = compare.go_tree(verified["entries"])

    # Our reader lists the same tree, the same contents and the same chunking as the Go reader.
    with compare.opened(ours_path, res.toc_digest) as reader:
        problems = compare.diff_trees(go_view, compare.our_tree(reader))
    assert not problems, f"{name}: Go reader vs our reader on our blob:\n" + "\n".join(problems)
    problems = compare.diff_tree_vs_tar(go_view, tar.files)
    assert not problems, f"{name}: Go reader vs the source tar:\n" + "\n".join(problems)

    # Same TOC as Go's Build (order, landmarks, dedupe, chunks, names, metadata), offsets aside.
    _, go_toc, _ = compare.raw_toc(go_path)
    _, our_toc, _ = compare.raw_toc(ours_path)
    problems = compare.diff_tocs(go_toc, our_toc)
    assert not problems, f"{name}: TOC of Go's Build vs ours:\n" + "\n".join(problems)
    assert list(res.missed) == go.missed, f"{name}: missed {res.missed}, Go (in list order) {go.missed}"


def test_go_rejects_our_blob_with_wrong_toc_digest(
    oracle: Oracle, tar_cases: dict[str, TarCase], tmp_path: Path
) -> None:
    """The oracle is not a rubber stamp: a TOC digest that is not the blob's is refused."""
    out = tmp_path / "ours.blob"
    res = _build_ours(tar_cases["many"].path, out, Case("many"))
    wrong = "sha256:" + ("0" * 64 if not res.toc_digest.endswith("0" * 64) else "1" * 64)
    with pytest.raises(Exception, match="invalid TOC JSON"):
        oracle.verify(out, toc_digest=wrong)


def test_implied_parent_prioritised_unlike_go(
    oracle: Oracle, tar_cases: dict[str, TarCase], tmp_path: Path
) -> None:
    """Documented deviation (lazypull/format/landmarks.py): a prioritised file whose parent directory
    has no tar entry is still prioritised by us, while Go 0.12 reports it missed (format.md 1.9).
    The Go reader must still accept our blob and see the same tree."""
    tar = tar_cases["edge"]
    prio = ("/bin/big", "etc/hello.txt")
    ours_path, go_path = tmp_path / "ours.blob", tmp_path / "go.blob"
    res = _build_ours(tar.path, ours_path, Case("edge", prioritized=prio))
    go = oracle.build(tar.path, go_path, prioritized=prio)
    assert go.missed == ["/bin/big"] and res.missed == [], (go.missed, res.missed)
    _, our_toc, _ = compare.raw_toc(ours_path)
    names = [e["name"] for e in our_toc["entries"] if e["type"] != "chunk"]
    assert names[: names.index(".prefetch.landmark")] == ["bin/big", "etc/", "etc/hello.txt"], names
    verified = oracle.verify(ours_path, toc_digest=res.toc_digest)
    with compare.opened(ours_path, res.toc_digest) as reader:
        problems = compare.diff_trees(compare.go_tree(verified["entries"]), compare.our_tree(reader))
    assert not problems, "Go reader vs our reader:\n" + "\n".join(problems)
