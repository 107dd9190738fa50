"""A containerd snapshotter over overlayfs whose image layers can be remote: lazily mounted by the
mount server instead of downloaded and unpacked.

Semantics follow containerd's overlay snapshotter and stargz-snapshotter's remote-snapshot protocol:
``Prepare`` with the label ``containerd.io/snapshot.ref`` (the chain id the layer would be committed as)
and the layer's image reference and digest mounts that layer lazily, commits it under the target name and
answers *already exists*, so containerd skips downloading and applying it. Reference and digest come from
the ``containerd.io/snapshot/remote/stargz.{reference,digest}`` labels that ``ctr-remote rpull``'s handler
attaches, or from the ``containerd.io/snapshot/cri.{image-ref,layer-digest}`` labels of containerd's CRI
plugin (with ``disable_snapshot_annotations = false``, which also passes the layer's
``containerd.io/snapshot/stargz/toc.digest`` annotation). With a :class:`ImageClients` (the CRI
keychain, ``lazypull.snapshot.cri.keychain.Keychain``), the registry credentials a CRI ``PullImage``
carried for that image serve its lazy reads. Everything else is an ordinary overlay snapshotter: active
snapshots get an upper and work dir, committed ones become lower dirs.

State (snapshot names, kinds, parents, labels) is kept in ``<root>/containerd/snapshots.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from lazypull.errors import LazypullError
from lazypull.registry import RegistryClient
from lazypull.removetree import remove_tree
from lazypull.snapshot.manager import LayerManager
from lazypull.snapshot.proxy.wire import KIND_ACTIVE, KIND_COMMITTED, KIND_VIEW, Info, LabelUpdate, Mount
from lazypull.treeusage import tree_usage

TARGET_LABEL = "containerd.io/snapshot.ref"
REMOTE_LABEL = "containerd.io/snapshot/remote"
REF_LABEL = "containerd.io/snapshot/remote/stargz.reference"
DIGEST_LABEL = "containerd.io/snapshot/remote/stargz.digest"
CRI_REF_LABEL = "containerd.io/snapshot/cri.image-ref"        # containerd's CRI plugin
CRI_DIGEST_LABEL = "containerd.io/snapshot/cri.layer-digest"
INSECURE_LABEL = "containerd.io/snapshot/remote/lazypull.insecure"
HOLDER_PREFIX = "containerd:"


class ImageClients(Protocol):
    """Registry clients with an image's own credentials (the CRI keychain): ``None`` when none are kept
    for that image (the server's client then reads its layers)."""

    def client(self, ref: str, insecure: bool) -> RegistryClient | None: ...


class SnapshotError(LazypullError):
    """A snapshot request that cannot be done; ``code`` is the gRPC status name to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Snapshot:
    """One snapshot as containerd sees it."""

    id: int
    name: str
    kind: int
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    lower: str = ""       # remote snapshots: the FUSE mountpoint serving the layer


class Snapshotter:
    """Thread-safe; one instance per mount server."""

    def __init__(self, root: Path, manager: LayerManager, *, insecure: bool = False,
                 keychain: ImageClients | None = None) -> None:
        self.dir = root / "containerd"
        self.keychain = keychain
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manager = manager
        self.insecure = insecure
        self._db = self.dir / "snapshots.json"
        self._lock = threading.RLock()
        self._snaps: dict[str, Snapshot] = {}
        self._next_id = 1
        self._load()

    # -- persistence --

    def _load(self) -> None:
        try:
            data = json.loads(self._db.read_text())
        except FileNotFoundError:
            return
        for item in data.get("snapshots", []):
            snap = Snapshot(**item)
            self._snaps[snap.name] = snap
        self._next_id = int(data.get("next_id", len(self._snaps) + 1))

    def _save(self) -> None:
        data = {"next_id": self._next_id, "snapshots": [asdict(s) for s in self._snaps.values()]}
        tmp = self._db.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._db)

    # -- helpers --

    def _get(self, key: str) -> Snapshot:
        snap = self._snaps.get(key)
        if snap is None:
            raise SnapshotError("NOT_FOUND", f"snapshot {key} does not exist")
        return snap

    def _fs(self, snap: Snapshot) -> Path:
        return Path(snap.lower) if snap.lower else self.dir / "snapshots" / str(snap.id) / "fs"

    def _lowers(self, parent: str) -> list[str]:
        """Lower dirs, top first, of the chain starting at ``parent``."""
        out: list[str] = []
        seen: set[str] = set()
        while parent:
            if parent in seen:
                raise SnapshotError("FAILED_PRECONDITION", f"snapshot parent loop at {parent}")
            seen.add(parent)
            snap = self._get(parent)
            out.append(str(self._fs(snap)))
            parent = snap.parent
        return out

    def _mounts(self, snap: Snapshot) -> list[Mount]:
        lowers = self._lowers(snap.parent)
        if snap.kind == KIND_VIEW:
            if not lowers:
                return [{"type": "bind", "source": str(self._fs(snap)), "options": ["ro", "rbind"]}]
            if len(lowers) == 1:
                return [{"type": "bind", "source": lowers[0], "options": ["ro", "rbind"]}]
            return [{"type": "overlay", "source": "overlay", "options": ["lowerdir=" + ":".join(lowers)]}]
        fs_dir = self._fs(snap)
        if not lowers:
            return [{"type": "bind", "source": str(fs_dir), "options": ["rw", "rbind"]}]
        work = fs_dir.parent / "work"
        return [{"type": "overlay", "source": "overlay",
                 "options": [f"workdir={work}", f"upperdir={fs_dir}", "lowerdir=" + ":".join(lowers)]}]

    def _create(self, kind: int, key: str, parent: str, labels: dict[str, str]) -> Snapshot:
        if not key:
            raise SnapshotError("INVALID_ARGUMENT", "snapshot key must not be empty")
        if key in self._snaps:
            raise SnapshotError("ALREADY_EXISTS", f"snapshot {key} already exists")
        if parent and self._get(parent).kind != KIND_COMMITTED:
            raise SnapshotError("FAILED_PRECONDITION", f"parent {parent} is not committed")
        snap = Snapshot(self._next_id, key, kind, parent, dict(labels))
        self._next_id += 1
        base = self.dir / "snapshots" / str(snap.id)
        (base / "fs").mkdir(parents=True, exist_ok=True)
        if kind == KIND_ACTIVE:
            (base / "work").mkdir(exist_ok=True)
        self._snaps[key] = snap
        self._save()
        return snap

    # -- the Snapshots API --

    def prepare(self, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        target = labels.get(TARGET_LABEL)
        remote = _remote_layer(labels)
        if target and remote is not None:
            self._try_remote(target, parent, labels, *remote)     # raises ALREADY_EXISTS on success
        with self._lock:
            mounts = self._mounts(self._create(KIND_ACTIVE, key, parent, labels))
        self._wait_prefetch(parent)
        return mounts

    def _wait_prefetch(self, parent: str) -> None:
        """A container's rootfs is being set up: let the remote layers below finish their prefetch first
        (up to ``prefetch_timeout``), as stargz-snapshotter does."""
        with self._lock:
            digests = []
            while parent and parent in self._snaps:
                snap = self._snaps[parent]
                remote = _remote_layer(snap.labels)
                if snap.lower and remote is not None:
                    digests.append(remote[1])
                parent = snap.parent
        if digests:
            self.manager.wait_prefetch(digests, self.manager.config.prefetch_timeout)

    def _try_remote(self, target: str, parent: str, labels: dict[str, str], ref: str, digest: str) -> None:
        with self._lock:
            if target in self._snaps:
                raise SnapshotError("ALREADY_EXISTS", f"target snapshot {target} already exists")
        annotations = {k: v for k, v in labels.items() if k.startswith("containerd.io/snapshot/")
                       or k.startswith("io.containers.") or k.startswith("io.github.containers.")}
        insecure = self.insecure or labels.get(INSECURE_LABEL) == "true"
        client = self.keychain.client(ref, insecure) if self.keychain is not None else None
        try:
            path = self.manager.mount_registry_layer(ref, digest, annotations, holder=HOLDER_PREFIX + target,
                                                     insecure=insecure, client=client)
        except LazypullError:
            return      # not lazily mountable: containerd downloads and applies it as usual
        with self._lock:
            if target in self._snaps:
                raise SnapshotError("ALREADY_EXISTS", f"target snapshot {target} already exists")
            snap = Snapshot(self._next_id, target, KIND_COMMITTED, parent,
                            dict(labels) | {REMOTE_LABEL: "remote snapshot"}, lower=str(path))
            self._next_id += 1
            self._snaps[target] = snap
            self._save()
        raise SnapshotError("ALREADY_EXISTS", f"target snapshot {target} already exists (remote)")

    def view(self, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        with self._lock:
            return self._mounts(self._create(KIND_VIEW, key, parent, labels))

    def mounts(self, key: str) -> list[Mount]:
        with self._lock:
            snap = self._get(key)
            if snap.kind == KIND_COMMITTED:
                raise SnapshotError("FAILED_PRECONDITION", f"snapshot {key} is committed: no mounts")
            return self._mounts(snap)

    def commit(self, name: str, key: str, labels: dict[str, str]) -> None:
        with self._lock:
            snap = self._get(key)
            if snap.kind != KIND_ACTIVE:
                raise SnapshotError("FAILED_PRECONDITION", f"snapshot {key} is not active")
            if name in self._snaps:
                raise SnapshotError("ALREADY_EXISTS", f"snapshot {name} already exists")
            del self._snaps[key]
            snap.name, snap.kind = name, KIND_COMMITTED
            snap.labels = dict(labels) if labels else snap.labels
            snap.updated = time.time()
            shutil.rmtree(self.dir / "snapshots" / str(snap.id) / "work", ignore_errors=True)
            self._snaps[name] = snap
            self._save()

    def remove(self, key: str) -> None:
        with self._lock:
            snap = self._get(key)
            if any(s.parent == key for s in self._snaps.values()):
                raise SnapshotError("FAILED_PRECONDITION", f"snapshot {key} has children")
            del self._snaps[key]
            self._save()
        with contextlib.suppress(OSError):      # any depth: a container can write a very deep tree
            remove_tree(self.dir / "snapshots" / str(snap.id))
        if snap.lower:
            self.manager.release_holder(HOLDER_PREFIX + key)

    def stat(self, key: str) -> Info:
        with self._lock:
            return self._info(self._get(key))

    def update(self, info: LabelUpdate, paths: list[str]) -> Info:
        with self._lock:
            snap = self._get(info["name"])
            if not paths:
                snap.labels = dict(info["labels"])
            for path in paths:
                if path == "labels":
                    snap.labels = dict(info["labels"])
                elif path.startswith("labels."):
                    key = path[len("labels."):]
                    if key in info["labels"]:
                        snap.labels[key] = info["labels"][key]
                    else:
                        snap.labels.pop(key, None)
                else:
                    raise SnapshotError("INVALID_ARGUMENT", f"cannot update field {path!r}")
            snap.updated = time.time()
            self._save()
            return self._info(snap)

    def list_snapshots(self) -> list[Info]:
        with self._lock:
            return [self._info(s) for s in self._snaps.values()]

    def usage(self, key: str) -> tuple[int, int]:
        with self._lock:
            snap = self._get(key)
        if snap.lower:
            return 0, 0
        usage = tree_usage(self._fs(snap))     # any depth: a container can write a very deep tree
        return usage.disk, usage.inodes

    @staticmethod
    def _info(snap: Snapshot) -> Info:
        return {"name": snap.name, "parent": snap.parent, "kind": snap.kind, "labels": snap.labels,
                "created": snap.created, "updated": snap.updated}


def _remote_layer(labels: dict[str, str]) -> tuple[str, str] | None:
    """(image reference, layer digest) a Prepare names for a remote snapshot: ctr-remote's labels, else
    the CRI plugin's; None when neither pair is complete (an ordinary Prepare)."""
    for ref_label, digest_label in ((REF_LABEL, DIGEST_LABEL), (CRI_REF_LABEL, CRI_DIGEST_LABEL)):
        ref, digest = labels.get(ref_label), labels.get(digest_label)
        if ref and digest:
            return ref, digest
    return None
