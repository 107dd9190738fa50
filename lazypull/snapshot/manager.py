"""The mount server's state: which layer filesystems are mounted, and who holds them.

A *hold* is (holder, image): a container or the image itself keeping the image's lazy layers mounted.
A layer stays mounted while any hold names it. The holds are persisted in ``run/state.json`` so a new
server (after a crash or an upgrade) mounts again what the old one had.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazypull.errors import ImageError, LazypullError, MountError
from lazypull.format import FormatError
from lazypull.format.layerkind import LayerSpec, is_lazy
from lazypull.fs import (
    COUNTERS,
    FileRangeSource,
    FsConfig,
    FuseMount,
    LayerFs,
    LayerTree,
    RangeSource,
    detach,
    digest_hex,
    is_layer_mount,
)
from lazypull.registry.errors import DigestMismatchError
from lazypull.snapshot.deferred import DeferredSource
from lazypull.snapshot.layerstate import prune_layer_state
from lazypull.snapshot.paths import RunPaths
from lazypull.snapshot.protocol import LayerMount, MountInfo

if TYPE_CHECKING:
    from lazypull.image import ResolvedImage, Store
    from lazypull.registry import CredentialSource, Descriptor, Reference, RegistryBlobSource, RegistryClient
    from lazypull.snapshot.keeper import KeeperClient, Kept

log = logging.getLogger(__name__)

MOUNT_PARALLELISM = 8   # layers of one image mounted at once
CLOSE_TIMEOUT = 15.0    # s a stopping server waits for its layers' FUSE sessions to end
COLLECT_SETTLE = 0.2    # s without unmounts before released layers are collected ...
COLLECT_MAX_DELAY = 2.0   # ... or this long after the first of a steady stream of them


@dataclass
class MountedLayer:
    """One served layer."""

    digest: str
    path: Path
    tree: LayerTree
    fuse: FuseMount
    source: RangeSource
    mounted_at: float = field(default_factory=time.time)


@dataclass
class Hold:
    """A holder's claim on an image's lazy layers."""

    holder: str
    image: str
    digests: list[str]
    insecure: bool = False
    layer: dict[str, Any] | None = None   # a single registry layer (containerd snapshotter): ref, annotations

    def to_json(self) -> dict[str, Any]:
        data = {"holder": self.holder, "image": self.image, "digests": self.digests,
                "insecure": self.insecure}
        if self.layer is not None:
            data["layer"] = self.layer
        return data


@dataclass
class _Keeping:
    """What a mount tells the keeper, queued while it is being connected to: its connection (a put:
    ``path`` and ``fuse``), or a passthrough id of it (a note: ``ino`` and ``backing_id``)."""

    digest: str
    path: Path | None
    fuse: FuseMount | None
    conn: str
    ino: int | None = None
    backing_id: int = 0


def _default_store(root: Path) -> Store:
    from lazypull.image import Store

    return Store(root)


def layer_client(insecure: bool, auth: CredentialSource | None = None, config: FsConfig | None = None
                 ) -> RegistryClient:
    """A registry client for layer reads: few retries of its own (the layer retries until its deadline).
    ``auth``: a credential source (default: the node's docker config files); ``config``: the server's
    settings, for its network limits (``FsConfig.net_limits``; default NetLimits')."""
    from lazypull.registry import RegistryClient, RetryPolicy, default_auth

    return RegistryClient(insecure=insecure, auth=auth if auth is not None else default_auth(),
                          timeout=20.0, limits=config.net_limits() if config is not None else None,
                          retry=RetryPolicy(attempts=2, base_delay=0.05, max_delay=0.5, deadline=5.0))


class LayerManager:
    """Mounts, holds and unmounts layers; thread-safe (no lock held across mounting or network I/O)."""

    def __init__(self, root: Path, config: FsConfig, *,
                 store_factory: Callable[[Path], Store] = _default_store,
                 client_factory: Callable[[bool], RegistryClient] | None = None) -> None:
        self.root = root
        self.paths = RunPaths(root)
        self.config = config
        self.fs = LayerFs(root, config)     # what the layers share: cache, activity, image groups
        self.cache = self.fs.cache
        self._store_factory = store_factory
        self._client_factory = client_factory or self.new_client
        self._clients: dict[bool, RegistryClient] = {}
        self._layers: dict[str, MountedLayer] = {}
        self._holds: dict[tuple[str, str], Hold] = {}
        self._closed = False                             # close() began: a mount finishing now is undone
        self._lock = threading.Lock()                    # guards _layers, _holds, _clients, _layer_locks
        self._layer_locks: dict[str, threading.Lock] = {}
        self._state_lock = threading.Lock()
        # Released trees, weakly: a node daemon must free what each container used (issue 10, item 1).
        self._released: weakref.WeakSet[LayerTree] = weakref.WeakSet()
        self._released_count = 0
        self._retired = dict.fromkeys(COUNTERS, 0)     # counters of the layers already unmounted
        self.started = time.time()
        self.keeper: KeeperClient | None = None      # once adopt_kept() connected
        #: while a keeper that held nothing is connected to in the background (adopt_kept): what the
        #: mounts made meanwhile tell it, in order; sent once it is up. Guarded by ``_keep_lock``.
        self._keep_queue: list[_Keeping] | None = None
        self._keep_lock = threading.Lock()
        self._keeping: threading.Thread | None = None     # adopt_kept's background connect, if any
        self._recovered: dict[str, Kept] = {}       # live connections of a dead server, to serve again

    def warm_up(self) -> None:
        """Import and build now what the first pull and mount need (the image store and registry
        modules, httpx, one registry client per TLS mode), so the first cold start does not pay for it."""
        import lazypull.image.pull  # noqa: F401 - imported for its side effect: loaded once, here

        self.store()
        for insecure in (False, True):
            warm_up = getattr(self.registry_client(insecure), "warm_up", None)   # (a test's client: none)
            if warm_up is not None:
                warm_up()

    def store(self) -> Store:
        """The content store of the root (manifests, configs, images.json)."""
        return self._store_factory(self.root)

    def new_client(self, insecure: bool, auth: CredentialSource | None = None) -> RegistryClient:
        """A new :func:`layer_client` with this server's configured network limits."""
        return layer_client(insecure, auth, self.config)

    def registry_client(self, insecure: bool) -> RegistryClient:
        """The server's registry client for this TLS mode: kept for its lifetime, so its connections,
        scheme and tokens serve every later pull and layer read."""
        with self._lock:
            client = self._clients.get(insecure)
            if client is None:
                client = self._clients[insecure] = self._client_factory(insecure)
            return client

    # -- requests --

    def mount_image(self, image: str, *, insecure: bool = False, holder: str | None = None,
                    platform: str | None = None) -> list[LayerMount]:
        """Mount the image's lazy layers (of ``platform``, default this machine's) and record the hold;
        one LayerMount per layer, bottom first."""
        store = self.store()
        resolved = store.resolve(image, platform)
        self.fs.touch()         # a mount request: background fetch keeps quiet a while (stargz-snapshotter)
        from lazypull.image.partial import check_declared_diff_ids

        # before anything is mounted (an image stored before pulls checked this, or loaded)
        check_declared_diff_ids(resolved.layers, list(resolved.diff_ids))

        def one(desc: Descriptor) -> LayerMount:
            annotations = dict(desc.annotations or {})
            if not is_lazy(annotations):
                return LayerMount(desc.digest, False, None)
            try:
                layer = self._ensure_mounted(desc.digest, annotations,
                                             functools.partial(self._source, store, resolved, desc, insecure),
                                             desc.media_type)
            except (LazypullError, FormatError) as err:
                # As stargz-snapshotter does: a layer that cannot be prepared as a remote snapshot
                # (TOC image missing, TOC digest mismatch, registry refusing ranges ...) is downloaded
                # and extracted whole instead, where the blob digest is checked as for any layer.
                log.warning("layer %s of %s cannot be mounted lazily, falling back to a full "
                            "download: %s", desc.digest, image, err)
                return LayerMount(desc.digest, False, None)
            return LayerMount(desc.digest, True, layer.path)

        layers = list(resolved.layers)
        if len(layers) > 1:
            # The layers' footer/TOC round trips, TOC parsing and FUSE mounts overlap (in order: map).
            with ThreadPoolExecutor(min(len(layers), MOUNT_PARALLELISM), thread_name_prefix="mount") as pool:
                result = list(pool.map(one, layers))
        else:
            result = [one(desc) for desc in layers]
        digests = [m.digest for m in result if m.lazy]
        name = resolved.name or image
        hold = Hold(holder or name, name, digests, insecure)
        with self._lock:
            self._holds[(hold.holder, hold.image)] = hold
        self._save_state()
        return result

    def premount(self, ref: str, *, insecure: bool = False, platform: str | None = None
                 ) -> tuple[Callable[[], list[str]], tuple[bytes, str, str]]:
        """Start mounting the lazy layers of ``ref`` straight from its manifest, before the image is
        stored, so that their TOC reads overlap the fetch of the config (the lazy pull's next step).

        Reads the manifest now (registry errors are raised); returns a function that waits for the
        mounts and gives the digests mounted, and what ``get_manifest(ref)`` returned (for the pull,
        which need not ask again). A layer that fails here is left to :meth:`mount_image`, which falls
        back to a full download as usual; layers held by nobody afterwards (the pull failed) are for
        :meth:`unmount_unused` with ``only=`` these digests.
        """
        from lazypull.registry import is_index, parse_index, parse_manifest, parse_reference, select_platform

        client = self.registry_client(insecure)
        parsed = parse_reference(ref)
        top = raw, media_type, _ = client.get_manifest(parsed)
        if is_index(media_type):
            chosen = select_platform(parse_index(raw, media_type), platform)
            raw, media_type, _ = client.get_manifest(parsed.with_digest(chosen.digest))
        try:
            layers = parse_manifest(raw, media_type).layers
        except LazypullError as err:        # a nested index, an artifact ...: the pull proper says so
            log.debug("no early mounts for %s: %s", ref, err)
            return list, top
        store = self.store()
        wanted = [d for d in layers if is_lazy(d.annotations) and not _local_blob(store, d.digest)]
        if not wanted:
            return list, top

        def one(desc: Descriptor) -> str | None:
            def make_source() -> tuple[RangeSource, Callable[[], bytes] | None]:
                return (client.blob_source(parsed, desc.digest, int(desc.size)),
                        lambda: fetch_external_toc(client, parsed, desc.digest))
            try:
                self._ensure_mounted(desc.digest, dict(desc.annotations), make_source, desc.media_type)
            except (LazypullError, FormatError) as err:
                log.debug("early mount of %s failed (the mount proper retries it): %s", desc.digest, err)
                return None
            return str(desc.digest)

        pool = ThreadPoolExecutor(min(len(wanted), MOUNT_PARALLELISM), thread_name_prefix="premount")
        futures = [pool.submit(one, desc) for desc in wanted]
        pool.shutdown(wait=False)
        return (lambda: [d for d in (f.result() for f in futures) if d is not None]), top

    def mount_registry_layer(self, ref: str, digest: str, annotations: dict[str, str], *, holder: str,
                             insecure: bool = False, client: RegistryClient | None = None) -> Path:
        """Mount one layer straight from a registry reference (containerd's remote snapshots); its path.
        ``client``: the registry client for its reads (one with the image's own credentials, from the CRI
        keychain), else the server's."""
        from lazypull.registry import parse_reference

        if not is_lazy(annotations):
            raise MountError(f"layer {digest} of {ref} carries no TOC digest: not lazily mountable")
        try:
            parsed = parse_reference(ref)
        except LazypullError as err:
            raise MountError(f"invalid image reference {ref!r} for layer {digest}: {err}") from err
        if client is None:
            client = self.registry_client(insecure)

        def make_source() -> tuple[RangeSource, Callable[[], bytes] | None]:
            return (client.blob_source(parsed, digest),
                    lambda: fetch_external_toc(client, parsed, digest))

        layer = self._ensure_mounted(digest, annotations, make_source)
        hold = Hold(holder, f"layer:{ref}", [digest], insecure,
                    {"ref": ref, "digest": digest, "annotations": dict(annotations)})
        with self._lock:
            self._holds[(hold.holder, hold.image)] = hold
        self._save_state()
        return layer.path

    def release_holder(self, holder: str) -> bool:
        """Drop every hold of ``holder``; unmount what nobody holds. False when it held nothing."""
        with self._lock:
            keys = [k for k in self._holds if k[0] == holder]
            released = [self._holds.pop(key) for key in keys]
        if keys:
            self._save_state()
            gone = self.unmount_unused()
            # containerd removed a remote snapshot: its layer's state and chunks go unless an image uses it
            remote = {d for h in released if h.layer is not None for d in h.digests} & set(gone)
            if remote:
                self.forget_layers(remote)
        return bool(keys)

    def forget_layers(self, digests: Iterable[str]) -> list[str]:
        """Free the per-layer state and cached chunks of these layers if no image, hold or mount uses
        them (``snapshot.layerstate``); the digests freed."""
        try:
            keep = self.store().live_blobs()
        except (LazypullError, OSError) as err:
            log.warning("not freeing layer state: cannot read the image index: %s", err)
            return []
        return prune_layer_state(self.root, keep, self.config, self.cache, only=digests)

    def release_image(self, image: str, *, holder: str | None = None) -> None:
        """Drop a hold; unmount the layers nobody holds any more."""
        with self._lock:
            keys = [k for k, h in self._holds.items()
                    if (h.image == image or k[1] == image or _same_image(h.image, image))
                    and ((holder is None and h.holder == h.image) or h.holder == holder)]
            if not keys and holder is not None:
                keys = [k for k, h in self._holds.items() if h.holder == holder]
            for key in keys:
                del self._holds[key]
        if not keys:
            raise MountError(f"image {image!r} is not held" + (f" by {holder!r}" if holder else ""))
        self._save_state()
        self.unmount_unused()

    def unmount_unused(self, only: Iterable[str] | None = None) -> list[str]:
        """Unmount layers no hold names (of ``only``, if given); their digests."""
        with self._lock:
            held = {d for h in self._holds.values() for d in h.digests}
            unused = [d for d in self._layers if d not in held]
        if only is not None:
            unused = [d for d in unused if d in set(only)]
        done = []
        for digest in unused:
            with self._layer_lock(digest):
                with self._lock:
                    if any(digest in h.digests for h in self._holds.values()):
                        continue
                    layer = self._layers.pop(digest, None)
                if layer is not None:
                    self._unmount(layer)
                    done.append(digest)
        return done

    def expect_program(self, mounts: list[LayerMount], argv0: str, path_env: str | None, cwd: str) -> bool:
        """Start fetching the program a container of these layers (bottom first) is about to run, and
        the libraries it loads, while the container is still being set up. Only when every layer is
        served here (a program found in a lazy layer could be shadowed by an extracted one above it);
        False when nothing was started."""
        if not mounts or not all(m.lazy for m in mounts):
            return False
        with self._lock:
            layers = [self._layers.get(m.digest) for m in reversed(mounts)]
        if any(layer is None for layer in layers):
            return False
        return self.fs.expect_program([layer.tree for layer in layers if layer is not None], argv0,
                                      path_env, cwd)

    def wait_prefetch(self, digests: list[str], timeout: float) -> bool:
        """Wait for the prefetch of these layers, ``timeout`` s in all."""
        deadline = time.monotonic() + timeout
        for digest in digests:
            with self._lock:
                layer = self._layers.get(digest)
            if layer is not None and not layer.tree.wait_prefetch(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def list_mounts(self) -> list[MountInfo]:
        with self._lock:
            return [MountInfo(d, layer.path,
                              sorted({h.holder for h in self._holds.values() if d in h.digests}),
                              layer.tree.prefetched)
                    for d, layer in sorted(self._layers.items())]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            layers = dict(self._layers)
        out: dict[str, Any] = {}
        for digest, layer in layers.items():
            data = layer.tree.stats.snapshot()
            data["path"] = str(layer.path)
            data["source"] = layer.source.describe()
            data["passthrough_files"] = layer.fuse.passthrough_files
            out[digest] = data
        return {"layers": out, "cache_dir": str(self.cache.dir), "cache": self.cache.stats(),
                "released_trees": {"released": self._released_count, "alive": len(self._released)}}

    def uptime(self) -> float:
        """Seconds since this manager (the server) started."""
        return max(0.0, time.time() - self.started)

    def cache_bytes(self) -> int:
        """Disk space the chunk cache takes (its own count, in filesystem blocks)."""
        return self.cache.size

    def totals(self) -> dict[str, int]:
        """The layers' counters summed over the server's life (unmounted layers included, so that they
        only grow: what the metrics endpoint exports), with the number of layers and holds now."""
        with self._lock:
            trees = [layer.tree for layer in self._layers.values()]
            out = dict(self._retired)
            out["mounted_layers"] = len(trees)
            out["holds"] = len(self._holds)
            out["released_trees_alive"] = len(self._released)
        for tree in trees:
            data = tree.stats.snapshot()
            for name in COUNTERS:
                out[name] += int(data.get(name) or 0)
        return out

    def close(self) -> None:
        """Unmount everything (the holds stay in the state file for the next server)."""
        with self._lock:
            self._closed = True
            layers = list(self._layers.values())
            self._layers.clear()
            making = list(self._layer_locks.values())
        self.drop_unclaimed()       # live connections taken back from the keeper that no mount claimed yet
        # In parallel: a busy mount takes up to two FUSE stop timeouts (detach, then abort); a server
        # stopping must not pay that once per layer. Bounded: what is still stuck is detached already.
        threads = [threading.Thread(target=self._unmount, args=(layer,), kwargs={"stopping": True},
                                    name="unmount", daemon=True) for layer in layers]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + CLOSE_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # A mount still being made finishes, and undoes itself (``_closed``), before the process may
        # exit: cut short after the FUSE mount, its connection would stay with the keeper for good.
        for lock in making:
            if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                lock.release()

    # -- restore after a restart --

    def restore(self) -> None:
        """Mount again what the state file says was held."""
        try:
            data = json.loads(self.paths.state.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            log.error("ignoring unreadable state file %s: %s", self.paths.state, err)
            return
        for item in data.get("holds", []):
            try:
                layer = item.get("layer")
                if isinstance(layer, dict):
                    self.mount_registry_layer(str(layer["ref"]), str(layer["digest"]),
                                              {str(k): str(v) for k, v in layer["annotations"].items()},
                                              holder=str(item["holder"]), insecure=bool(item.get("insecure")))
                    continue
                self.mount_image(str(item["image"]), insecure=bool(item.get("insecure")),
                                 holder=str(item["holder"]))
                log.info("restored mounts of %s for %s", item["image"], item["holder"])
            except (LazypullError, KeyError, OSError) as err:
                if _image_gone(err, layer_hold=isinstance(item.get("layer"), dict)):
                    log.warning("dropping the hold of %s on %s: %s", item.get("holder"), item.get("image"),
                                err)
                    continue
                log.error("could not restore mounts of %s for %s: %s",
                          item.get("image"), item.get("holder"), err)
                with self._lock:   # keep the hold so a later request can retry
                    hold = Hold(str(item.get("holder")), str(item.get("image")),
                                [str(d) for d in item.get("digests", [])], bool(item.get("insecure")),
                                item.get("layer") if isinstance(item.get("layer"), dict) else None)
                    self._holds.setdefault((hold.holder, hold.image), hold)
        self._save_state()

    # -- live connections kept across restarts (lazypull.snapshot.keeper) --

    def adopt_kept(self) -> list[Path]:
        """Connect to the root's keeper (starting it) and take the live connections it holds; the
        mountpoints a restored hold will serve again (the start-up clean-up must leave them).

        With no keeper running (its lock free), it holds nothing to take back (issue 14): the keeper is
        connected to (started) in the background, and what mounts made meanwhile tell it is queued until
        then, so a fresh server's first mount does not wait for the keeper's start. The caller holds the
        server's pidfile: no other server can hand a keeper connections meanwhile."""
        from lazypull.snapshot.keeper import keeper_pid

        try:
            running = keeper_pid(self.paths) is not None
        except OSError:         # cannot tell: take back first, as always
            running = True
        if not running:
            with self._keep_lock:
                self._keep_queue = []
            self._keeping = threading.Thread(target=self._connect_keeper, name="keeper-connect", daemon=True)
            self._keeping.start()
            return []
        return self._adopt_kept()

    def wait_keeping(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for adopt_kept's background connect to hand the keeper what was
        queued; whether it did. A server stopping without unmounting must: the queued connections die
        with the process otherwise, and the running containers' mounts with them."""
        thread = self._keeping
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def unkept(self) -> list[str]:
        """The layers whose connection is still queued for the keeper (see adopt_kept), for a message:
        read without ``_keep_lock``, which a hand-over stuck on the keeper holds."""
        queue = list(self._keep_queue or [])
        return sorted({item.digest for item in queue if item.ino is None})

    def _connect_keeper(self) -> None:
        """adopt_kept's background half: connect, then send what was queued, in order. Whatever goes
        wrong, the queue is ended: left set, puts and notes would be queued and never sent."""
        try:
            self._hand_queued()
        except Exception:
            log.exception("the FUSE connection keeper's background connect failed")
        finally:
            with self._keep_lock:
                self._keep_queue = None

    def _hand_queued(self) -> None:
        self._adopt_kept()
        with self._lock:    # none expected (no keeper ran); their mounts were detached as stale anyway
            unexpected = list(self._recovered.values())
            self._recovered.clear()
        for kept in unexpected:
            log.warning("the FUSE connection keeper held layer %s after all: letting it go", kept.digest)
            self._drop_kept(kept.digest)
            kept.close()
        with self._keep_lock:
            queue = self._keep_queue or []
            keeper = self.keeper
            if keeper is None:      # reported by _adopt_kept: these mounts are not kept
                self._keep_queue = None
                return
            while queue:            # each item leaves the queue once sent: unkept() names what is left
                item = queue[0]
                if item.ino is None:
                    self._put(keeper, item.digest, item.path, item.fuse, item.conn)
                else:
                    with contextlib.suppress(OSError, LazypullError):
                        keeper.note_backing(item.digest, item.conn, item.ino, item.backing_id)
                del queue[0]
            self._keep_queue = None

    def _adopt_kept(self) -> list[Path]:
        from lazypull.snapshot.keeper import KeeperClient

        keeper: KeeperClient | None = None
        try:
            keeper = KeeperClient.connect(self.paths)
            kept = keeper.take()
        except (OSError, LazypullError) as err:
            log.error("no FUSE connection keeper: running containers will lose their lazy layers "
                      "if this server dies: %s", err)
            if keeper is not None:      # connected: a client left open would keep the keeper waiting
                keeper.close()
            return []
        self.keeper = keeper
        for item in kept:
            try:
                expected = str(self.paths.mountpoint(item.digest))
            except MountError:          # not a layer digest: nothing of ours
                expected = None
            if expected != item.mountpoint or not is_layer_mount(item.mountpoint):
                item.close()
                self._drop_kept(item.digest)
                continue
            self._recovered[item.digest] = item
        return [Path(item.mountpoint) for item in self._recovered.values()]

    def _take_kept(self, digest: str, path: Path) -> Kept | None:
        with self._lock:
            kept = self._recovered.pop(digest, None)
        if kept is not None and kept.mountpoint != str(path):
            kept.close()
            return None
        return kept

    def _keep(self, digest: str, path: Path, fuse: FuseMount, conn: str) -> None:
        """Hand a copy of a new mount's ``/dev/fuse`` fd to the keeper (a failure costs only that);
        queued while the keeper is being connected to (see adopt_kept)."""
        with self._keep_lock:
            if self._keep_queue is not None:
                self._keep_queue.append(_Keeping(digest, path, fuse, conn))
                return
            keeper = self.keeper
        if keeper is not None:
            self._put(keeper, digest, path, fuse, conn)

    @staticmethod
    def _put(keeper: KeeperClient, digest: str, path: Path | None, fuse: FuseMount | None, conn: str) -> None:
        state = fuse.negotiated if fuse is not None else None
        if fuse is None or state is None:
            return
        try:
            keeper.put(digest, str(path), fuse.dev_fd, state, fuse.journal_fd, conn)
        except (OSError, LazypullError) as err:
            log.warning("the FUSE connection keeper did not take layer %s: %s", digest, err)

    def _backing_noter(self, digest: str, conn: str) -> Callable[[int, int], None] | None:
        """What tells the keeper of the passthrough ids of a mount's connection ``conn``
        (see ``FuseMount.on_backing``); queued like the mount's put while the keeper is awaited."""
        with self._keep_lock:
            if self._keep_queue is not None:
                return functools.partial(self._note_backing, digest, conn)
            keeper = self.keeper
        if keeper is None:
            return None
        return functools.partial(keeper.note_backing, digest, conn)

    def _note_backing(self, digest: str, conn: str, ino: int, backing_id: int) -> None:
        with self._keep_lock:
            if self._keep_queue is not None:
                self._keep_queue.append(_Keeping(digest, None, None, conn, ino, backing_id))
                return
            keeper = self.keeper
        if keeper is not None:
            keeper.note_backing(digest, conn, ino, backing_id)

    def _drop_kept(self, digest: str) -> None:
        if self.keeper is not None:
            with contextlib.suppress(OSError, LazypullError):
                self.keeper.drop(digest)

    def drop_unclaimed(self) -> None:
        """After the restore: kept connections no hold claimed are let go (unmounted, like any stale
        mount of a dead server; their readers get ENOTCONN)."""
        with self._lock:
            left = list(self._recovered.values())
            self._recovered.clear()
        for item in left:
            log.warning("no hold claims the live mount of %s: detaching it", item.digest)
            self._drop_kept(item.digest)
            with contextlib.suppress(MountError):
                detach(item.mountpoint)
            item.close()

    # -- internals --

    def _layer_lock(self, digest: str) -> threading.Lock:
        with self._lock:
            return self._layer_locks.setdefault(digest, threading.Lock())

    def _ensure_mounted(self, digest: str, annotations: dict[str, str],
                        make_source: Callable[[], tuple[RangeSource, Callable[[], bytes] | None]],
                        media_type: str = "") -> MountedLayer:
        digest_hex(digest)
        with self._layer_lock(digest):
            with self._lock:
                layer = self._layers.get(digest)
                if self._closed:
                    raise MountError(f"layer {digest}: the mount server is stopping")
            if layer is not None:
                self._check_origin(digest, make_source)
                return layer
            began = time.monotonic()
            source, external = make_source()
            tree = None
            kept: Kept | None = None
            path = self.paths.mountpoint(digest)
            try:
                tree = self.fs.open_layer(_layer_spec(digest, source.size, media_type, annotations), source,
                                          external_toc=external)
                opened = time.monotonic()
                # The prefetch downloads while the FUSE mount is set up (it needs the TOC, not the mount).
                tree.start()
                kept = self._take_kept(digest, path)
                if kept is not None:       # the connection outlived its server: serve it again
                    conn = kept.conn
                    fuse = self.fs.serve(tree, path, live=kept)
                    log.info("took over the live FUSE connection of layer %s at %s", digest, path)
                else:
                    from lazypull.snapshot.keeper import new_conn

                    conn = new_conn()
                    fuse = self.fs.serve(tree, path, on_backing=self._backing_noter(digest, conn))
                self._keep(digest, path, fuse, conn)    # after a take-over too: its journal may be new
            except BaseException:
                if kept is not None:    # a take-over that failed: nobody serves that connection now
                    self._drop_kept(digest)
                    with contextlib.suppress(MountError):
                        detach(str(path))
                if tree is not None:
                    tree.close()
                close = getattr(source, "close", None)
                if close is not None:
                    close()
                raise
            layer = MountedLayer(digest, path, tree, fuse, source)
            with self._lock:
                closed = self._closed
                if not closed:
                    self._layers[digest] = layer
            if closed:      # the server stopped while this mount was being made: leave nothing mounted
                self._unmount(layer, stopping=True)
                raise MountError(f"layer {digest}: the mount server is stopping")
            # The TOC objects live as long as the mount: keep the cyclic GC from rescanning them on every
            # later mount (with 5 layers alive it made each next mount ~2x slower); see _Collector.
            _COLLECTOR.freeze()
            now = time.monotonic()
            log.info("mounted layer %s at %s from %s in %.3fs (TOC and tree %.3fs, FUSE mount %.3fs)",
                     digest, path, source.describe(), now - began, opened - began, now - opened)
            return layer

    def _check_origin(self, digest: str,
                      make_source: Callable[[], tuple[RangeSource, Callable[[], bytes] | None]]) -> None:
        """A mounted layer is shared only with images whose source serves its blob too (``prove_origin``:
        a hostile image naming another image's layer digest must not get its mount)."""
        source, _ = make_source()
        try:
            self.fs.check_origin(digest, source, self.paths.layer_dir(digest))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                with contextlib.suppress(OSError):
                    close()

    def _source(self, store: Store, resolved: ResolvedImage, desc: Descriptor, insecure: bool
                ) -> tuple[RangeSource, Callable[[], bytes] | None]:
        ref = resolved.source
        if ref is None:
            local = _local_blob(store, desc.digest)
            if local is None:
                raise MountError(f"layer {desc.digest} of {resolved.name} is neither in the content store "
                                 f"nor from a known registry")
            return FileRangeSource(local), None

        # The registry client only when a read needs it: a layer whose TOC is recorded on disk mounts
        # without a request, and a fresh server's first mount need not import httpx (snapshot.deferred).
        def external() -> bytes:
            return fetch_external_toc(self.registry_client(insecure), ref, desc.digest)

        def make() -> RegistryBlobSource:
            return self.registry_client(insecure).blob_source(ref, desc.digest, int(desc.size))

        local = _local_blob(store, desc.digest)
        if local is not None:
            return FileRangeSource(local), external
        return DeferredSource(make, ref, desc.digest, int(desc.size)), external

    def _unmount(self, layer: MountedLayer, *, stopping: bool = False) -> None:
        """Stop serving the layer. ``stopping`` (the server exits): the tree is closed first, so that
        reads waiting on the network fail now and their FUSE threads end, rather than after the read
        deadline (a released layer's tree is closed after its mount: open files keep working until then)."""
        if stopping:
            layer.tree.close()
        with self._keep_lock:       # a queued put must not send the fd of a connection ended here
            if self._keep_queue is not None:
                self._keep_queue[:] = [item for item in self._keep_queue if item.digest != layer.digest]
            keeper = self.keeper
        if keeper is not None:
            try:
                keeper.drop(layer.digest)
            except (OSError, LazypullError) as err:
                log.warning("the FUSE connection keeper did not drop layer %s: %s", layer.digest, err)
        try:
            layer.fuse.stop()
        except Exception as err:  # keep going: the others must still be unmounted
            log.error("unmounting %s failed: %s", layer.path, err)
        if not stopping:
            layer.tree.close()
        data = layer.tree.stats.snapshot()
        with self._lock:
            self._released.add(layer.tree)
            self._released_count += 1
            for name in COUNTERS:
                self._retired[name] += int(data.get(name) or 0)
        close = getattr(layer.source, "close", None)
        if close is not None:
            with contextlib.suppress(OSError):
                close()
        _COLLECTOR.collect_soon()   # the layer's objects are in cycles (and frozen): free them
        log.info("unmounted layer %s", layer.digest)

    def _save_state(self) -> None:
        with self._lock:
            data = {"version": 1, "holds": [h.to_json() for h in self._holds.values()]}
        with self._state_lock:
            tmp = self.paths.state.with_suffix(".tmp")
            try:
                self.paths.run_dir.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(data, indent=1))
                os.replace(tmp, self.paths.state)
            except OSError as err:
                # A full disk must not fail the mount or release asking: the holds stay right in memory
                # and the next save writes them all; only a crash before then loses the newest ones.
                tmp.unlink(missing_ok=True)
                log.warning("could not save the mount server's holds to %s: %s", self.paths.state,
                            err.strerror or err)


def _image_gone(err: BaseException, *, layer_hold: bool) -> bool:
    """Whether a hold's restore failed because its image is gone or unusable here (an ``ImageError``:
    removed while no server ran, a stored manifest no longer matching its digest): the hold is dropped.
    Content from the registry that did not verify this time (a layer hold's external TOC) keeps it, for
    a later request to retry."""
    return isinstance(err, ImageError) and not (layer_hold and isinstance(err, DigestMismatchError))


class _Collector:
    """Frees what released layers leave as cyclic garbage, while keeping live layers' objects frozen.

    A mount freezes every object (``gc.freeze``) so full collections do not rescan the TOCs of the
    layers still mounted. Frozen objects are never collected: a released tree (a tangle of cycles:
    tree, fetcher, background thread, bound methods) frozen by the next mount stayed for good, ~13 MB
    per container. So after an unmount a thread unfreezes, collects and freezes again what is still
    alive; several unmounts in a row cost one collection, and the releasing request does not wait.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()        # gc.freeze / unfreeze / collect never interleave
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self.collections = 0

    def freeze(self) -> None:
        with self._lock:
            gc.freeze()

    def collect_soon(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="gc-released", daemon=True)
                self._thread.start()
        self._wanted.set()

    def collect_now(self) -> None:
        with self._lock:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.collections += 1

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            # Until the unmounts settle (at most COLLECT_MAX_DELAY): the request that released a layer
            # still holds it (its frame's locals) until it returns, and a tree missed by a collection
            # stayed until the next unmount.
            first = time.monotonic()
            while time.monotonic() - first < COLLECT_MAX_DELAY and self._wanted.wait(COLLECT_SETTLE):
                self._wanted.clear()
            try:
                self.collect_now()
            except Exception:       # a finalizer's error must not end the collector
                log.exception("collecting released layers failed")


_COLLECTOR = _Collector()


def _layer_spec(digest: str, size: int, media_type: str, annotations: dict[str, str]) -> LayerSpec:
    """The layer's ``LayerSpec``; a malformed annotation is a ``MountError`` naming the layer and key."""
    try:
        return LayerSpec.from_descriptor(digest, size, media_type, annotations)
    except FormatError as err:
        raise MountError(str(err)) from err


def fetch_external_toc(client: RegistryClient, ref: Reference, digest: str) -> bytes:
    """``image.tocimage``'s, imported only for a layer whose TOC is in a separate image: it loads the
    manifest parsers, which a server mounting layers recorded on disk does not need (issue 14)."""
    from lazypull.image.tocimage import fetch_external_toc as fetch

    return fetch(client, ref, digest)


def _local_blob(store: Store, digest: str) -> Path | None:
    """The layer blob's file in the content store, if it is there (a full pull left it)."""
    local = store.blob_path(digest) if hasattr(store, "blob_path") else None
    return Path(local) if local is not None and Path(local).is_file() else None


def _same_image(a: str, b: str) -> bool:
    """``name`` and ``name:latest`` / ``docker.io/library/name`` refer to one image (loose match)."""
    def norm(x: str) -> str:
        x = x.removeprefix("docker.io/").removeprefix("library/")
        return x if ":" in x.rsplit("/", 1)[-1] or "@" in x else x + ":latest"

    return norm(a) == norm(b)
