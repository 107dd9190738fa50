"""Our writer: Go's semantics for every option, read back by our reader (format.md 1-3)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
import zstandard

from lazypull.format import BuildOptions, BuildResult, BytesSource, FormatError, build, open_layer
from lazypull.format.toc import TOCEntry, encode_toc, parse_toc
from tests.format.tarcompare import assert_same_tree, decompressed, sha256

TINY_DATA_DIFF_ID = "sha256:208da070b2c29420b1457b4ff34daf2d2a10c59a52c973c2ef3c853c2d48dad8"


def _build(src: bytes, **kw: object) -> tuple[BuildResult, bytes]:
    out = io.BytesIO()
    res = build(io.BytesIO(src), out, BuildOptions(**kw))  # type: ignore[arg-type]
    return res, out.getvalue()


def _read_back(res: BuildResult, blob: bytes, tar: bytes) -> None:
    assert len(blob) == res.blob_size and sha256(blob) == res.blob_digest
    reader = open_layer(BytesSource(blob), toc_digest=res.toc_digest, external_toc=res.toc_blob)
    reader.verify()
    assert_same_tree(reader, tar)
    stream = decompressed(blob)
    assert sha256(stream) == res.diff_id and len(stream) == res.uncompressed_size
    assert res.annotations["containerd.io/snapshot/stargz/toc.digest"] == res.toc_digest
    assert res.annotations["io.containers.estargz.uncompressed-size"] == str(res.uncompressed_size)


OPTIONS = {
    "defaults": {},
    "level1": {"level": 1},
    "level0": {"level": 0},
    "chunk512": {"chunk_size": 512},
    "minchunk": {"chunk_size": 1024, "min_chunk_size": 2048},
    "external": {"external_toc": True},
    "lossless": {"external_toc": True, "keep_diff_id": True, "chunk_size": 1000},
    "prio": {"prioritized_files": ["etc/hello.txt", "/bin/big", "nonexistent", "etc/hard"]},
    "zstd": {"compression": "zstd", "chunk_size": 4096},
    "zstd-level19": {"compression": "zstd", "level": 19},
    "parallel4": {"parallelism": 4, "chunk_size": 2048},
}


@pytest.mark.parametrize("opts", OPTIONS.values(), ids=OPTIONS.keys())
def test_every_option_reads_back(vectors: Path, opts: dict[str, object]) -> None:
    tar = (vectors / "small.tar").read_bytes()
    if opts.get("keep_diff_id"):
        with pytest.raises(FormatError, match=r"stargz\.index\.json"):
            _build(tar, **opts)  # Go refuses an input TOC entry in lossless mode too
        tar = _without_toc_entry(tar)
    res, blob = _build(tar, **opts)
    _read_back(res, blob, tar)
    if opts.get("keep_diff_id"):
        assert decompressed(blob) == tar and res.diff_id == sha256(tar)


def _without_toc_entry(tar: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tar)) as src, tarfile.open(fileobj=out, mode="w",
                                                                     format=tarfile.PAX_FORMAT) as dst:
        for m in src.getmembers():
            if m.name != "stargz.index.json":
                dst.addfile(m, src.extractfile(m) if m.isreg() else None)
    return out.getvalue()


def test_external_toc_and_zstd_reproduce_go_data_stream(vectors: Path) -> None:
    tar = (vectors / "tiny.tar").read_bytes()
    ext, blob = _build(tar, external_toc=True)
    assert ext.diff_id == TINY_DATA_DIFF_ID and ext.uncompressed_size == 2560
    assert blob[-46:] == (vectors / "tiny-ext.esgz").read_bytes()[-46:]
    assert ext.toc_offset == -1 and ext.toc_blob is not None
    assert gzip.decompress(ext.toc_blob)[:17] == b"stargz.index.json"
    z, zblob = _build(tar, compression="zstd")
    assert z.diff_id == TINY_DATA_DIFF_ID
    pos = z.annotations["io.containers.zstd-chunked.manifest-position"]
    off, clen, ulen, kind = (int(x) for x in pos.split(":"))
    assert (kind, off) == (1, z.toc_offset)
    compressed = zblob[off : off + clen]
    assert z.annotations["io.containers.zstd-chunked.manifest-checksum"] == sha256(compressed)
    toc_json = zstandard.ZstdDecompressor().decompress(compressed)
    assert len(toc_json) == ulen and sha256(toc_json) == z.toc_digest
    reader = open_layer(BytesSource(zblob), toc_digest=z.annotations[
        "io.containers.zstd-chunked.manifest-checksum"])
    assert reader.footer_kind == "zstd-40" and reader.verified_by == "manifest"


def test_lossless_matches_go_vector(vectors: Path) -> None:
    tar = (vectors / "tiny.tar").read_bytes()
    res, _blob = _build(tar, external_toc=True, keep_diff_id=True)
    assert res.diff_id == sha256(tar) == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert res.uncompressed_size == len(tar)
    assert res.toc_blob is not None
    ours = json.loads(gzip.decompress(res.toc_blob)[512:].rstrip(b"\0"))
    go = json.loads(gzip.decompress((vectors / "tiny-ll-ext.toc.gz").read_bytes())[512:].rstrip(b"\0"))
    strip = [{k: v for k, v in e.items() if k != "offset"} for e in go["entries"]]
    assert [{k: v for k, v in e.items() if k != "offset"} for e in ours["entries"]] == strip


def _members(entries: Sequence[TOCEntry]) -> list[int | None]:
    """Per entry, which compressed member (or frame) holds its data, numbered in blob order; None for
    entries without data. Entries sharing a number share a member (min-chunk-size grouping)."""
    offsets = sorted({e.offset for e in entries if e.type in ("reg", "chunk") and e.offset})
    rank = {offset: i for i, offset in enumerate(offsets)}
    return [rank.get(e.offset) if e.type in ("reg", "chunk") and e.offset else None for e in entries]


def _with_go_offsets(ours: bytes, go: bytes) -> bytes:
    """Our TOC with Go's compressed offsets, after checking everything offsets stand for: which entries
    share a member (the grouping) and where in it each one starts (innerOffset, equal as the tar headers
    are). Only the compressed positions may differ (no Python deflate reproduces Go's bytes)."""
    mine, theirs = parse_toc(ours).entries, parse_toc(go).entries
    assert len(mine) == len(theirs)
    assert _members(mine) == _members(theirs), "files grouped into members differently from Go"
    assert [m.inner_offset for m in mine] == [t.inner_offset for t in theirs]
    pairs = zip(mine, theirs, strict=True)
    return encode_toc([msgspec.structs.replace(m, offset=t.offset) for m, t in pairs])


@pytest.mark.parametrize(("tar", "toc", "opts"), [
    ("tiny.tar", "tiny.esgz.toc.json", {}),
    ("small.tar", "small.esgz.toc.json", {"chunk_size": 4096, "parallelism": 1}),
    ("many.tar", "many-min.esgz.toc.json", {"min_chunk_size": 1024}),
    ("tiny.tar", "tiny.zstd.toc.json", {"compression": "zstd"}),
], ids=["tiny", "small", "many-min", "tiny-zstd"])
def test_toc_json_is_byte_identical_to_go_modulo_offsets(
    vectors: Path, tar: str, toc: str, opts: dict[str, object]
) -> None:
    res, blob = _build((vectors / tar).read_bytes(), **opts)
    reader = open_layer(BytesSource(blob), toc_digest=res.toc_digest)
    assert _with_go_offsets(reader.toc_json, (vectors / toc).read_bytes()) == (vectors / toc).read_bytes()


def test_a_different_grouping_is_caught(vectors: Path) -> None:
    """The comparison above can fail: members of 2 KiB group the files unlike Go's 1 KiB ones."""
    res, blob = _build((vectors / "many.tar").read_bytes(), min_chunk_size=2048)
    reader = open_layer(BytesSource(blob), toc_digest=res.toc_digest)
    with pytest.raises(AssertionError, match="grouped into members differently"):
        _with_go_offsets(reader.toc_json, (vectors / "many-min.esgz.toc.json").read_bytes())


def test_small_data_stream_is_byte_identical_to_go(vectors: Path) -> None:
    """Headers re-encoded exactly as Go's tar writer does (PAX long name, xattrs, devices, ...)."""
    _res, blob = _build((vectors / "small.tar").read_bytes(), chunk_size=4096, parallelism=1)
    go = gzip.decompress((vectors / "small.esgz").read_bytes())
    ours = gzip.decompress(blob)
    cut_go, cut_ours = go.index(b"stargz.index.json"), ours.index(b"stargz.index.json")
    assert ours[:cut_ours] == go[:cut_go]


@pytest.mark.parametrize("toc", ["tiny.esgz.toc.json", "small.esgz.toc.json", "small-prio.esgz.toc.json",
                                 "many-min.esgz.toc.json", "tiny.zstd.toc.json"])
def test_toc_encoder_reproduces_go_json(vectors: Path, toc: str) -> None:
    data = (vectors / toc).read_bytes()
    assert encode_toc(parse_toc(data).entries) == data


def test_go_json_escaping() -> None:
    from lazypull.format.toc import TOCEntry

    text = encode_toc([TOCEntry(name="a&b<c>\"\\\n\x01\u2028é\udcff", type="reg")]).decode()
    assert '"a\\u0026b\\u003cc\\u003e\\"\\\\\\n\\u0001\\u2028é\\ufffd"' in text


def test_prioritized_order_landmark_and_missed(vectors: Path) -> None:
    tar = (vectors / "small.tar").read_bytes()
    res, blob = _build(tar, prioritized_files=["etc/hard", "/bin/big", "nonexistent"], chunk_size=4096)
    assert res.missed == ["nonexistent"]
    reader = open_layer(BytesSource(blob))
    names = [e.name for e in reader.toc.entries]
    # the hardlink pulls its parent and target first; the implied bin/ does not stop /bin/big
    assert names[:7] == ["etc/", "etc/hello.txt", "etc/hard", "bin/big", "bin/big", "bin/big",
                         ".prefetch.landmark"]
    landmark = reader.lookup(".prefetch.landmark")
    assert landmark is not None and reader.prefetch_range() == (0, landmark.offset)
    # stray TOC and landmark entries of the input dropped, duplicates: last wins at its position
    assert names.count("stargz.index.json") == 0 and names.count(".prefetch.landmark") == 1
    assert names[-1] == "etc/dup" and names.count("etc/dup") == 1
    _res2, blob2 = _build(tar)
    assert open_layer(BytesSource(blob2)).toc.entries[0].name == ".no.prefetch.landmark"


def test_gzip_headers_are_gos(vectors: Path) -> None:
    tar = (vectors / "tiny.tar").read_bytes()
    for level, xfl in ((9, 2), (1, 4), (5, 0)):
        res, blob = _build(tar, level=level)
        assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes([xfl]) + b"\xff"
        assert blob[res.toc_offset : res.toc_offset + 10] == blob[:10]
        reader = open_layer(BytesSource(blob))
        for entry in reader.toc.entries:
            if entry.offset:
                assert blob[entry.offset : entry.offset + 10] == blob[:10]


@pytest.mark.parametrize("wrap", ["gzip", "zstd"])
def test_compressed_input_detected(vectors: Path, wrap: str) -> None:
    tar = (vectors / "small.tar").read_bytes()
    src = gzip.compress(tar) if wrap == "gzip" else zstandard.ZstdCompressor().compress(tar)
    plain, _ = _build(tar, parallelism=1)
    res, blob = _build(src, parallelism=1)
    assert res.diff_id == plain.diff_id and res.toc_digest == plain.toc_digest
    _read_back(res, blob, tar)


def test_invalid_option_combinations(vectors: Path) -> None:
    tar = (vectors / "tiny.tar").read_bytes()
    with pytest.raises(FormatError, match="external TOC"):
        _build(tar, keep_diff_id=True)
    with pytest.raises(FormatError, match="prioritized"):
        _build(tar, keep_diff_id=True, external_toc=True, prioritized_files=["a"])
    with pytest.raises(FormatError, match="level"):
        _build(tar, level=12)


def test_large_file_chunks_default_size() -> None:
    data = bytes(range(256)) * (5 * 4096 + 7)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("big.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    res, blob = _build(buf.getvalue(), chunk_size=8192)
    reader = open_layer(BytesSource(blob), toc_digest=res.toc_digest)
    entry = reader.lookup("big.bin")
    assert entry is not None
    chunks = reader.chunks(entry)
    assert [c.chunk_size for c in chunks] == [8192] * (len(data) // 8192) + [len(data) % 8192]
    assert entry.digest == sha256(data)
    assert reader.read_file(entry) == data


def test_build_is_deterministic_and_parts_follow_go(vectors: Path) -> None:
    tar = (vectors / "small.tar").read_bytes()
    a, blob_a = _build(tar, parallelism=2, chunk_size=4096)
    b, blob_b = _build(tar, parallelism=2, chunk_size=4096)
    assert blob_a == blob_b and a == b
    _, blob_one = _build(tar, parallelism=1, chunk_size=4096)
    # two parts: the name dedupe restarts in the second part (Go's Build does the same)
    names_one = [e.user_name for e in open_layer(BytesSource(blob_one)).toc.entries if e.user_name]
    names_two = [e.user_name for e in open_layer(BytesSource(blob_a)).toc.entries if e.user_name]
    assert len(names_two) > len(names_one)


def test_input_from_a_file_at_an_offset_and_from_a_pipe(vectors: Path, tmp_path: Path) -> None:
    import os

    tar = (vectors / "small.tar").read_bytes()
    padded = tmp_path / "padded"
    padded.write_bytes(b"junk" * 100 + tar)
    with padded.open("rb") as f:
        f.seek(400)
        res = build(f, io.BytesIO(), BuildOptions(parallelism=1))
    plain, _ = _build(tar, parallelism=1)
    assert res.diff_id == plain.diff_id
    r, w = os.pipe()
    with os.fdopen(w, "wb") as wf:
        wf.write(tar[:60000])  # fits the pipe buffer
    with os.fdopen(r, "rb") as rf:
        piped = build(rf, io.BytesIO(), BuildOptions(parallelism=1))
    assert piped.diff_id == plain.diff_id
