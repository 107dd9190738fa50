"""Freeing what a layer leaves under the root once no image uses it: ``snapshots/<hex>/`` (the TOC
record, assembled ``files/``, an extracted ``fs/``) and the layer's namespace of the chunk cache.

Called by ``image prune`` / ``rmi`` (the layers of removed images) and by the mount server when containerd
removes a remote snapshot. A layer is kept while it is mounted, held in ``run/state.json``, listed by the
containerd proxy's snapshots, used as a lower dir by a container, or in the caller's ``in_use`` set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from lazypull.fs import DirectoryCache, FsConfig, lazypull_mounts
from lazypull.layerdir import snapshots_dir
from lazypull.removetree import remove_tree
from lazypull.snapshot.paths import RunPaths

log = logging.getLogger(__name__)

_LAYER_PATH = re.compile(r"/snapshots/([0-9a-f]{64})(?:/|$)")
_HEX = re.compile(r"[0-9a-f]{64}")


def layers_in_use(root: Path, lower_dirs: Iterable[str] = ()) -> set[str]:
    """Digests of the layers something under ``root`` still uses: mounted, held by the mount server,
    lower dirs of containerd's snapshots, or named by ``lower_dirs`` (the containers' lowers)."""
    used: set[str] = set()

    def note(path: str) -> None:
        m = _LAYER_PATH.search(path)
        if m is not None:
            used.add("sha256:" + m.group(1))

    for point in lazypull_mounts(snapshots_dir(root)):
        note(str(point))
    for path in lower_dirs:
        note(os.path.realpath(path) if os.path.exists(path) else path)
    try:
        state = json.loads(RunPaths(root).state.read_text())
        used.update(str(d) for hold in state.get("holds", []) for d in hold.get("digests", []))
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    try:
        snaps = json.loads((root / "containerd" / "snapshots.json").read_text())
        for snap in snaps.get("snapshots", []):
            note(str(snap.get("lower", "")))
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return used


def prune_layer_state(root: Path, keep: set[str], config: FsConfig | None = None,
                      cache: DirectoryCache | None = None, only: Iterable[str] | None = None) -> list[str]:
    """Delete the per-layer state and cached chunks of every layer (of ``only``, if given) neither in
    ``keep`` nor in use (:func:`layers_in_use`, checked here); the digests freed. ``cache``: the
    server's own cache object, whose index is updated too."""
    config = config or FsConfig()
    used = keep | layers_in_use(root)
    snapshots = snapshots_dir(root)
    chunk_dir = config.chunk_dir(root)
    found: set[str] = set()
    for parent in (snapshots, chunk_dir):
        with contextlib.suppress(FileNotFoundError):
            found.update("sha256:" + e.name for e in os.scandir(parent)
                         if _HEX.fullmatch(e.name) and e.is_dir(follow_symlinks=False))
    if only is not None:
        found &= set(only)
    freed = []
    for digest in sorted(found - used):
        hexpart = digest.removeprefix("sha256:")
        if cache is not None:
            cache.drop_layer(digest)
        shutil.rmtree(chunk_dir / hexpart, ignore_errors=True)
        with contextlib.suppress(OSError):      # any depth (a layer's own tree), never through a mount
            remove_tree(snapshots / hexpart)
        freed.append(digest)
    if freed:
        log.info("freed the state and cached chunks of %d unused layer(s)", len(freed))
    return freed
