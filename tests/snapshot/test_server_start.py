"""The mount server answers as soon as it listens (issue 14 item 3): its warm-up (registry and image
modules, TLS contexts) runs after, beside the first requests, and an autostarted server is reaped."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from lazypull.errors import ImageError
from lazypull.fs.config import FsConfig
from lazypull.snapshot import MountClient
from lazypull.snapshot.server import MountDaemon


class _NoImages:
    def resolve(self, name: str, platform: Any = None) -> Any:
        raise ImageError(f"image {name!r} not found")


def test_requests_are_answered_while_the_warm_up_still_runs(tmp_path: Path) -> None:
    d = MountDaemon(tmp_path, FsConfig(), store_factory=lambda _root: _NoImages(),
                    client_factory=lambda _insecure: None)
    gate = threading.Event()
    warming = threading.Event()

    def slow_warm_up() -> None:
        warming.set()
        gate.wait(60)

    d.manager.warm_up = slow_warm_up  # type: ignore[method-assign]
    starter = threading.Thread(target=d.start, daemon=True)
    starter.start()
    starter.join(30)       # bounds a hang only: start() must not wait for the warm-up
    try:
        assert not starter.is_alive(), "start() waited for the warm-up"
        server = threading.Thread(target=d.serve_forever, daemon=True)
        server.start()
        assert warming.wait(30)
        with MountClient(tmp_path, autostart=False) as mc:
            assert mc.ping()["pid"] == os.getpid()
            assert mc.list_mounts() == []
        assert not gate.is_set()        # all of that while the warm-up was still running
    finally:
        gate.set()
        d.stop()
        d.cleanup()
