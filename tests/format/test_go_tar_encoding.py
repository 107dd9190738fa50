"""Our re-encoded tar stream is byte for byte the one Go's estargz.Build writes (checked with the oracle).

Inputs come from GNU tar in every format it writes (gnu, oldgnu, posix with atime/ctime records,
ustar, v7) and from Python's tarfile (PAX xattrs with NUL and binary bytes, sub-second mtimes,
non-ASCII user names, huge uids, long names); unsupported inputs must fail in both.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from lazypull.format import BuildOptions, BytesSource, FileSource, FormatError, build, open_layer
from tests.helpers.oracle import Oracle, OracleError

GNU_FORMATS = ["gnu", "oldgnu", "posix", "ustar", "v7"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    d = root / "dir"
    deep = d / ("x" * 90) / ("y" * 80)
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("deep\n")
    (d / "a.txt").write_text("hello\n")
    (d / "big.bin").write_bytes(os.urandom(70_000))
    (d / "ünïcødé.txt").write_text("u\n")
    (d / "link").symlink_to("a.txt")
    (d / "longlink").symlink_to("z" * 150)
    os.link(d / "a.txt", d / "hard")
    os.mkfifo(d / "fifo")
    os.utime(d / "a.txt", ns=(1_609_459_200_500_000_000, 1_609_459_200_500_000_000))
    os.chown(d / "big.bin", 3_000_000, 5)
    return root


def _data_stream_go(oracle: Oracle, tar: Path, tmp: Path) -> bytes:
    blob = tmp / (tar.name + ".go.esgz")
    oracle.build(tar, blob)
    return gzip.decompress(blob.read_bytes())


def _data_stream_ours(tar: Path) -> bytes:
    out = io.BytesIO()
    with tar.open("rb") as f:
        build(f, out, BuildOptions(external_toc=True, parallelism=1))
    return gzip.decompress(out.getvalue())


def _python_tar(path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, pax, mtime in [
            ("x1", {"SCHILY.xattr.user.a": "v\x00b", "SCHILY.xattr.security.capability": "\x01\x00\x00\x02"},
             1609459200.25),
            ("ü", {}, 1609459200),
            ("n" * 200, {"comment": "c", "atime": "5.5"}, 7),
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.pax_headers = 3, mtime, pax
            info.uname, info.uid = "üser", 99_999_999
            tf.addfile(info, io.BytesIO(b"abc"))
    return path


@pytest.mark.parametrize("fmt", [*GNU_FORMATS, "python-pax"])
def test_data_stream_equals_go(oracle: Oracle, tree: Path, tmp_path: Path, fmt: str) -> None:
    tar = tmp_path / f"{fmt}.tar"
    if fmt == "python-pax":
        _python_tar(tar)
    else:
        subprocess.run(["tar", f"--format={fmt}", "-cf", str(tar), "-C", str(tree), "."],
                       check=False, capture_output=True)  # ustar/v7 skip names they cannot hold
    ours = _data_stream_ours(tar)
    go = _data_stream_go(oracle, tar, tmp_path)
    assert len(ours) > 1024
    assert go[: len(ours)] == ours
    # and the TOC (embedded this time) equals Go's apart from member offsets
    out = io.BytesIO()
    with tar.open("rb") as f:
        build(f, out, BuildOptions(parallelism=1))
    ours_toc = json.loads(open_layer(BytesSource(out.getvalue())).toc_json)["entries"]
    go_toc = json.loads(open_layer(FileSource(tmp_path / (tar.name + ".go.esgz"))).toc_json)["entries"]
    assert [_no_offset(e) for e in ours_toc] == [_no_offset(e) for e in go_toc]


def _no_offset(entry: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in entry.items() if k != "offset"}


@pytest.mark.parametrize("kind", ["sparse-gnu", "sparse-posix", "global-header"])
def test_unsupported_inputs_fail_in_both(oracle: Oracle, tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with (src / "sparse").open("wb") as f:
        f.truncate(1 << 20)
        f.seek(0, 2)
        f.write(b"x")
    tar = tmp_path / f"{kind}.tar"
    args = {"sparse-gnu": ["--format=gnu", "--sparse"], "sparse-posix": ["--format=posix", "--sparse"],
            "global-header": ["--format=posix", "--pax-option=globexthdr.name=g,comment=hi"]}[kind]
    subprocess.run(["tar", *args, "-cf", str(tar), "-C", str(src), "."], check=True)
    with pytest.raises(FormatError, match="unsupported input tar entry"), tar.open("rb") as f:
        build(f, io.BytesIO())
    with pytest.raises(OracleError):
        oracle.build(tar, tmp_path / "go.esgz")
