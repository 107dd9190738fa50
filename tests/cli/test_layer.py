"""``lazypull layer inspect|verify|convert`` end to end through click."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from lazypull.cli.main import cli
from lazypull.format import FileSource, open_layer


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_convert_json_then_inspect_and_verify(vectors: Path, tmp_path: Path) -> None:
    out = tmp_path / "small.esgz"
    code, stdout, _ = _run("layer", "convert", "--estargz", "--estargz-chunk-size", "4096", "--json",
                           str(vectors / "small.tar"), str(out))
    assert code == 0, stdout
    res = json.loads(stdout)
    assert res["blobSize"] == out.stat().st_size
    assert res["annotations"]["containerd.io/snapshot/stargz/toc.digest"] == res["tocDigest"]
    assert res["missed"] == []
    assert {"blobDigest", "diffID", "uncompressedSize"} <= set(res)
    code, stdout, _ = _run("layer", "inspect", "--json", str(out))
    assert code == 0
    info = json.loads(stdout)
    assert info["footer"] == "estargz" and info["tocDigest"] == res["tocDigest"]
    assert info["landmark"] == ".no.prefetch.landmark" and info["prefetchSize"] == 0
    code, stdout, _ = _run("layer", "verify", "--toc-digest", res["tocDigest"], str(out))
    assert code == 0 and "ok" in stdout and "TOC digest checked" in stdout
    code, stdout, _ = _run("layer", "inspect", str(out), "--debug")  # global flag after the subcommand
    assert code == 0 and "tocDigest:" in stdout


def test_verify_failures_exit_nonzero_naming_the_problem(vectors: Path, tmp_path: Path) -> None:
    blob = vectors / "tiny.esgz"
    code, _, stderr = _run("layer", "verify", "--toc-digest", "sha256:" + "0" * 64, str(blob))
    assert code == 1 and "does not match" in stderr and "tiny.esgz" in stderr
    bad = tmp_path / "bad.esgz"
    data = bytearray(blob.read_bytes())
    data[220] ^= 0xFF
    bad.write_bytes(bytes(data))
    code, _, stderr = _run("layer", "verify", str(bad))
    assert code == 1 and "a/hello.txt" in stderr
    code, _, stderr = _run("layer", "verify", str(vectors / "tiny.tar"))
    assert code == 1 and "footer" in stderr


def test_record_in_external_toc_and_zstd(vectors: Path, tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    record.write_text('{"path": "etc/hello.txt", "manifestDigest": "sha256:aa", "layerIndex": 0}\n'
                      '{"path": "/nonexistent", "layerIndex": 1}\n')
    out = tmp_path / "prio.esgz"
    code, stdout, _ = _run("layer", "convert", "--estargz-record-in", str(record), "--json",
                           str(vectors / "small.tar"), str(out))
    assert code == 0, stdout
    assert json.loads(stdout)["missed"] == ["/nonexistent"]
    reader = open_layer(FileSource(out))
    assert reader.prefetch_range() is not None

    ext = tmp_path / "ext.esgz"
    toc = tmp_path / "ext.toc.gz"
    code, stdout, _ = _run("layer", "convert", "--estargz-external-toc", "--estargz-keep-diff-id",
                           "--toc-out", str(toc), "--json", str(vectors / "tiny.tar"), str(ext))
    assert code == 0, stdout
    res = json.loads(stdout)
    assert res["diffID"] == "sha256:21297cd2545ba5e5a7cfc54356796d0a7e3ccfbda22b7e01e2bbdc8fa49d076e"
    assert res["externalTOC"]["size"] == toc.stat().st_size
    code, _, stderr = _run("layer", "verify", str(ext))
    assert code == 1 and "external" in stderr
    code, stdout, _ = _run("layer", "verify", "--toc", str(toc), "--toc-digest", res["tocDigest"], str(ext))
    assert code == 0, stdout

    z = tmp_path / "z.zst"
    code, stdout, _ = _run("layer", "convert", "--zstdchunked", "--json", str(vectors / "tiny.tar"), str(z))
    assert code == 0, stdout
    ann = json.loads(stdout)["annotations"]
    code, stdout, _ = _run("layer", "verify", "--toc-digest",
                           ann["io.containers.zstd-chunked.manifest-checksum"], str(z))
    assert code == 0 and "manifest checksum checked" in stdout


def test_convert_usage_errors(vectors: Path, tmp_path: Path) -> None:
    code, _, stderr = _run("layer", "convert", "--estargz-keep-diff-id", str(vectors / "tiny.tar"),
                           str(tmp_path / "x"))
    assert code == 2 and "requires --estargz-external-toc" in stderr
    code, _, stderr = _run("layer", "convert", "--estargz", "--zstdchunked", str(vectors / "tiny.tar"),
                           str(tmp_path / "x"))
    assert code == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"nopath": 1}\n')
    code, _, stderr = _run("layer", "convert", "--estargz-record-in", str(bad), str(vectors / "tiny.tar"),
                           str(tmp_path / "x"))
    assert code == 1 and "entry 1" in stderr
    assert not (tmp_path / "x").exists()
