"""`lazypull image optimize` against `ctr-remote image optimize` (stargz-snapshotter 0.12 on containerd
1.6, fanotify on the container's rootfs) with the same image and workload: the two records must agree.

Ours also lists the files our runtime itself reads from the image when creating the container
(`/etc/passwd`, `/etc/group`: a lazy `lazypull run` of the result reads them too, so they are worth
prefetching); apart from those, the same files in the same order from the same layers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from lazypull.snapshot import MountClient
from tests.helpers.containerd import Ctr
from tests.helpers.images import directory, file, make_oci_layout
from tests.helpers.rootfs import busybox_specs

REPO = Path(__file__).resolve().parent.parent.parent
NAME = "example.test/lazypull/optimize:src"
RUNTIME_READS = {"etc/passwd", "etc/group"}


def test_records_agree_with_ctr_remote(containerd: Ctr, tmp_path: Path) -> None:
    app = [directory("etc"), directory("etc/app"), file("etc/app/conf", b"setting=1\n"),
           file("etc/app/unused", b"x" * 100), file("etc/app/also", b"y\n")]
    built = make_oci_layout(tmp_path / "src", [busybox_specs(), app], tag="src",
                            config={"config": {"Cmd": ["sh"]}})
    index = json.loads((built.path / "index.json").read_text())
    index["manifests"][0]["annotations"]["io.containerd.image.name"] = NAME
    (built.path / "index.json").write_text(json.dumps(index))
    archive = tmp_path / "src.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(built.path.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(built.path)), recursive=False)
    containerd.import_archive(archive)
    args = '["sh", "-c", "exec 3</etc/app/also; cat /etc/app/conf"]'   # also: opened, never read

    theirs_out = tmp_path / "theirs.json"
    containerd.run(["image", "optimize", "--oci", "--period", "5", "--args", args, "--record-out",
                    str(theirs_out), NAME, NAME.replace(":src", ":opt")], tool="ctr-remote", timeout=300)
    ours_out = tmp_path / "ours.json"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lazypull", "image", "optimize", "--oci", "--period", "5", "--args", args,
             "--record-out", str(ours_out), f"oci:{built.path}:src", f"oci:{tmp_path / 'out'}:opt"],
            capture_output=True, env=dict(os.environ, LAZYPULL_ROOT=str(tmp_path / "root")), cwd=REPO,
            timeout=300)
    finally:   # the mount server optimize started on demand must not outlive the test
        MountClient(tmp_path / "root", autostart=False).shutdown()
    assert proc.returncode == 0, proc.stderr.decode()

    theirs = []      # ctr-remote 0.12 writes a path again at each open (later versions do not)
    for line in theirs_out.read_text().splitlines():
        if json.loads(line) not in theirs:
            theirs.append(json.loads(line))
    ours = [json.loads(line) for line in ours_out.read_text().splitlines()]
    assert {e["manifestDigest"] for e in theirs} == {built.images[0].manifest_digest}
    assert {e["manifestDigest"] for e in ours} == {built.images[0].manifest_digest}
    assert [(e["path"], e["layerIndex"]) for e in theirs] == [
        (e["path"], e["layerIndex"]) for e in ours if e["path"] not in RUNTIME_READS]
    assert {"bin/busybox", "etc/app/conf", "etc/app/also"} <= {e["path"] for e in theirs}
    assert {e["path"] for e in ours} - {e["path"] for e in theirs} <= RUNTIME_READS
