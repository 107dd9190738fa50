"""The lower directories of an image's rootfs: FUSE mountpoints for lazy layers, extracted dirs for others.

Non-lazy layers (no TOC annotations, or every layer with ``--snapshotter=overlayfs``) must be in the
content store; one that is not (an image pulled lazily, run with a full snapshotter) is downloaded
from the image's source registry first. Each is extracted once into ``snapshots/<hex>/fs`` and
shared by every container using it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

from lazypull.errors import ContainerError
from lazypull.format.layerkind import is_lazy
from lazypull.layerdir import layer_fs
from lazypull.runtime.overlay import is_mountpoint

if TYPE_CHECKING:
    from lazypull.image import ResolvedImage, Store
    from lazypull.registry import Descriptor, RegistryClient
    from lazypull.runtime.extract import StreamingExtraction

# The extractor (zstandard, isal, tarfile) is imported only when a layer must be extracted: a lazy
# `create` whose layers are all FUSE mounts needs none of it.

log = logging.getLogger(__name__)


class MountedLayer(Protocol):
    """What the mount server says about one layer (``lazypull.snapshot.LayerMount``)."""

    @property
    def digest(self) -> str: ...
    @property
    def lazy(self) -> bool: ...
    @property
    def path(self) -> Path | None: ...


def snapshot_dir(root: Path, digest: str) -> Path:
    """``<root>/snapshots/<hex>/fs``, the extracted (or mounted) layer; the digest is checked first."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise ContainerError(f"not a sha256 layer digest: {digest!r}")
    return layer_fs(root, hexpart)


def _ready(path: Path) -> bool:
    """A layer dir is usable when mounted, or extracted (non-empty; the rename made it complete)."""
    if not path.is_dir():
        return False
    if is_mountpoint(path) or _has_entries(path):
        return True
    # An empty leftover mountpoint or an empty layer: (re-)extract, it is cheap. Someone else may
    # have just renamed a finished extraction into place: then it is ready after all.
    with contextlib.suppress(OSError):
        path.rmdir()
    return path.is_dir() and _has_entries(path)


def _has_entries(path: Path) -> bool:
    """The directory is not empty (its scandir iterator closed at once, not left to the collector)."""
    with os.scandir(path) as entries:
        return any(True for _ in entries)


def _download(store: Store, image: ResolvedImage, desc: Descriptor, client: RegistryClient) -> None:
    if image.source is None:
        raise ContainerError(f"layer {desc.digest} of {image.name} is not in the store and the image has "
                             "no source registry to fetch it from")
    log.info("fetching layer %s of %s", desc.digest, image.name)
    with store.ingest(desc.digest, desc.size) as writer:
        client.get_blob(image.source, desc.digest, cast(BinaryIO, writer), size=desc.size)
        writer.commit()


def _has_estargz_metadata(desc: Descriptor) -> bool:
    """A lazy layer (eStargz or zstd:chunked) extracted in full leaves out the TOC and landmark entries,
    as its lazy view does: the same tree either way."""
    return is_lazy(desc.annotations)


def streaming_unpacker(root: Path) -> Callable[[Descriptor], StreamingExtraction | None]:
    """For ``pull_image(unpack=...)``: each layer downloaded is extracted into ``snapshots/<hex>/fs``
    while it arrives (renamed into place once its digest and DiffID matched); None if already there."""
    def unpack(desc: Descriptor) -> StreamingExtraction | None:
        dest = snapshot_dir(root, desc.digest)
        if _ready(dest):
            return None
        from lazypull.runtime.extract import StreamingExtraction

        return StreamingExtraction(dest, label=f"layer {desc.digest}",
                                   skip_estargz_metadata=_has_estargz_metadata(desc))
    return unpack


def lower_dirs(root: Path, store: Store, image: ResolvedImage, mounts: Sequence[MountedLayer] | None,
               client_factory: Callable[[], RegistryClient] | None = None, *,
               progress: Callable[[str], None] | None = None) -> list[Path]:
    """The overlay lower dirs of ``image``, top layer first.

    ``mounts`` (bottom first, one per layer) come from the mount server; None means nothing is
    lazy (``--snapshotter=overlayfs``). ``client_factory`` gives a registry client for layers that
    must be downloaded first.
    """
    layers = list(image.layers)
    if mounts is not None and len(mounts) != len(layers):
        raise ContainerError(f"{image.name}: the mount server returned {len(mounts)} layers, "
                             f"the image has {len(layers)}")
    result: list[Path] = []
    jobs: list[ExtractJob] = []
    client: RegistryClient | None = None
    try:
        for index, desc in enumerate(layers):
            mount = mounts[index] if mounts is not None else None
            if mount is not None and mount.digest != desc.digest:
                raise ContainerError(f"{image.name}: layer {index} is {desc.digest} but the mount server "
                                     f"mounted {mount.digest}")
            if mount is not None and mount.lazy:
                if mount.path is None or not mount.path.is_dir():
                    raise ContainerError(f"lazy layer {desc.digest} has no mounted directory")
                result.append(mount.path)
                continue
            dest = snapshot_dir(root, desc.digest)
            result.append(dest)
            if _ready(dest):
                continue
            if len(image.diff_ids) != len(layers):     # each extraction checks its layer's DiffID
                raise ContainerError(f"{image.name}: {len(layers)} layers but its config lists "
                                     f"{len(image.diff_ids)} diff_ids")
            if store.blob_path(desc.digest) is None:
                if client is None:
                    if client_factory is None:
                        raise ContainerError(f"layer {desc.digest} of {image.name} is not in the store")
                    client = client_factory()
                if progress:
                    progress(f"fetching layer {desc.digest[:19]} ({desc.size} bytes)")
                _download(store, image, desc, client)
            blob = store.blob_path(desc.digest)
            assert blob is not None
            from lazypull.runtime.extract import ExtractJob

            jobs.append(ExtractJob(blob, dest, f"layer {desc.digest}", _has_estargz_metadata(desc),
                                   image.diff_ids[index]))
    finally:
        if client is not None:
            client.close()
    if jobs:
        if progress:
            progress(f"extracting {len(jobs)} layer(s)")
        from lazypull.runtime.extract import extract_layers

        extract_layers(jobs)
    result.reverse()
    # overlayfs refuses a lower dir given twice (ELOOP). An image may repeat a layer; keeping only its
    # topmost place gives the same tree, since that copy already shadows everything the lower one could.
    return list(dict.fromkeys(result))
