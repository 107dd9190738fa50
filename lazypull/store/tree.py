"""``StoreTree``: the additional layer store as a FUSE ``Tree`` (served by ``lazypull.fs.fuse``).

``/<base64 ref>/<digest>/`` holds ``diff`` (a symlink to the layer's own lazy mount, made on the first
walk through it: the mount server's layer mounts, chunk cache and prefetch serve podman as they serve
lazypull's containers), ``info`` and ``blob``. Names that are not a lazy layer of the image answer
ENOENT, which containers/storage takes as "download it yourself". Creating ``use`` and removing the
layer directory are refused with ENOENT after being counted (containers/storage's use / release
notifications). Nothing else is writable.
"""

from __future__ import annotations

import errno
import logging
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from lazypull.errors import LazypullError
from lazypull.format import FormatError
from lazypull.fs import ROOT_INODE, Attr, FuseError, StatFs
from lazypull.store.catalog import StoreLayer
from lazypull.store.names import BLOB, DIFF, INFO, USE, StoreNameError, decode_ref, parse_digest_name

log = logging.getLogger(__name__)

ROOT_MODE = stat.S_IFDIR | 0o700    # only root (podman, buildah) may look up, read blobs, use, release
DIR_MODE = stat.S_IFDIR | 0o755
FILE_MODE = stat.S_IFREG | 0o444
LINK_MODE = stat.S_IFLNK | 0o777
MAX_REFS = 4096             # reference directories remembered; the least recently looked up go first


class StoreBackend(Protocol):
    """What the tree asks of the service that runs it."""

    def find_layer(self, ref: str, name: str) -> tuple[StoreLayer, bool] | None:
        """The lazy layer ``name`` (blob or TOC digest) of image ``ref``, and whether named by TOC."""
        ...

    def diff_target(self, key: str, layer: StoreLayer) -> bytes:
        """Mount the layer if needed; the path its ``diff`` symlink points at."""
        ...

    def read_blob(self, layer: StoreLayer, offset: int, size: int) -> bytes:
        """Registry bytes of the layer blob."""
        ...

    def use(self, key: str, layer: StoreLayer) -> None:
        """containers/storage created ``<key>/use``."""
        ...

    def release(self, key: str) -> None:
        """containers/storage removed the layer directory ``key``."""
        ...


@dataclass
class _LayerDir:
    ino: int                  # the directory; diff, info, blob are ino+1, +2, +3
    key: str                  # "<ref dir name>/<digest name>"
    layer: StoreLayer
    info: bytes


@dataclass
class _RefDir:
    ino: int
    name: bytes
    ref: str
    layers: dict[bytes, _LayerDir] = field(default_factory=dict)


class StoreTree:
    """The store's directory tree; thread-safe. Lookups that need the registry run in FUSE workers."""

    def __init__(self, backend: StoreBackend) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._next = 2
        self._refs: OrderedDict[bytes, _RefDir] = OrderedDict()
        self._by_ino: dict[int, _RefDir | _LayerDir] = {}
        self._mtime_ns = time.time_ns()

    # -- inodes --

    def _alloc(self, count: int) -> int:
        ino = self._next
        self._next += count
        return ino

    def _dir_attr(self, ino: int) -> Attr:
        return Attr(ino, ROOT_MODE if ino == ROOT_INODE else DIR_MODE, nlink=2, mtime_ns=self._mtime_ns)

    def _child_attr(self, layer: _LayerDir, name: bytes) -> Attr | None:
        if name == DIFF:
            return Attr(layer.ino + 1, LINK_MODE, size=0, mtime_ns=self._mtime_ns)
        if name == INFO:
            return Attr(layer.ino + 2, FILE_MODE, size=len(layer.info), mtime_ns=self._mtime_ns)
        if name == BLOB:
            return Attr(layer.ino + 3, FILE_MODE, size=layer.layer.info.size, mtime_ns=self._mtime_ns)
        return None             # use, diff1, diff2 ...: not here

    def _node(self, ino: int) -> tuple[_RefDir | _LayerDir, int]:
        """The directory an inode is, or belongs to (layer files), and the offset from it."""
        with self._lock:
            node = self._by_ino.get(ino)
            if node is not None:
                return node, 0
            for delta in (1, 2, 3):
                owner = self._by_ino.get(ino - delta)
                if isinstance(owner, _LayerDir):
                    return owner, delta
        raise FuseError(errno.ENOENT, f"unknown inode {ino}")

    # -- Tree --

    def lookup(self, parent: int, name: bytes) -> Attr | None:
        if parent == ROOT_INODE:
            return self._lookup_ref(name)
        node, delta = self._node(parent)
        if delta:
            raise FuseError(errno.ENOTDIR)
        if isinstance(node, _RefDir):
            return self._lookup_layer(node, name)
        return self._child_attr(node, name)

    def _lookup_ref(self, name: bytes) -> Attr | None:
        with self._lock:
            found = self._refs.get(name)
            if found is not None:
                self._refs.move_to_end(name)
        if found is not None:
            return self._dir_attr(found.ino)
        try:
            ref = decode_ref(name)
        except StoreNameError as err:
            log.debug("store: %s", err)
            return None
        with self._lock:
            found = self._refs.get(name)
            if found is None:
                while len(self._refs) >= MAX_REFS:
                    # Forgotten: the kernel's inodes of it answer ENOENT, a new lookup (1 s later, or
                    # a path walked afresh) makes it again. Counts and mounts live in the service.
                    _, old = self._refs.popitem(last=False)
                    self._by_ino.pop(old.ino, None)
                    for layer in old.layers.values():
                        self._by_ino.pop(layer.ino, None)
                found = _RefDir(self._alloc(1), name, ref)
                self._refs[name] = found
                self._by_ino[found.ino] = found
        return self._dir_attr(found.ino)

    def _lookup_layer(self, ref_dir: _RefDir, name: bytes) -> Attr | None:
        with self._lock:
            found = ref_dir.layers.get(name)
        if found is not None:
            return self._dir_attr(found.ino)
        digest_name = parse_digest_name(name)
        if digest_name is None:
            return None
        try:
            hit = self.backend.find_layer(ref_dir.ref, digest_name)
        except (LazypullError, OSError) as err:
            # Any stat error means "not here" to containers/storage; EIO is not cached by the kernel.
            log.warning("store: cannot look up layer %s of %s: %s", digest_name, ref_dir.ref, err)
            raise FuseError(errno.EIO, str(err)) from err
        if hit is None:
            return None
        layer, by_toc = hit
        info = layer.info.to_json(by_toc=by_toc)
        with self._lock:
            found = ref_dir.layers.get(name)
            if found is None:
                found = _LayerDir(self._alloc(4), f"{ref_dir.name.decode()}/{digest_name}", layer, info)
                ref_dir.layers[name] = found
                self._by_ino[found.ino] = found
        return self._dir_attr(found.ino)

    def getattr(self, ino: int) -> Attr:
        if ino == ROOT_INODE:
            return self._dir_attr(ROOT_INODE)
        node, delta = self._node(ino)
        if not delta:
            return self._dir_attr(node.ino)
        assert isinstance(node, _LayerDir)
        attr = self._child_attr(node, (DIFF, INFO, BLOB)[delta - 1])
        assert attr is not None
        return attr

    def readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        if ino == ROOT_INODE:
            with self._lock:
                refs = sorted(self._refs.values(), key=lambda r: r.name)
            return [(r.name, self._dir_attr(r.ino)) for r in refs]
        node, delta = self._node(ino)
        if delta:
            raise FuseError(errno.ENOTDIR)
        if isinstance(node, _RefDir):
            with self._lock:
                layers = sorted(node.layers.items())
            return [(name, self._dir_attr(layer.ino)) for name, layer in layers]
        out = []
        for name in (BLOB, DIFF, INFO):
            attr = self._child_attr(node, name)
            assert attr is not None
            out.append((name, attr))
        return out

    def readlink(self, ino: int) -> bytes:
        node, delta = self._node(ino)
        if not isinstance(node, _LayerDir) or delta != 1:
            raise FuseError(errno.EINVAL)
        try:
            return self.backend.diff_target(node.key, node.layer)
        except (LazypullError, FormatError, OSError) as err:    # "not here": podman downloads it
            log.error("store: cannot mount layer %s: %s", node.key, err)
            raise FuseError(errno.EIO, str(err)) from err

    def getxattr(self, ino: int, name: bytes) -> bytes | None:
        self.getattr(ino)
        return None

    def listxattr(self, ino: int) -> list[bytes]:
        self.getattr(ino)
        return []

    def read(self, ino: int, offset: int, size: int) -> bytes:
        node, delta = self._node(ino)
        if not isinstance(node, _LayerDir) or delta not in (2, 3):
            raise FuseError(errno.EISDIR if not delta else errno.EINVAL)
        if delta == 2:
            return node.info[offset : offset + size]
        total = node.layer.info.size
        if offset >= total:
            return b""
        try:
            return self.backend.read_blob(node.layer, offset, min(size, total - offset))
        except (LazypullError, OSError) as err:
            log.error("store: reading the blob of %s failed: %s", node.key, err)
            raise FuseError(errno.EIO, str(err)) from err

    def backing_path(self, ino: int) -> str | None:
        return None

    def statfs(self) -> StatFs:
        return StatFs()

    # -- WriteObserver --

    def refuse_write(self, op: str, parent: int, name: bytes) -> int:
        """``use`` created in a layer directory: one more user. A layer directory removed: one fewer.
        Both answer ENOENT, which containers/storage takes as "noted" (anything else is refused)."""
        if parent == ROOT_INODE:
            return errno.EROFS
        node, delta = self._node(parent)
        if delta:
            return errno.ENOTDIR
        if op == "CREATE" and name == USE and isinstance(node, _LayerDir):
            self.backend.use(node.key, node.layer)
            return errno.ENOENT
        if op == "RMDIR" and isinstance(node, _RefDir):
            with self._lock:
                layer = node.layers.get(name)
            if layer is not None:
                self.backend.release(layer.key)
                return errno.ENOENT
            return errno.ENOENT if parse_digest_name(name) else errno.EROFS
        return errno.EROFS
