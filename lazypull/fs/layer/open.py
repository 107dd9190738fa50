"""``open_layer_tree``: everything needed to serve one layer, from its descriptor and a blob source."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from lazypull import layerdir
from lazypull.errors import LazypullError, MountError
from lazypull.format.layerkind import LayerSpec
from lazypull.fs.cache import DirectoryCache, digest_hex
from lazypull.fs.config import FsConfig
from lazypull.fs.layer import hints, learned
from lazypull.fs.layer.access import recorder_for
from lazypull.fs.layer.activity import Activity
from lazypull.fs.layer.toc import ExternalToc, open_toc, record_path
from lazypull.fs.layer.tree import LayerTree
from lazypull.fs.remote import RangeSource, RecordingSource, RemoteBlob
from lazypull.fs.stats import LatencyHistogram, LayerStats

PRELOAD_MAX = 4 << 20
PROBE = 64                  # bytes read from a blob's end to see that a source serves it
ORIGINS = "origins"         # per-layer file: the sources that served the layer's blob

log = logging.getLogger(__name__)


def layer_dir(root: Path, digest: str) -> Path:
    """``<root>/snapshots/<hex>`` (the digest is checked: it names a directory)."""
    return layerdir.layer_dir(root, digest_hex(digest, "layer digest"))


def origin_of(source: RangeSource) -> str:
    """Who serves a blob: its registry repository (every tag of it shares), else the source itself."""
    ref = getattr(source, "ref", None)
    repository = getattr(ref, "repository", "")
    return f"{getattr(ref, 'registry', '')}/{repository}" if repository else source.describe()


def prove_origin(digest: str, source: RangeSource, ldir: Path, known_tail: bytes | None = None, *,
                 config: FsConfig | None = None) -> None:
    """Refuse to serve a layer's cached chunks, TOC record or mount to a source that does not serve its
    blob (issue 9: a hostile image naming another image's layer digest, with an external TOC, would
    otherwise read that layer without its registry ever being asked). Sources that served the blob once
    are listed in ``<ldir>/origins``; a new one must answer a read of the blob's last bytes (equal to
    ``known_tail`` when given), read through ``RemoteBlob`` (the one retry loop, until ``config``'s
    read deadline)."""
    origin = origin_of(source)
    listed = ldir / ORIGINS
    with contextlib.suppress(FileNotFoundError):
        if origin in listed.read_text().splitlines():
            return
    n = min(PROBE, source.size)
    try:
        remote = RemoteBlob(source, LayerStats(digest), config or FsConfig())
        tail = remote.fetch([(source.size - n, n)], time.monotonic() + remote.config.read_deadline)[0] \
            if n else b""
    except (LazypullError, OSError) as err:
        raise MountError(f"layer {digest}: {origin} does not serve its blob: {err}") from err
    if len(tail) != n or (known_tail is not None and tail != known_tail[-n:]):
        raise MountError(f"layer {digest}: {origin} serves other bytes than its blob")
    note_origin(ldir, origin)


def note_origin(ldir: Path, origin: str) -> None:
    """Remember that ``origin`` served the layer's blob (its TOC verified, or the probe answered)."""
    with contextlib.suppress(FileNotFoundError):
        if origin in (ldir / ORIGINS).read_text().splitlines():
            return
    try:
        with open(ldir / ORIGINS, "a") as fh:
            fh.write(origin.replace("\n", " ") + "\n")
    except OSError as err:       # disk full: the next mount asks again
        log.warning("layer %s: cannot write %s: %s", ldir.name, ldir / ORIGINS, err.strerror or err)


def open_layer_tree(digest: str, annotations: Mapping[str, str] | LayerSpec, source: RangeSource, *,
                    root: Path, config: FsConfig, cache: DirectoryCache | None = None,
                    external_toc: ExternalToc | None = None, activity: Activity | None = None,
                    groups: hints.Groups | None = None, miss_wait: LatencyHistogram | None = None
                    ) -> LayerTree:
    """Fetch and verify the layer's TOC and build its tree; call ``start()`` on it to begin prefetch.
    The tree reads and writes only the layer's own namespace of ``cache`` (default: the root's).
    ``activity``, ``groups`` and ``miss_wait``: the server's, shared by its layers
    (``fs.facade.LayerFs``; default: the tree's own)."""
    activity = activity if activity is not None else Activity()
    stats = LayerStats(digest)
    remote = RemoteBlob(source, stats, config, activity=activity)   # its misses count in ``activity``
    ldir = layer_dir(root, digest)
    ldir.mkdir(parents=True, exist_ok=True)
    src = RecordingSource(remote, record_path(ldir))
    with activity.busy():       # background fetch of the other layers waits for the mounts
        reader = open_toc(digest, annotations, src, external_toc)
        if src.pieces:      # the TOC (verified) or its footer came from this source: it serves the blob
            note_origin(ldir, origin_of(source))
        else:               # all from the record or an external TOC: never asked for the blob itself
            prove_origin(digest, source, ldir, src.tail(min(PROBE, source.size)), config=config)
        if cache is None:
            cache = DirectoryCache(config.chunk_dir(root), config.cache_max_bytes)
        learner = record = None
        if config.learn_window > 0:
            origin = origin_of(source)
            path = learned.record_path(root, digest)    # the node's store: kept when the image goes
            record = learned.load(path, origin, legacy=ldir)
            learner = learned.Learner(path, config.learn_window, origin)
        # What was read to find the TOC (often the end of the blob, sometimes all of it) serves chunks too.
        preloaded = list(src.pieces) if sum(len(data) for _, data in src.pieces) <= PRELOAD_MAX else []
        access = recorder_for(ldir)
        chunks = cache.layer(digest)    # the layer counts as open (its copies live) until released
        try:
            tree = LayerTree(digest, reader, remote, chunks, stats, config, ldir,
                             activity=activity, groups=groups, access=access, learner=learner,
                             learned_record=record, preloaded=preloaded, miss_wait=miss_wait)
        except BaseException:
            chunks.release()
            if access is not None:
                access.close()
            raise
    return tree
