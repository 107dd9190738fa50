"""What the reliability tests share: a lazily served image with many files, store roots, waiting."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lazypull.image import Store, pull_image
from lazypull.registry import RegistryClient
from tests.helpers.images import TarEntrySpec, directory

REPO_ROOT = Path(__file__).resolve().parents[2]
# enough files that a layer's TOC, inodes and chunk lists weigh something (the leak was ~13 MB each)
MANY_FILES = [directory("data/"), *(TarEntrySpec(f"data/{i:04d}.txt", content=f"file {i}\n".encode() * 20)
                                    for i in range(400))]


def wait_until(predicate: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    """Poll ``predicate()`` until true; fail naming ``what`` (a generous bound: CI is a busy machine)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie counts: its threads and files are gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state == "Z" and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except (FileNotFoundError, ProcessLookupError):    # reaped, also between the two reads
        return True


def lazy_root(root: Path, image: str, config: str = "") -> Path:
    """``root`` holding the image's metadata (a lazy pull), without background fetch."""
    with RegistryClient(insecure=True) as client:
        pull_image(Store(root), client, image, fetch_layers=False)
    (root / "config.toml").write_text("background_fetch = false\nprefetch_timeout = 5.0\n" + config)
    return root


class Gate(threading.Event):
    """A FaultProxy ``hold`` release that also tells when a request started waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def fuse_fds(pid: int) -> int:
    """How many /dev/fuse fds process ``pid`` holds (an fd closed while they are listed is not one)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            count += os.readlink(fd) == "/dev/fuse"
    return count
