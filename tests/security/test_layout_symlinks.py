"""Issue 9, finding 15: ``image convert`` into an OCI layout never writes through a link inside it.

Whoever can write in the destination directory could point ``blobs/sha256`` (or ``blobs``, or the
ingest directory) at a directory of root's (``/etc/cron.d``): root's conversion would then create
files there, or delete them (the ingest clean-up). Each case must fail with one line naming the link,
and leave the link's target untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.images import make_oci_layout, sample_layers

REPO_ROOT = Path(__file__).resolve().parents[2]


def convert(tmp_path: Path, src: str, dst: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LAZYPULL_ROOT=str(tmp_path / "root"))
    return subprocess.run([sys.executable, "-m", "lazypull", "image", "convert", "--oci", "--estargz", src,
                           f"oci:{dst}:esgz"], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          timeout=120)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


@pytest.mark.parametrize("link", ["blobs/sha256", "blobs", ".lazypull-ingest"])
def test_convert_refuses_a_linked_directory_in_the_layout(tmp_path: Path, link: str) -> None:
    src = make_oci_layout(tmp_path / "src", sample_layers(), tag="v1")
    victim = tmp_path / "victim"            # stands for /etc/cron.d
    victim.mkdir()
    (victim / "keep").write_bytes(b"root's file\n")
    dst = tmp_path / "dst"
    (dst / link).parent.mkdir(parents=True, exist_ok=True)
    (dst / link).symlink_to(victim)
    before = snapshot(victim)
    result = convert(tmp_path, src.ref, dst)
    assert result.returncode == 1, result.stdout
    assert result.stderr.strip().splitlines() == [
        f"lazypull: error: {dst / link} is a symbolic link or not a directory: "
        "refusing to write the OCI layout through it"], result.stderr
    assert snapshot(victim) == before
    assert (dst / link).is_symlink()


def test_convert_cleans_only_its_own_ingest_files(tmp_path: Path) -> None:
    """Leftovers in a real ingest directory are removed, but not through a link found there, and a
    FIFO there does not hang the conversion (it is not a temp file of ours)."""
    src = make_oci_layout(tmp_path / "src", sample_layers(), tag="v1")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_bytes(b"root's file\n")
    dst = tmp_path / "dst"
    ingest = dst / ".lazypull-ingest"
    ingest.mkdir(parents=True)
    (ingest / "dead.partial").write_bytes(b"left by a killed writer")
    (ingest / "link").symlink_to(victim / "keep")
    os.mkfifo(ingest / "fifo")
    result = convert(tmp_path, src.ref, dst)
    assert result.returncode == 0, result.stderr
    assert not (ingest / "dead.partial").exists()
    assert (victim / "keep").read_bytes() == b"root's file\n"
    listed = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{dst}:esgz"], capture_output=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr


def test_convert_refuses_a_linked_ingest_directory_without_cleaning_through_it(tmp_path: Path) -> None:
    """The ingest clean-up runs when the layout is opened: through a link it would delete root's files
    (their flock is free)."""
    src = make_oci_layout(tmp_path / "src", sample_layers(), tag="v1")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / ".lazypull-ingest").symlink_to(victim)
    result = convert(tmp_path, src.ref, dst)
    assert result.returncode == 1
    assert (victim / "passwd").read_bytes() == b"root:x:0:0::/root:/bin/sh\n"
