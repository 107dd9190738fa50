"""``lazypull daemon --cri-image-service`` needs the snapshotter it serves (``--containerd-socket``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_cri_image_service_without_containerd_socket_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "lazypull", "--root", str(tmp_path / "root"), "daemon",
                           "--cri-image-service", str(tmp_path / "cri.sock")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--cri-image-service needs --containerd-socket" in proc.stderr
    assert not (tmp_path / "cri.sock").exists() and not (tmp_path / "root").exists()
