"""The additional layer store inside the mount server: one FUSE mount per store directory, whose
layers are the server's own lazy layer mounts (one process holds every mount and the chunk cache).

Layers a ``diff`` walk mounts are held (``LayerManager.mount_registry_layer``, holder
``store:<mountpoint>:<ref dir>/<digest>``) while containers/storage uses them: it creates ``use`` once
per lookup and per stored layer and removes the layer directory once per lookup ended and per layer
deleted, so a layer podman keeps holds one count. A layer whose count falls to zero is released after
``grace`` seconds, unless used again meanwhile. The stores served and their counts are kept in
``run/stores.json``: a new server serves them again with the same counts (the layers' holds are
restored by the manager), so a layer podman still uses is not released by a restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lazypull.errors import MountError
from lazypull.fs import FuseMount, detach, mount_entry
from lazypull.snapshot.manager import MOUNT_PARALLELISM, LayerManager
from lazypull.store.auth import ChainedAuth
from lazypull.store.catalog import Catalog, StoreLayer
from lazypull.store.names import encode_ref
from lazypull.store.tree import StoreTree

log = logging.getLogger(__name__)

FSNAME = "lazypull-store"
DEFAULT_GRACE = 60.0          # s a released layer stays mounted (a pull's lookups release and use again)
TIMEOUT = 1.0                 # s the kernel caches the store's names (as stargz-store)
BLOB_WINDOW = 4 << 20         # bytes fetched per blob read (podman save reads the blob in order)
PREMOUNT_EVERY = 60.0         # s between early mounts of one image's layers


@dataclass(frozen=True)
class StoreSpec:
    """One store the server serves: what ``lazypull store`` asked for."""

    mountpoint: str
    insecure: bool = False
    auth_files: list[str] = field(default_factory=list)
    grace: float = DEFAULT_GRACE

    @classmethod
    def from_json(cls, data: Any) -> StoreSpec:
        """Checked wire / file form."""
        if not isinstance(data, dict):
            raise MountError("store request must be an object")
        point = data.get("mountpoint")
        files = data.get("auth_files", [])
        grace = data.get("grace", DEFAULT_GRACE)
        if not isinstance(point, str) or not os.path.isabs(point) or ":" in point or "," in point:
            raise MountError(f"store mountpoint must be an absolute path without ':' or ',': {point!r}")
        if not isinstance(files, list) or not all(isinstance(f, str) and os.path.isabs(f) for f in files):
            raise MountError("store auth_files must be a list of absolute paths")
        if not isinstance(grace, int | float) or isinstance(grace, bool) or not 0 <= grace <= 86400:
            raise MountError(f"store grace must be 0..86400 seconds, not {grace!r}")
        return cls(os.path.normpath(point), bool(data.get("insecure")), list(files), float(grace))


class LayerStore:
    """One served store: the FUSE mount, the counts and the release timers (``StoreBackend``)."""

    def __init__(self, manager: LayerManager, spec: StoreSpec, *, counts: dict[str, int] | None = None,
                 changed: Callable[[], None] = lambda: None) -> None:
        self.manager = manager
        self.spec = spec
        self._changed = changed                 # the counts changed: persist them
        self.client = manager.new_client(spec.insecure, auth=ChainedAuth(spec.auth_files))
        self.catalog = Catalog(lambda: self.client)
        self.tree = StoreTree(self)
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict(counts or {})
        self._held: set[str] = set()
        self._timers: dict[str, threading.Timer] = {}
        self._windows: dict[str, tuple[int, bytes]] = {}
        self._premounted: dict[str, float] = {}    # image ref -> when its layers were mounted early
        self._fuse: FuseMount | None = None

    # -- lifecycle --

    def start(self) -> None:
        point = Path(self.spec.mountpoint)
        entry = mount_entry(str(point))     # from mountinfo: a dead mount answers ENOTCONN to a stat
        if entry is not None:
            if entry[1] != FSNAME:
                raise MountError(f"{point} is already a mountpoint ({entry[0]} {entry[1]})")
            detach(point)                   # a store of a server that died (ENOTCONN for podman)
            log.warning("detached the stale store mount at %s", point)
        point.mkdir(parents=True, exist_ok=True)
        self._fuse = FuseMount(self.tree, point, fsname=FSNAME, passthrough=False, workers=(2, 16),
                               entry_timeout=TIMEOUT, attr_timeout=TIMEOUT, negative_timeout=TIMEOUT,
                               readonly=False, cache_symlinks=False).start()
        for key, count in self.counts().items():
            if count <= 0:                      # released before a restart: its grace starts again
                self._schedule(key)
        log.info("serving the additional layer store at %s", point)

    def stop(self) -> None:
        """Unmount the store (its layers stay as held; an empty directory means "download" to podman)."""
        with self._lock:
            timers = list(self._timers.values())
            self._timers.clear()
        for timer in timers:
            timer.cancel()
        if self._fuse is not None:
            self._fuse.stop()
            self._fuse = None
        close = getattr(self.client, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()

    def release_all(self) -> None:
        """Drop every hold of this store (it is no longer served)."""
        with self._lock:
            keys = set(self._counts) | self._held
            self._counts.clear()
            self._held.clear()
        for key in sorted(keys):
            self.manager.release_holder(self._holder(key))

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    # -- StoreBackend --

    def find_layer(self, ref: str, name: str) -> tuple[StoreLayer, bool] | None:
        hit = self.catalog.layer(ref, name)
        if hit is not None:
            self._premount_image(ref)
        return hit

    def _premount_image(self, ref: str) -> None:
        """Mount every lazy layer of the image in the background at its first lookup: podman looks
        its layers up one at a time (under one lock), each lookup's stat of ``diff`` mounts the layer,
        so their TOC reads overlap instead of adding up. A mount podman does not use is released
        after the grace period, as any."""
        now = time.monotonic()
        with self._lock:
            if now - self._premounted.get(ref, -PREMOUNT_EVERY) < PREMOUNT_EVERY:
                return
            self._premounted[ref] = now
            for old in [r for r, t in self._premounted.items() if now - t >= PREMOUNT_EVERY]:
                del self._premounted[old]
        layers = self.catalog.cached(ref)
        if len(layers) < 2:
            return
        name = encode_ref(ref)
        pool = ThreadPoolExecutor(min(len(layers), MOUNT_PARALLELISM), thread_name_prefix="store-premount")
        for layer in layers:
            pool.submit(self._premount, f"{name}/{layer.info.digest}", layer)
        pool.shutdown(wait=False)

    def _premount(self, key: str, layer: StoreLayer) -> None:
        try:
            self.diff_target(key, layer)
        except Exception as err:        # the lookup's own stat of diff reports it
            log.debug("store: early mount of %s failed: %s", key, err)

    def _holder(self, key: str) -> str:
        return f"store:{self.spec.mountpoint}:{key}"

    def diff_target(self, key: str, layer: StoreLayer) -> bytes:
        digest = layer.info.digest
        holder = self._holder(key)
        path = self.manager.paths.mountpoint(digest)
        current = next((m for m in self.manager.list_mounts() if m.digest == digest), None)
        with self._lock:
            held = key in self._held
        if held and current is not None and holder in current.holders:
            return os.fsencode(path)
        self.manager.mount_registry_layer(str(layer.ref), digest, layer.annotations, holder=holder,
                                          insecure=self.spec.insecure, client=self.client)
        with self._lock:
            self._held.add(key)
            idle = self._counts.get(key, 0) <= 0
        if idle:
            self._schedule(key)
        return os.fsencode(path)

    def use(self, key: str, layer: StoreLayer) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            count = self._counts[key]
        self._changed()
        log.debug("store: %s used (%d)", key, count)

    def release(self, key: str) -> None:
        with self._lock:
            count = self._counts[key] = max(0, self._counts.get(key, 0) - 1)
        self._changed()
        log.debug("store: %s released (%d)", key, count)
        if count == 0:
            self._schedule(key)

    def read_blob(self, layer: StoreLayer, offset: int, size: int) -> bytes:
        digest = layer.info.digest
        with self._lock:
            window = self._windows.get(digest)
        if window is None or not window[0] <= offset < offset + size <= window[0] + len(window[1]):
            length = min(max(size, BLOB_WINDOW), layer.info.size - offset)
            source = self.client.blob_source(layer.ref, digest, layer.info.size)
            data = self.manager.fs.read_blob(source, digest, offset, length)
            window = (offset, data)
            with self._lock:
                self._windows[digest] = window
                while len(self._windows) > 8:
                    self._windows.pop(next(iter(self._windows)))
        start = offset - window[0]
        return window[1][start : start + size]

    # -- release after the grace period --

    def _schedule(self, key: str) -> None:
        timer = threading.Timer(self.spec.grace, self._expire, (key,))
        timer.daemon = True
        timer.name = "store-release"
        with self._lock:
            old = self._timers.pop(key, None)
            self._timers[key] = timer
        if old is not None:
            old.cancel()
        timer.start()

    def _expire(self, key: str) -> None:
        with self._lock:
            if self._timers.get(key) is not threading.current_thread():
                return
            del self._timers[key]
            if self._counts.get(key, 0) > 0:
                return
            self._held.discard(key)
            self._counts.pop(key, None)
        self._changed()
        if self.manager.release_holder(self._holder(key)):
            log.info("store: released layer %s", key)


class Stores:
    """The stores one mount server serves, by mountpoint; persisted in ``run/stores.json``."""

    def __init__(self, manager: LayerManager) -> None:
        self.manager = manager
        self.file = manager.paths.stores
        self._lock = threading.Lock()           # guards _stores; never held while a store starts or stops
        self._file_lock = threading.Lock()
        self._closed = False                    # the server stops: the file stays as it is
        self._stores: dict[str, LayerStore] = {}

    def serve(self, spec: StoreSpec, counts: dict[str, int] | None = None) -> dict[str, Any]:
        """Serve a store at ``spec.mountpoint`` (again, with new settings, if served already)."""
        with self._lock:
            old = self._stores.pop(spec.mountpoint, None)
        if old is not None:
            old.stop()
            counts = old.counts() if counts is None else counts
        store = LayerStore(self.manager, spec, counts=counts, changed=self._save)
        store.start()
        with self._lock:
            self._stores[spec.mountpoint] = store
        self._save()
        return self._describe(store)

    def request(self, op: str, args: dict[str, Any]) -> Any:
        """A client's request (``MountClient.store_request``): ``serve_store``, ``stop_store`` or
        ``list_stores``; its result."""
        if op == "serve_store":
            return self.serve(StoreSpec.from_json(args))
        if op == "stop_store":
            point = args.get("mountpoint")
            if not isinstance(point, str) or not point:
                raise MountError("request needs a non-empty string 'mountpoint'")
            self.stop(point)
            return None
        if op == "list_stores":
            return self.list()
        raise MountError(f"not a store request: {op!r}")

    def ensure(self, request: Any) -> dict[str, Any]:
        """Serve the store ``request`` (wire form) unless it is served already with these settings."""
        spec = StoreSpec.from_json(request)
        with self._lock:
            current = self._stores.get(spec.mountpoint)
        if current is not None and current.spec == spec:
            return self._describe(current)
        return self.serve(spec)

    def stop(self, mountpoint: str) -> None:
        point = os.path.normpath(mountpoint)
        with self._lock:
            store = self._stores.pop(point, None)
        if store is None:
            raise MountError(f"no store is served at {point}")
        store.stop()
        store.release_all()
        self._save()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._describe(s) for s in self._stores.values()]

    def restore(self) -> None:
        """Serve again the stores the file lists (a store that cannot be served is logged)."""
        try:
            items = json.loads(self.file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            log.error("ignoring unreadable %s: %s", self.file, err)
            return
        for item in items if isinstance(items, list) else []:
            try:
                counts = item.get("counts") if isinstance(item, dict) else None
                self.serve(StoreSpec.from_json(item), _counts(counts))
            except (MountError, OSError) as err:
                log.error("could not serve the store %r again: %s", item, err)

    def close(self) -> None:
        """Unmount every store (the file keeps them and their counts for the next server)."""
        self._save()
        with self._lock:
            self._closed = True
            stores = list(self._stores.values())
            self._stores.clear()
        for store in stores:
            try:
                store.stop()
            except Exception as err:     # the others must still be unmounted
                log.error("stopping the store at %s failed: %s", store.spec.mountpoint, err)

    def _describe(self, store: LayerStore) -> dict[str, Any]:
        return {**asdict(store.spec), "counts": store.counts()}

    def _save(self) -> None:
        with self._lock:
            if self._closed:
                return
            data = [self._describe(s) for s in self._stores.values()]
        with self._file_lock:
            tmp = self.file.with_suffix(".tmp")
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(data, indent=1))
                os.replace(tmp, self.file)
            except OSError as err:      # a full disk: the counts stay right in memory (next save)
                tmp.unlink(missing_ok=True)
                log.warning("could not save the layer stores to %s: %s", self.file, err.strerror or err)


def _counts(data: Any) -> dict[str, int]:
    """Counts as stored (junk ignored)."""
    if not isinstance(data, dict):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}


__all__ = ["DEFAULT_GRACE", "LayerStore", "StoreSpec", "Stores", "encode_ref"]
