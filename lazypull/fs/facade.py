"""``LayerFs``: the lazy filesystem as the mount server uses it, one object per server.

What the layers of one server share lives here, built once, rather than in module globals: the chunk
cache, the clock of foreground work that background fetching waits on (``layer.activity``), the
groups of layers one image's program loader searches (``layer.hints``) and the histogram of how long
reads that missed the cache waited (the metrics endpoint's). The mount server
(``lazypull.snapshot``) and the podman store (``lazypull.store``) reach the filesystem through this
module and the names ``lazypull.fs`` lists, never through its submodules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lazypull.format.layerkind import LayerSpec
from lazypull.fs.cache import DirectoryCache, digest_hex
from lazypull.fs.config import FsConfig
from lazypull.fs.layer.activity import Activity
from lazypull.fs.layer.hints import Groups, expect_program
from lazypull.fs.layer.open import open_layer_tree, prove_origin
from lazypull.fs.mount import mount_layer, resume_layer
from lazypull.fs.remote import RangeSource, RemoteBlob
from lazypull.fs.stats import MISS_WAIT_BOUNDS, LatencyHistogram, LayerStats
from lazypull.layerdir import snapshots_dir

if TYPE_CHECKING:
    from lazypull.fs.fuse.ops import Negotiated
    from lazypull.fs.fuse.session import FuseMount
    from lazypull.fs.layer.tree import LayerTree


class LiveConnection(Protocol):
    """A ``/dev/fuse`` connection of a layer mount that outlived its server (``snapshot.keeper.Kept``)."""

    @property
    def fd(self) -> int: ...

    @property
    def state(self) -> Negotiated: ...

    @property
    def backing(self) -> Mapping[int, int]: ...

    @property
    def journal(self) -> int | None: ...


class LayerFs:
    """Opens, serves and steers the lazy layers of one mount server. Thread-safe."""

    def __init__(self, root: Path, config: FsConfig, *, cache: DirectoryCache | None = None) -> None:
        self.root = root
        self.config = config
        self.cache = cache if cache is not None else DirectoryCache(
            config.chunk_dir(root), config.cache_max_bytes, copies=snapshots_dir(root))
        self.activity = Activity()      # mounts, prefetches and misses of every layer: background waits
        self.groups = Groups()          # layers by image: where a starting program's libraries are looked up
        self.miss_wait = LatencyHistogram(MISS_WAIT_BOUNDS)   # how long reads that missed waited (metrics)

    def open_layer(self, spec: LayerSpec, source: RangeSource, *,
                   external_toc: Callable[[], bytes] | None = None) -> LayerTree:
        """Fetch and verify the TOC of the layer ``spec`` describes (its blob read from ``source``, an
        external TOC from ``external_toc``) and build its tree (``start()`` it to begin the prefetch)."""
        return open_layer_tree(spec.digest, spec, source, root=self.root, config=self.config,
                               cache=self.cache, external_toc=external_toc, activity=self.activity,
                               groups=self.groups, miss_wait=self.miss_wait)

    def serve(self, tree: LayerTree, mountpoint: Path, *, live: LiveConnection | None = None,
              on_backing: Callable[[int, int], None] | None = None) -> FuseMount:
        """Mount ``tree`` at ``mountpoint``, or serve it again on ``live``, the connection of the mount
        there that a dead server left (its passthrough ids with it)."""
        fsname = f"lazypull-{digest_hex(tree.digest)[:16]}"
        workers = (1, max(4, self.config.fetch_workers))
        if live is not None:
            return resume_layer(tree, mountpoint, live.fd, live.state, dict(live.backing), fsname=fsname,
                                passthrough=self.config.passthrough, workers=workers, journal=live.journal)
        return mount_layer(tree, mountpoint, fsname=fsname, passthrough=self.config.passthrough,
                           workers=workers, on_backing=on_backing)

    def check_origin(self, digest: str, source: RangeSource, layer_dir: Path) -> None:
        """Refuse a source that does not serve the layer's blob (``MountError``): a mounted layer is
        shared only with images whose registry serves it too (``layer.open.prove_origin``)."""
        prove_origin(digest, source, layer_dir, config=self.config)

    def touch(self) -> None:
        """Foreground work just happened (a mount request): background fetch keeps quiet a while."""
        self.activity.touch()

    def expect_program(self, trees: Sequence[LayerTree], argv0: str, path_env: str | None = None,
                       cwd: str = "/") -> bool:
        """Start fetching the program a container of these layers (upper first) is about to run, and what
        it loads; False when it is not found in them."""
        return expect_program(list(trees), argv0, path_env, cwd)

    def read_blob(self, source: RangeSource, digest: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of a blob, retried until the read deadline (``FetchError``)."""
        remote = RemoteBlob(source, LayerStats(digest), self.config)
        return remote.fetch([(offset, length)], time.monotonic() + self.config.read_deadline)[0]
