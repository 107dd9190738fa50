"""`lazypull image convert` against the reference converter (ctr-remote 0.12 + containerd 1.6) on the same
two-layer image: the results must mean the same (media types, annotations, config apart from diff_ids),
and each of our layers must pass the Go oracle with the TOC digest our manifest announces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.containerd import TOC_DIGEST_ANNOTATION, Ctr, write_oci_archive
from tests.helpers.oracle import Oracle
from tests.interop import compare
from tests.interop.tarcases import TarCase

REPO = Path(__file__).resolve().parent.parent.parent
NAME = "example.test/lazypull/imageconv:src"


def _layout_image(layout: Path, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, config) of the image tagged `tag` in an OCI layout directory."""

    def blob(d: str) -> bytes:
        return (layout / "blobs" / "sha256" / d.split(":", 1)[1]).read_bytes()

    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    manifest = json.loads(blob(desc["digest"]))
    return manifest, json.loads(blob(manifest["config"]["digest"]))


@pytest.mark.parametrize(
    ("flags", "docker"),
    [(["--estargz"], False), (["--zstdchunked"], False), (["--estargz"], True)],
    ids=["estargz", "zstdchunked", "estargz-from-docker-types"],
)
def test_image_convert_means_what_ctr_remote_means(
    flags: list[str],
    docker: bool,
    containerd: Ctr,
    oracle: Oracle,
    tar_cases: dict[str, TarCase],
    tmp_path: Path,
) -> None:
    archive = tmp_path / "src.tar"
    name = NAME + ("-docker" if docker else "")
    write_oci_archive([tar_cases["edge"].path, tar_cases["many"].path], archive, name, docker_types=docker)
    src = tmp_path / "src"
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m)
            if f is not None:
                (src / m.name).parent.mkdir(parents=True, exist_ok=True)
                (src / m.name).write_bytes(f.read())

    # Reference: ctr-remote on containerd.
    containerd.import_archive(archive)
    dst_name = f"example.test/lazypull/imageconv:{flags[0][2:]}{'-docker' if docker else ''}"
    containerd.convert(name, dst_name, zstdchunked=flags == ["--zstdchunked"])
    go = containerd.read_image(dst_name, tmp_path / "go")

    # Ours: OCI layout in, OCI layout out.
    env = dict(os.environ, LAZYPULL_ROOT=str(tmp_path / "root"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lazypull",
            "image",
            "convert",
            *flags,
            "--oci",
            f"oci:{src}:{name.rsplit(':', 1)[1]}",
            f"oci:{tmp_path}/out:x",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, f"lazypull image convert {flags}: {proc.stderr}"
    manifest, config = _layout_image(tmp_path / "out", "x")

    assert manifest["mediaType"] == go.manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == go.manifest["config"]["mediaType"]
    assert len(manifest["layers"]) == len(go.manifest["layers"]) == 2
    ours_cfg = {k: v for k, v in config.items() if k != "rootfs"}
    go_cfg = {k: v for k, v in go.config.items() if k != "rootfs"}
    assert ours_cfg == go_cfg, "config outside rootfs differs from ctr-remote's"
    assert config["rootfs"]["type"] == "layers"

    kind = "zstd" if flags == ["--zstdchunked"] else "gzip"
    for i, (ours, (theirs, _)) in enumerate(zip(manifest["layers"], go.layers, strict=True)):
        where = f"{flags[0]} layer {i}"
        assert ours["mediaType"] == theirs["mediaType"], where
        assert set(ours.get("annotations", {})) == set(theirs.get("annotations", {})), (
            f"{where}: annotation keys {sorted(ours.get('annotations', {}))}, "
            f"ctr-remote {sorted(theirs.get('annotations', {}))}"
        )
        blob = tmp_path / "out" / "blobs" / "sha256" / ours["digest"].split(":", 1)[1]
        toc = ours["annotations"][TOC_DIGEST_ANNOTATION]
        verified = oracle.verify(blob, toc_digest=toc)
        assert verified["tocVerified"], where
        problems = compare.diff_tree_vs_tar(
            compare.go_tree(verified["entries"]), tar_cases[("edge", "many")[i]].files
        )
        assert not problems, f"{where}: Go reader vs source tar:\n" + "\n".join(problems)
        diff_id, usize = compare.decompressed_digest(blob, kind)
        assert config["rootfs"]["diff_ids"][i] == diff_id, f"{where}: config diff_id vs decompressed blob"
        assert ours["annotations"]["io.containers.estargz.uncompressed-size"] == str(usize), where
    shutil.rmtree(tmp_path / "go", ignore_errors=True)
