"""``<root>/snapshots/<hex>/``: one layer's directory under the store root, and ``fs`` in it (the layer
mounted lazily, or extracted whole), beside the layer's TOC record and origins and ``files/`` (the
whole-file copies for passthrough: the layer tree makes them, the chunk cache counts and sweeps them); and
``<root>/learned/<hex>.json``, what the layer's first run on this node read (kept when the layer's
directory goes with its image: the next cold start of that layer uses it).

The one home of that layout: image, runtime and snapshot build these paths, and so does fs, which may
not import image; hence a shared leaf. The caller checks the digest's hex first (each names its own
error), since it becomes a path.
"""

from __future__ import annotations

from pathlib import Path

SNAPSHOTS = "snapshots"
LEARNED = "learned"
FILES = "files"


def snapshots_dir(root: Path) -> Path:
    """``<root>/snapshots``: every layer's directory is in it."""
    return root / SNAPSHOTS


def layer_dir(root: Path, hexpart: str) -> Path:
    """``<root>/snapshots/<hex>/``: a layer's state (mountpoint, TOC record, learned reads...)."""
    return snapshots_dir(root) / hexpart


def layer_fs(root: Path, hexpart: str) -> Path:
    """``<root>/snapshots/<hex>/fs``: where a layer is mounted (lazy) or extracted (full)."""
    return layer_dir(root, hexpart) / "fs"


def files_dir(layer: Path) -> Path:
    """``<layer dir>/files``: the layer's whole-file copies, ``files/<ino>`` (from a layer's directory,
    which is all the layer tree and the cache's start walk have)."""
    return layer / FILES


def learned_dir(root: Path) -> Path:
    """``<root>/learned``: the node's learned records, one per layer (``fs.layer.learned``)."""
    return root / LEARNED


def learned_record(root: Path, hexpart: str) -> Path:
    """``<root>/learned/<hex>.json``: what a layer's workload read first, for its next cold mount."""
    return learned_dir(root) / f"{hexpart}.json"
