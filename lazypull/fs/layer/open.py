"""``open_layer_tree``: everything needed to serve one layer, from its descriptor and a blob source."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lazypull.fs.cache import ChunkCache, digest_hex
from lazypull.fs.config import FsConfig
from lazypull.fs.layer.access import recorder_for
from lazypull.fs.layer.activity import ACTIVITY
from lazypull.fs.layer.toc import ExternalToc, open_toc, record_path
from lazypull.fs.layer.tree import LayerTree
from lazypull.fs.remote import RangeSource, RecordingSource, RemoteBlob
from lazypull.fs.stats import LayerStats

PRELOAD_MAX = 4 << 20


def layer_dir(root: Path, digest: str) -> Path:
    """``<root>/snapshots/<hex>`` (the digest is checked: it names a directory)."""
    return root / "snapshots" / digest_hex(digest, "layer digest")


def open_layer_tree(digest: str, annotations: Mapping[str, str], source: RangeSource, *, root: Path,
                    config: FsConfig, cache: ChunkCache | None = None,
                    external_toc: ExternalToc | None = None) -> LayerTree:
    """Fetch and verify the layer's TOC and build its tree; call ``start()`` on it to begin prefetch."""
    stats = LayerStats(digest)
    remote = RemoteBlob(source, stats, config)
    ldir = layer_dir(root, digest)
    ldir.mkdir(parents=True, exist_ok=True)
    src = RecordingSource(remote, record_path(ldir))
    with ACTIVITY.busy():       # background fetch of the other layers waits for the mounts
        reader = open_toc(digest, annotations, src, external_toc)
        tree = LayerTree(digest, reader, remote, cache or ChunkCache(config.chunk_dir(root)), stats, config,
                         ldir)
    tree.access = recorder_for(ldir)
    # What was read to find the TOC (often the end of the blob, sometimes all of it) serves chunks too.
    if sum(len(data) for _, data in src.pieces) <= PRELOAD_MAX:
        tree.fetcher.preloaded = list(src.pieces)
    return tree
