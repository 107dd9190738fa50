"""Where the mount server keeps its files under the store root (see docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def digest_hex(digest: str) -> str:
    """``sha256:<hex>`` -> ``<hex>``, refusing anything that could escape a directory."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        from lazypull.errors import MountError

        raise MountError(f"not a sha256 digest: {digest!r}")
    return hexpart


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
    def start_lock(self) -> Path:
        return self.run_dir / "start.lock"

    def layer_dir(self, digest: str) -> Path:
        """Per-layer state: ``snapshots/<hex>/``."""
        return self.root / "snapshots" / digest_hex(digest)

    def mountpoint(self, digest: str) -> Path:
        """Where the layer's filesystem is mounted: ``snapshots/<hex>/fs``."""
        return self.layer_dir(digest) / "fs"
