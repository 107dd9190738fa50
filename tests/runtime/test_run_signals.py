"""Signals sent to an attached, non-tty ``lazypull run`` reach the container, as docker forwards them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime.test_cli_run import REPO_ROOT, busybox_image, mounts_under  # noqa: F401 (fixture)

TRAP = "trap 'echo got {name}; exit 3' {name}; echo ready; while :; do sleep 0.1; done"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_signal_to_run_reaches_the_container(tmp_path: Path, busybox_image: str,  # noqa: F811
                                             sig: signal.Signals) -> None:
    env = dict(os.environ, LAZYPULL_ROOT=str(tmp_path))
    name = sig.name.removeprefix("SIG")
    argv = ["--snapshotter=overlayfs", "--insecure-registry", "run", "--rm", busybox_image,
            "sh", "-c", TRAP.format(name=name)]
    proc = subprocess.Popen([sys.executable, "-m", "lazypull", *argv], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n", proc.stderr.read() if proc.stderr else b""
        proc.send_signal(sig)           # to the lazypull process only, as `kill -INT <pid>` does
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out == f"got {name}\n".encode(), err.decode()
    assert proc.returncode == 3, "the container's own exit status, not a kill after the grace period"
    assert mounts_under(tmp_path) == []
