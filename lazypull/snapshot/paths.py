"""Where the mount server keeps its files under the store root (see docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lazypull.image.rootdir import layer_dir, layer_fs


@dataclass(frozen=True)
class RunPaths:
    """The server's socket, pidfile, log and state file."""

    root: Path

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def socket(self) -> Path:
        return self.run_dir / "lazypull.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "daemon.pid"

    @property
    def logfile(self) -> Path:
        return self.run_dir / "daemon.log"

    @property
    def state(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def keeper_socket(self) -> Path:
        """Where the keeper of live FUSE connections listens (``lazypull.snapshot.keeper``)."""
        return self.run_dir / "keeper.sock"

    @property
    def keeper_lock(self) -> Path:
        return self.run_dir / "keeper.lock"

    @property
    def start_lock(self) -> Path:
        return self.run_dir / "start.lock"

    @property
    def keeper_start_lock(self) -> Path:
        """Held by whoever starts the keeper, until it listens (not ``start_lock``: the server that
        lock waits for starts the keeper itself)."""
        return self.run_dir / "keeper-start.lock"

    @property
    def stores(self) -> Path:
        """The additional layer stores served and their use counts (``lazypull.store.service``)."""
        return self.run_dir / "stores.json"

    def layer_dir(self, digest: str) -> Path:
        """Per-layer state: ``snapshots/<hex>/``."""
        return layer_dir(self.root, _hex(digest))

    def mountpoint(self, digest: str) -> Path:
        """Where the layer's filesystem is mounted: ``snapshots/<hex>/fs``."""
        return layer_fs(self.root, _hex(digest))


def _hex(digest: str) -> str:
    """``fs.digest_hex``, imported on first use: the connection keeper imports this module, and the
    chunk cache's modules (hashlib, shutil, tempfile) were ~10 ms of its start (issue 14)."""
    from lazypull.fs import digest_hex

    return digest_hex(digest)
