"""Runtime tests mount overlays and start mount servers: whatever a failing test leaves is cleaned here."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.runtime.overlay import mountpoints, unmount


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path) -> Iterator[None]:
    """After each test: stop mount servers and runc containers under ``tmp_path``, unmount the rest."""
    yield
    from lazypull.snapshot import MountClient

    for sock in _find(tmp_path, "lazypull.sock", "run"):
        with contextlib.suppress(Exception):
            MountClient(sock.parent.parent, autostart=False).shutdown()
    for state in _find(tmp_path, "runc"):
        if state.is_dir() and not state.is_symlink():
            ids = subprocess.run(["runc", "--root", str(state), "list", "-q"], capture_output=True,
                                 text=True).stdout.split()
            for container_id in ids:
                subprocess.run(["runc", "--root", str(state), "delete", "-f", container_id],
                               capture_output=True)
    leftovers = [m for m in mountpoints() if m.startswith(str(tmp_path) + "/")]
    for point in sorted(leftovers, key=len, reverse=True):
        with contextlib.suppress(Exception):
            unmount(Path(point))


def _find(top: Path, name: str, parent: str | None = None) -> list[Path]:
    """Paths named ``name`` (in a directory named ``parent``) below ``top``, not looking into mounts
    (a layer or rootfs being unmounted while we walk) nor failing on what vanishes meanwhile. A loop,
    not os.walk: that recurses, and a test may leave a tree deeper than Python's recursion limit."""
    found = []
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    path = Path(entry.path)
                    if entry.name == name and (parent is None or directory.name == parent):
                        found.append(path)
                    if entry.is_dir(follow_symlinks=False) and not os.path.ismount(path):
                        pending.append(path)
        except OSError:
            continue
    return found
