"""``<root>/snapshots/<hex>/``: one layer's directory under the store root, and ``fs`` in it (the layer
mounted lazily, or extracted whole), beside the layer's TOC record, learned reads and origins.

The one home of that layout: image, runtime and snapshot build these paths, and so does fs, which may
not import image; hence a shared leaf. The caller checks the digest's hex first (each names its own
error), since it becomes a path.
"""

from __future__ import annotations

from pathlib import Path

SNAPSHOTS = "snapshots"


def snapshots_dir(root: Path) -> Path:
    """``<root>/snapshots``: every layer's directory is in it."""
    return root / SNAPSHOTS


def layer_dir(root: Path, hexpart: str) -> Path:
    """``<root>/snapshots/<hex>/``: a layer's state (mountpoint, TOC record, learned reads...)."""
    return snapshots_dir(root) / hexpart


def layer_fs(root: Path, hexpart: str) -> Path:
    """``<root>/snapshots/<hex>/fs``: where a layer is mounted (lazy) or extracted (full)."""
    return layer_dir(root, hexpart) / "fs"
