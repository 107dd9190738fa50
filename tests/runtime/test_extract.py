"""Safe layer extraction: metadata kept, whiteouts converted, hostile tars refused without effect."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazypull.runtime.extract import (
    OPAQUE_XATTR,
    ExtractJob,
    LayerExtractError,
    StreamingExtraction,
    extract_layer,
    extract_layers,
    split_member_name,
)
from tests.helpers.rootfs import Entry, make_tar


def write_blob(path: Path, entries: list[Entry], compression: str = "gzip") -> Path:
    raw = make_tar(entries)
    if compression == "gzip":
        raw = gzip.compress(raw)
    elif compression == "zstd":
        raw = zstandard.ZstdCompressor().compress(raw)
    path.write_bytes(raw)
    return path


def snapshot_tree(root: Path) -> dict[str, tuple[int, int, int, bytes | str | None]]:
    """Everything below ``root`` (mode, uid, nlink, content or link target), for before/after checks."""
    tree: dict[str, tuple[int, int, int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st_ = path.lstat()
            content: bytes | str | None = None
            if stat.S_ISREG(st_.st_mode):
                content = path.read_bytes()
            elif stat.S_ISLNK(st_.st_mode):
                content = os.readlink(path)
            tree[str(path.relative_to(root))] = (st_.st_mode, st_.st_uid, st_.st_nlink, content)
    return tree


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_extract_keeps_metadata(tmp_path: Path, compression: str) -> None:
    entries = [
        Entry("./", "dir", mode=0o755),
        Entry("./usr/", "dir", mode=0o755, mtime=1_500_000_000),
        Entry("./usr/bin/", "dir", mode=0o750, uid=1, gid=2, mtime=1_500_000_001),
        Entry("./usr/bin/tool", data=b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0, mtime=1_234_567_890,
              xattrs={"user.note": b"hello", "security.capability": b"\x01\x00\x00\x02\x00\x20\x00\x00"
                      + b"\x00" * 12}),
        Entry("./usr/bin/owned", data=b"x", mode=0o640, uid=1234, gid=5678),
        Entry("./usr/bin/link", "symlink", linkname="/usr/bin/tool", uid=7, gid=8),
        Entry("./usr/bin/hard", "hardlink", linkname="./usr/bin/tool"),
        Entry("./dev/", "dir"),
        Entry("./dev/null", "char", mode=0o666, devmajor=1, devminor=3),
        Entry("./dev/loop9", "block", mode=0o660, devmajor=7, devminor=9),
        Entry("./run/fifo", "fifo", mode=0o600),
    ]
    blob = write_blob(tmp_path / "blob", entries, compression)
    dest = tmp_path / "snap" / "fs"
    stats = extract_layer(blob, dest)
    assert stats is not None and stats.members == len(entries)
    tool = (dest / "usr/bin/tool").lstat()
    assert stat.S_IMODE(tool.st_mode) == 0o4755 and tool.st_mtime == 1_234_567_890 and tool.st_nlink == 2
    assert (dest / "usr/bin/tool").read_bytes() == b"#!/bin/sh\n"
    assert os.getxattr(dest / "usr/bin/tool", "user.note") == b"hello"
    assert os.getxattr(dest / "usr/bin/tool", "security.capability").startswith(b"\x01\x00\x00\x02")
    owned = (dest / "usr/bin/owned").lstat()
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (1234, 5678, 0o640)
    assert os.readlink(dest / "usr/bin/link") == "/usr/bin/tool"
    assert (dest / "usr/bin/link").lstat().st_uid == 7
    assert os.path.samefile(dest / "usr/bin/hard", dest / "usr/bin/tool")
    bin_dir = (dest / "usr/bin").lstat()
    assert (stat.S_IMODE(bin_dir.st_mode), bin_dir.st_uid, bin_dir.st_mtime) == (0o750, 1, 1_500_000_001)
    assert (dest / "usr").lstat().st_mtime == 1_500_000_000
    null = (dest / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert stat.S_ISBLK((dest / "dev/loop9").lstat().st_mode)
    assert stat.S_ISFIFO((dest / "run/fifo").lstat().st_mode)
    assert not [p for p in dest.parent.iterdir() if p.name != "fs"], "temporary directory left behind"
    assert extract_layer(blob, dest) is None  # already there: nothing to do


def test_whiteouts_become_overlay_form(tmp_path: Path) -> None:
    entries = [
        Entry("etc/", "dir"),
        Entry("etc/.wh.removed"),
        Entry("var/", "dir"),
        Entry("var/.wh..wh..opq"),
        Entry("var/kept", data=b"new"),
        Entry("opt/.wh..wh..plnk/123", data=b"aufs"),
        Entry("deep/dir/.wh..wh..opq"),
    ]
    dest = tmp_path / "fs"
    stats = extract_layer(write_blob(tmp_path / "blob", entries), dest)
    assert stats is not None and (stats.whiteouts, stats.opaque_dirs) == (1, 2)
    removed = (dest / "etc/removed").lstat()
    assert stat.S_ISCHR(removed.st_mode) and removed.st_rdev == 0
    assert not (dest / "etc/.wh.removed").exists()
    assert os.getxattr(dest / "var", OPAQUE_XATTR) == b"y"
    assert os.getxattr(dest / "deep/dir", OPAQUE_XATTR) == b"y"
    assert not (dest / "var/.wh..wh..opq").exists() and (dest / "var/kept").read_bytes() == b"new"
    assert not (dest / "opt/.wh..wh..plnk").exists()


def test_whiteout_never_hides_what_its_own_layer_adds(tmp_path: Path) -> None:
    """OCI image spec: a whiteout applies to lower layers only, in whatever order the tar has them
    (the lazy filesystem shows the same)."""
    entries = [
        Entry("etc/", "dir"),
        Entry("etc/hello.txt", data=b"hello\n"),
        Entry("etc/.wh.hello.txt"),              # after the file: ignored
        Entry("etc/.wh.late"),                   # before the file: the file replaces it
        Entry("etc/late", data=b"late\n"),
        Entry("etc/sub/", "dir"),
        Entry("etc/.wh.sub"),
        Entry("etc/.wh.lower"),                  # nothing of that name here: a whiteout
    ]
    dest = tmp_path / "fs"
    stats = extract_layer(write_blob(tmp_path / "blob", entries), dest)
    assert (dest / "etc/hello.txt").read_bytes() == b"hello\n"
    assert (dest / "etc/late").read_bytes() == b"late\n"
    assert (dest / "etc/sub").is_dir()
    lower = (dest / "etc/lower").lstat()
    assert stat.S_ISCHR(lower.st_mode) and lower.st_rdev == 0
    assert stats is not None


def test_forged_overlay_xattrs_dropped(tmp_path: Path) -> None:
    entries = [Entry("d/", "dir", xattrs={"trusted.overlay.redirect": b"/etc", "user.ok": b"1"})]
    dest = tmp_path / "fs"
    extract_layer(write_blob(tmp_path / "blob", entries), dest)
    assert os.listxattr(dest / "d") == ["user.ok"]


def test_estargz_metadata_skipped_on_request(tmp_path: Path) -> None:
    entries = [Entry("a", data=b"1"), Entry(".prefetch.landmark", data=b"\xf0"), Entry("stargz.index.json")]
    blob = write_blob(tmp_path / "blob", entries)
    extract_layer(blob, tmp_path / "plain")
    extract_layer(blob, tmp_path / "lazyless", skip_estargz_metadata=True)
    assert sorted(os.listdir(tmp_path / "plain")) == [".prefetch.landmark", "a", "stargz.index.json"]
    assert os.listdir(tmp_path / "lazyless") == ["a"]


def test_parallel_extraction(tmp_path: Path) -> None:
    jobs = []
    for i in range(4):
        blob = write_blob(tmp_path / f"b{i}", [Entry(f"f{i}", data=bytes([i]) * 1000)], "zstd")
        diff_id = "sha256:" + hashlib.sha256(make_tar([Entry(f"f{i}", data=bytes([i]) * 1000)])).hexdigest()
        jobs.append(ExtractJob(blob, tmp_path / f"s{i}" / "fs", f"layer {i}", False, diff_id))
    extract_layers(jobs, parallelism=2)
    for i in range(4):
        assert (tmp_path / f"s{i}" / "fs" / f"f{i}").read_bytes() == bytes([i]) * 1000


@pytest.mark.parametrize("name,expected", [
    ("./a//b/", ["a", "b"]), (".", []), ("./", []), ("a/./b", ["a", "b"]), ("..a/b..", ["..a", "b.."]),
])
def test_member_names(name: str, expected: list[str]) -> None:
    assert split_member_name(name) == expected


HOSTILE: dict[str, tuple[list[Entry], str]] = {
    "dotdot": ([Entry("../victim", data=b"pwned")], "'..'"),
    "dotdot-inside": ([Entry("a/../../victim", data=b"pwned")], "'..'"),
    "absolute": ([Entry("/outside/victim", data=b"pwned")], "absolute"),
    "symlink-parent": ([Entry("esc", "symlink", linkname="../outside"), Entry("esc/victim", data=b"pwned")],
                       "symlink"),
    "symlink-parent-absolute": ([Entry("esc", "symlink", linkname="/"), Entry("esc/tmp/pwned", data=b"x")],
                                "symlink"),
    "symlink-deep-parent": ([Entry("a/", "dir"), Entry("a/b", "symlink", linkname="../.."),
                             Entry("a/b/outside/victim", data=b"pwned")], "symlink"),
    "hardlink-dotdot": ([Entry("h", "hardlink", linkname="../outside/victim")], "'..'"),
    "hardlink-absolute": ([Entry("h", "hardlink", linkname="/etc/passwd")], "absolute"),
    "hardlink-via-symlink": ([Entry("esc", "symlink", linkname="../outside"),
                              Entry("h", "hardlink", linkname="esc/victim")], "symlink"),
    "hardlink-missing": ([Entry("h", "hardlink", linkname="nothere")], "not in the layer"),
    "whiteout-dotdot": ([Entry("a/.wh...", data=b"")], "whiteout"),
    "file-as-parent": ([Entry("f", data=b"1"), Entry("f/g", data=b"2")], "not a directory"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tar_refused(tmp_path: Path, case: str) -> None:
    entries, message = HOSTILE[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"original")
    dest = tmp_path / "snap" / "fs"
    dest.parent.mkdir()
    blob = write_blob(tmp_path / "blob", entries)
    before = snapshot_tree(tmp_path)
    with pytest.raises(LayerExtractError) as info:
        extract_layer(blob, dest, label="layer sha256:abc")
    assert "layer sha256:abc" in str(info.value) and message in str(info.value)
    assert not dest.exists() and list((tmp_path / "snap").iterdir()) == []
    assert snapshot_tree(tmp_path) == before


def test_truncated_and_garbage_blobs(tmp_path: Path) -> None:
    raw = gzip.compress(make_tar([Entry("big", data=os.urandom(200_000))]))
    (tmp_path / "trunc").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LayerExtractError, match="trunc"):
        extract_layer(tmp_path / "trunc", tmp_path / "a" / "fs")
    (tmp_path / "garbage").write_bytes(b"\x28\xb5\x2f\xfd" + b"\xff" * 100)
    with pytest.raises(LayerExtractError, match="garbage"):
        extract_layer(tmp_path / "garbage", tmp_path / "b" / "fs")
    assert not (tmp_path / "a" / "fs").exists() and not (tmp_path / "b" / "fs").exists()


_NAMES = st.sampled_from(["a", "b", "a/b", "a/b/c", "..", "../x", "/abs", "/", ".", "a/..", "l", "l/x",
                          "l/../y", "a/l", "a/l/z", ".wh.a", "a/.wh.b", "a/.wh..wh..opq", ".wh...",
                          "outside/victim", "x" * 300])
_TARGETS = st.sampled_from(["..", "../outside", "/", "a", "a/b", "l", "../outside/victim", "/etc/passwd",
                            "nothere", "l/x", ""])
_ENTRY = st.builds(
    Entry, name=_NAMES, type=st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "char"]),
    data=st.binary(max_size=8), linkname=_TARGETS, mode=st.sampled_from([0o644, 0o755, 0o4755, 0o000]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(_ENTRY, min_size=1, max_size=8))
def test_random_hostile_tars_never_escape(tmp_path_factory: pytest.TempPathFactory,
                                          entries: list[Entry]) -> None:
    box = tmp_path_factory.mktemp("box")
    outside = box / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"original")
    blob = write_blob(box / "blob", entries, "none")
    before = snapshot_tree(box)
    dest = box / "snap" / "fs"
    try:
        extract_layer(blob, dest)
    except LayerExtractError:
        assert not dest.exists()
    after = snapshot_tree(box)
    outside_only = {k: v for k, v in after.items() if not k.startswith("snap")}
    assert outside_only == before
    assert set(os.listdir(box / "snap")) <= {"fs"}


def test_subsecond_mtimes_kept(tmp_path: Path) -> None:
    entries = [Entry("d/", "dir", mtime=1_500_000_000.5), Entry("d/f", data=b"x", mtime=1_600_000_000.25),
               Entry("old", data=b"y", mtime=-1.5)]
    dest = tmp_path / "fs"
    extract_layer(write_blob(tmp_path / "blob", entries, "none"), dest)
    assert (dest / "d" / "f").lstat().st_mtime_ns == 1_600_000_000_250_000_000
    assert (dest / "d").lstat().st_mtime_ns == 1_500_000_000_500_000_000
    assert (dest / "old").lstat().st_mtime_ns == -1_500_000_000


def _stream(blob: Path, dest: Path, chunk: int = 4096, **kw: object) -> StreamingExtraction:
    """Feed ``blob`` to a streaming extraction in small pieces, as a download would."""
    job = StreamingExtraction(dest, **kw)  # type: ignore[arg-type]
    data = blob.read_bytes()
    for i in range(0, len(data), chunk):
        job.feed(data[i:i + chunk])
    return job


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_streaming_extraction_matches_extract_layer(tmp_path: Path, compression: str) -> None:
    entries = [Entry("./", "dir", mode=0o755), Entry("usr/bin/tool", data=os.urandom(300_000), mode=0o4755),
               Entry("usr/bin/link", "symlink", linkname="tool"), Entry("usr/.wh.gone"),
               Entry("etc/.wh..wh..opq"), Entry("etc/hard", "hardlink", linkname="usr/bin/tool")]
    blob = write_blob(tmp_path / "blob", entries, compression)
    extract_layer(blob, tmp_path / "whole" / "fs")
    job = _stream(blob, tmp_path / "streamed" / "fs", label="layer sha256:abc")
    assert not (tmp_path / "streamed" / "fs").exists()  # nothing visible before commit
    diff_id, size = job.finish()
    tar = make_tar(entries)
    assert (diff_id, size) == ("sha256:" + hashlib.sha256(tar).hexdigest(), len(tar))
    stats = job.commit()
    assert stats is not None and stats.members == len(entries)
    assert snapshot_tree(tmp_path / "streamed" / "fs") == snapshot_tree(tmp_path / "whole" / "fs")
    assert os.getxattr(tmp_path / "streamed" / "fs" / "etc", OPAQUE_XATTR) == b"y"


def test_streaming_extraction_abort_leaves_nothing(tmp_path: Path) -> None:
    blob = write_blob(tmp_path / "blob", [Entry(f"f{i}", data=os.urandom(50_000)) for i in range(40)])
    dest = tmp_path / "snap" / "fs"
    job = StreamingExtraction(dest, label="layer x", max_queued=2)
    job.feed(blob.read_bytes()[:100_000])   # a download that breaks half-way
    job.abort()
    assert list((tmp_path / "snap").iterdir()) == []


@pytest.mark.parametrize("case", ["symlink-parent", "dotdot", "hardlink-absolute"])
def test_streaming_extraction_refuses_hostile_tar(tmp_path: Path, case: str) -> None:
    entries, message = HOSTILE[case]
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim").write_bytes(b"original")
    # Many bytes after the hostile member: the feeding side must not block once extraction failed.
    blob = write_blob(tmp_path / "blob", [*entries, Entry("pad", data=os.urandom(400_000))])
    dest = tmp_path / "snap" / "fs"
    dest.parent.mkdir()
    before = snapshot_tree(tmp_path)
    job = _stream(blob, dest, label="layer sha256:abc", max_queued=2)
    with pytest.raises(LayerExtractError) as info:
        job.finish()
    assert "layer sha256:abc" in str(info.value) and message in str(info.value)
    job.abort()
    assert list((tmp_path / "snap").iterdir()) == []
    assert snapshot_tree(tmp_path) == before


def test_streaming_extraction_refuses_garbage_and_trailing_data(tmp_path: Path) -> None:
    raw = gzip.compress(make_tar([Entry("f", data=b"x")]))
    for name, data in (("trunc", raw[: len(raw) // 2]), ("trailing", raw + b"junk" * 10),
                       ("garbage", b"\x28\xb5\x2f\xfd" + b"\xff" * 100)):
        (tmp_path / name).write_bytes(data)
        job = _stream(tmp_path / name, tmp_path / f"s-{name}" / "fs", label=f"layer {name}")
        with pytest.raises(LayerExtractError, match=f"layer {name}"):
            job.finish()
        job.abort()
        assert list((tmp_path / f"s-{name}").iterdir()) == []


def test_every_lazy_kind_extracted_whole_leaves_out_the_landmarks(tmp_path: Path) -> None:
    """The full extraction of a lazy layer shows the tree its lazy mount shows (no root landmark), whichever
    annotation makes it lazy: eStargz's toc.digest or a zstd:chunked manifest-checksum alone."""
    import io

    from lazypull.format import BuildOptions, build
    from lazypull.format.annotations import TOC_DIGEST_ANNOTATION
    from lazypull.registry import Descriptor
    from lazypull.runtime.layers import streaming_unpacker

    raw = make_tar([Entry("a", data=b"1"), Entry("b", data=b"2")])
    out = io.BytesIO()
    res = build(io.BytesIO(raw), out, BuildOptions(compression="zstd", prioritized_files=["a"]))
    zstd_keys = {k: v for k, v in res.annotations.items() if "zstd-chunked" in k}
    assert zstd_keys and TOC_DIGEST_ANNOTATION not in zstd_keys
    for name, keys in (("toc", {TOC_DIGEST_ANNOTATION: res.toc_digest}), ("checksum", zstd_keys),
                       ("plain", {})):
        desc = Descriptor("application/vnd.oci.image.layer.v1.tar+zstd", res.blob_digest,
                          len(out.getvalue()), keys)
        job = streaming_unpacker(tmp_path / name)(desc)
        assert job is not None
        job.feed(out.getvalue())
        job.commit()
        names = sorted(os.listdir(job.dest))
        assert names == (["a", "b"] if keys else [".prefetch.landmark", "a", "b"]), name
