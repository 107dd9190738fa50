"""What an image reference's layers are: its manifest (this machine's platform) and config, from its
registry, kept a short while so that the lookups of one pull (one per layer, serialised by podman)
cost one manifest and one config request."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lazypull.errors import ImageError, LazypullError, MountError
from lazypull.format import FormatError
from lazypull.format.layerkind import LayerSpec, is_lazy
from lazypull.image.partial import check_declared_diff_ids
from lazypull.store.names import COMPRESSION_GZIP, COMPRESSION_ZSTD, LayerInfo

if TYPE_CHECKING:
    from lazypull.registry import Reference, RegistryClient

log = logging.getLogger(__name__)

CACHE_SECONDS = 60.0        # a tag may move: its manifest is asked again after this
MAX_IMAGES = 256            # images remembered at once (least recently used go first)
MAX_CONFIG = 4 << 20        # bytes of an image config read


@dataclass(frozen=True)
class StoreLayer:
    """One lazily mountable layer of an image, as the store presents it."""

    ref: Reference                     # the image's
    annotations: dict[str, str]
    info: LayerInfo


@dataclass(frozen=True)
class ImageLayers:
    """The lazily mountable layers of one image reference, by blob digest and by TOC digest."""

    by_digest: dict[str, StoreLayer]
    by_toc: dict[str, StoreLayer]
    fetched: float

    def find(self, name: str) -> tuple[StoreLayer, bool] | None:
        """The layer a directory name means and whether it was named by its TOC digest."""
        if name in self.by_digest:
            return self.by_digest[name], False
        if name in self.by_toc:
            return self.by_toc[name], True
        return None


def image_layers(client: RegistryClient, ref: Reference) -> ImageLayers:
    """Read the manifest and config of ``ref`` and describe its lazy layers."""
    from lazypull.registry import parse_manifest

    raw, media_type, _ = client.resolve_image(ref)
    manifest = parse_manifest(raw, media_type)
    if not any(is_lazy(desc.annotations) for desc in manifest.layers):
        return ImageLayers({}, {}, time.monotonic())       # podman downloads them all: no config needed
    config_raw = client.fetch_blob(ref, manifest.config.digest, max_size=MAX_CONFIG)
    try:
        config = json.loads(config_raw)
        diff_ids = config["rootfs"]["diff_ids"]
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
            raise TypeError("rootfs.diff_ids is not a list of strings")
    except (ValueError, KeyError, TypeError) as err:
        raise MountError(f"image {ref}: config {manifest.config.digest} has no usable "
                         f"rootfs.diff_ids: {err}") from err
    if len(diff_ids) != len(manifest.layers):
        raise MountError(f"image {ref}: {len(manifest.layers)} layers but {len(diff_ids)} diff_ids")
    by_digest: dict[str, StoreLayer] = {}
    by_toc: dict[str, StoreLayer] = {}
    for desc, diff_id in zip(manifest.layers, diff_ids, strict=True):
        annotations = dict(desc.annotations or {})
        if not is_lazy(annotations):
            continue            # not here: podman downloads it
        try:
            spec = LayerSpec.from_descriptor(desc.digest, desc.size, desc.media_type, annotations)
        except FormatError as err:
            log.warning("store: not serving a layer of %s: %s", ref, err)
            continue
        try:
            check_declared_diff_ids([desc], [diff_id])
        except ImageError as err:
            # podman 4.3 trusts the store's diff-digest: an image contradicting itself is downloaded
            # (and its DiffID checked) by podman instead
            log.warning("store: not serving a layer of %s: %s", ref, err)
            continue
        # the TOC digest as newer containers/image names the layer: toc.digest, else manifest-checksum
        toc = spec.toc_digest or spec.manifest_checksum
        diff_size = spec.uncompressed_size if spec.uncompressed_size is not None else -1
        compression = COMPRESSION_ZSTD if spec.kind == "zstdchunked" else COMPRESSION_GZIP
        layer = StoreLayer(ref, annotations,
                           LayerInfo(desc.digest, int(desc.size), diff_id, diff_size, compression, toc))
        by_digest[desc.digest] = layer
        if toc:
            by_toc[toc] = layer
    return ImageLayers(by_digest, by_toc, time.monotonic())


class Catalog:
    """``image_layers`` per reference, cached ``CACHE_SECONDS``; concurrent asks share one fetch."""

    def __init__(self, client_for: Callable[[], RegistryClient]) -> None:
        self._client_for = client_for
        self._lock = threading.Lock()
        self._images: OrderedDict[str, ImageLayers] = OrderedDict()
        self._busy: dict[str, threading.Lock] = {}

    def cached(self, ref_text: str) -> list[StoreLayer]:
        """The lazy layers of an image already read (by blob digest, manifest order); [] if not read."""
        from lazypull.registry import parse_reference

        try:
            key = str(parse_reference(ref_text))
        except LazypullError:
            return []
        with self._lock:
            image = self._images.get(key)
        return list(image.by_digest.values()) if image is not None else []

    def layer(self, ref_text: str, name: str) -> tuple[StoreLayer, bool] | None:
        """The layer ``name`` (blob or TOC digest) of image ``ref_text``; None if it has no such lazy
        layer. A name missing from a cached manifest asks the registry again (the tag moved)."""
        from lazypull.registry import parse_reference

        try:
            ref = parse_reference(ref_text)
        except LazypullError as err:
            raise MountError(f"store: {err}") from err
        if ref.transport != "docker":
            raise MountError(f"store: {ref_text!r} is not a registry reference")
        key = str(ref)
        with self._lock:
            lock = self._busy.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                cached = self._images.get(key)
            found = None
            if cached is not None:
                found = cached.find(name)
                age = time.monotonic() - cached.fetched
                if (found is not None and age < CACHE_SECONDS) or (found is None and age < 1.0):
                    return found        # (not there, asked this very second)
            try:
                fresh = image_layers(self._client_for(), ref)
            except (LazypullError, OSError):
                if found is not None:   # the registry is away: what it said before still holds
                    return found
                raise
            with self._lock:
                self._images[key] = fresh
                self._images.move_to_end(key)
                while len(self._images) > MAX_IMAGES:
                    old, _ = self._images.popitem(last=False)
                    self._busy.pop(old, None)
            return fresh.find(name)
