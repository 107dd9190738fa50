"""Many ``lazypull run --rm`` at once on one store root (issue 10 item 5): every one succeeds with its
own output, and none is left behind (containers, runc state, mounts). One ``runc list`` racing another
container's deletion failed a run and left its container; bench/soak.py runs 64 at once."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lazypull.runtime.overlay import mountpoints
from lazypull.snapshot import MountClient
from tests.reliability.kit import REPO_ROOT, lazy_root

CONCURRENT = 12


def test_concurrent_lazy_run_rm_all_succeed_and_leave_nothing(lazy_image: str, tmp_path: Path) -> None:
    root = lazy_root(tmp_path / "root", lazy_image)
    env = dict(os.environ, LAZYPULL_ROOT=str(root))

    def run(i: int) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "lazypull", "--insecure-registry", "run", "--rm", lazy_image,
             "sh", "-c", f"cat /data/{i:04d}.txt | head -1; echo done-{i}"],
            capture_output=True, env=env, cwd=REPO_ROOT, timeout=600)

    try:
        with ThreadPoolExecutor(CONCURRENT) as pool:
            results = list(pool.map(run, range(CONCURRENT)))
        failed = [(i, r.returncode, r.stderr.decode()[-500:]) for i, r in enumerate(results) if r.returncode]
        assert failed == []
        assert [r.stdout for r in results] == [f"file {i}\ndone-{i}\n".encode() for i in range(CONCURRENT)]
        assert [p.name for p in (root / "containers").iterdir() if not p.name.startswith(".")] == []
        runc_state = root / "runc"
        assert not runc_state.exists() or [p.name for p in runc_state.iterdir()] == []
        with MountClient(root, autostart=False) as mc:
            assert mc.list_mounts() == [], "every container's hold was released"
        assert [m for m in mountpoints() if m.startswith(str(root))] == []
    finally:
        MountClient(root, autostart=False).shutdown()
