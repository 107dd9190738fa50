"""What ``lazypull images`` shows about a stored image (nerdctl's columns), computed from the store.

SIZE counts the uncompressed size of the layers unpacked locally (``snapshots/<hex>/fs`` exists:
extracted, or mounted lazily); BLOB SIZE counts the blobs of the image: index (if any), manifest,
config and compressed layers, as listed (whether or not they are local). LOCAL counts what the layers
hold on this machine: an extracted layer its uncompressed size, a lazy one the verified chunks in its
chunk cache namespace (what it has fetched so far; what nerdctl's SIZE shows for a stargz image). Files
a lazy layer assembled from those chunks (``snapshots/<hex>/files``) are copies and not counted again.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lazypull.image import mediatypes as mt
from lazypull.image.errors import ImageError
from lazypull.image.partial import ManifestIndex, parse_config, parse_manifest
from lazypull.image.platform import config_platform, host_platform, platform_label
from lazypull.image.rootdir import layer_fs
from lazypull.image.store import ImageRecord, Store
from lazypull.registry import Descriptor, Reference, parse_reference
from lazypull.treeusage import tree_usage


@dataclass(frozen=True)
class ImageSummary:
    """One row of ``lazypull images``."""

    name: str
    repository: str
    tag: str
    digest: str
    created: dt.datetime
    platform: str
    size: int
    blob_size: int
    local_size: int


def split_name(name: str) -> tuple[str, str]:
    """(REPOSITORY, TAG) as nerdctl shows them (Docker Hub names shortened, ``<none>`` without tag)."""
    ref = parse_reference(name, default_tag=None)
    repo = Reference(ref.registry, ref.repository).familiar()
    return repo, ref.tag or "<none>"


def _manifest_for(store: Store, target: Descriptor) -> tuple[Descriptor | None, int]:
    """The manifest to describe (this machine's platform if local, else the first local one)."""
    if mt.is_manifest(target.media_type):
        return target, 0
    index = ManifestIndex(store.provider, target)
    entries = [d for d in index.manifests() if mt.is_manifest(d.media_type) and store.has_blob(d.digest)]
    host = host_platform()
    for d in entries:
        if d.platform is not None and host.matches(d.platform):
            return d, target.size
    return (entries[0] if entries else None), target.size


def layer_uncompressed_size(store: Store, desc: Descriptor, unpacked: Path | None = None) -> int:
    """A layer's uncompressed size: the eStargz annotation, else what the store learnt on pull, else
    the sizes of the files in its unpacked directory."""
    value = desc.annotations.get(mt.UNCOMPRESSED_SIZE)
    if value is not None and value.isdigit():
        return int(value)
    info = store.uncompressed_info(desc.digest)
    if info:
        return info[1]
    return tree_usage(unpacked).apparent if unpacked is not None else 0


LayerState = Literal["mounted", "extracted", "absent"]


def layer_state(path: Path) -> LayerState:
    """Whether a layer is mounted lazily at ``path``, extracted there, or neither. A lazy layer whose
    mount server died answers ENOTCONN (the next server mounts it again): it counts as mounted, and never
    fails the listing."""
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return "absent"
        parent = os.lstat(path.parent)
    except OSError as err:
        return "mounted" if err.errno in (errno.ENOTCONN, errno.ECONNABORTED) else "absent"
    return "mounted" if st.st_dev != parent.st_dev else "extracted"


def summarize(store: Store, record: ImageRecord,
              cached: Callable[[str], int] | None = None) -> ImageSummary:
    """The row for one named image. ``cached``: bytes a layer (by digest) holds in the chunk cache (the
    CLI's, which knows where the cache is; None: no cache)."""
    repository, tag = split_name(record.name)
    platform = "unknown"
    size = 0
    blob_size = 0
    local_size = 0
    try:
        manifest_desc, index_size = _manifest_for(store, record.target)
        blob_size += index_size
        if manifest_desc is not None and store.has_blob(manifest_desc.digest):
            _, config_desc, layers = parse_manifest(store.read_blob(manifest_desc.digest), manifest_desc)
            blob_size += manifest_desc.size + config_desc.size + sum(d.size for d in layers)
            if store.has_blob(config_desc.digest):
                config = parse_config(store.read_blob(config_desc.digest), config_desc)
                platform = platform_label(config_platform(config))
            for d in layers:
                unpacked = layer_fs(store.root, d.digest.removeprefix("sha256:"))
                state = layer_state(unpacked)
                full = layer_uncompressed_size(store, d, unpacked) if state != "absent" else 0
                size += full
                if state == "extracted":
                    local_size += full
                elif cached is not None:
                    local_size += cached(d.digest)
    except ImageError:
        pass  # a damaged entry still gets a row; `image inspect` shows the error
    return ImageSummary(record.name, repository, tag, record.target.digest, record.created, platform, size,
                        blob_size, local_size)
