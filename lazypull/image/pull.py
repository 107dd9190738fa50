"""Pulling an image from a registry into the store (full, verified) or just its metadata (lazy).

Order of writes: config and layer blobs, then manifests, then the index, then the name in
images.json. If anything fails, blobs this pull added that no named image references are deleted,
so a failed pull leaves the store as it was.

With an ``unpack`` hook (the runtime's streaming extraction), each downloaded layer is also fed,
as it arrives, to an unpacker that decompresses, hashes (the DiffID) and extracts it into a
temporary directory: download, DiffID check and extraction overlap, as in containerd, instead of
three passes. The unpacker is committed (renamed into place) only after the blob digest and the
DiffID both matched, and aborted (deleted) otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Protocol, cast

from lazypull.errors import LazypullError, StoreError
from lazypull.image import mediatypes as mt
from lazypull.image.blobs import BlobWriter
from lazypull.image.digest import check_diff_id
from lazypull.image.errors import BlobNotFoundError, ImageError, PlatformNotFoundError
from lazypull.image.model import Image, ImageIndex, Root
from lazypull.image.partial import (
    MAX_CONFIG_SIZE,
    BlobProvider,
    check_declared_diff_ids,
    diff_id_of,
    kind_of,
    open_root,
    parse_config,
    parse_manifest,
)
from lazypull.image.platform import check_config_platform, host_platform, parse_platform
from lazypull.image.progress import NULL_PROGRESS, Progress
from lazypull.image.registry import RegistryProvider, remote_root
from lazypull.image.store import ImageRecord, Store
from lazypull.registry import Descriptor, Platform, Reference, RegistryClient, parse_reference

log = logging.getLogger(__name__)


class LayerUnpack(Protocol):
    """One layer being unpacked while it downloads (``lazypull.runtime.extract.StreamingExtraction``)."""

    def feed(self, data: bytes) -> None: ...
    def finish(self) -> tuple[str, int]: ...     # DiffID and size of the uncompressed stream fed
    def commit(self) -> object: ...             # make the extraction visible (after verification)
    def abort(self) -> None: ...                # delete it


# desc -> an unpacker for that layer, or None (already unpacked, or not wanted)
Unpacker = Callable[[Descriptor], LayerUnpack | None]


class _Tee:
    """The ingest writer, also feeding the unpacker the bytes written in order.

    If the download rewinds (a server ignoring Range on resume), the unpacker cannot follow: it is
    marked broken and the caller falls back to verifying and extracting from the stored blob.
    """

    def __init__(self, writer: BlobWriter, unpack: LayerUnpack) -> None:
        self.writer = writer
        self.unpack = unpack
        self.fed = 0
        self.broken = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if not self.broken and self.writer.tell() == self.fed:
            self.unpack.feed(bytes(data))
            self.fed += len(data)
        else:
            self.broken = True
        return self.writer.write(data)

    def tell(self) -> int:
        return self.writer.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.writer.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        return self.writer.truncate(size)

    def flush(self) -> None:
        self.writer.flush()

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True


class _Copier:
    """Copies one root (index or manifest) from a provider into the store, remembering new blobs."""

    def __init__(self, store: Store, provider: BlobProvider, *, platforms: Sequence[Platform] | None,
                 fetch_layers: bool, verify_diff_ids: bool, progress: Progress, workers: int,
                 unpack: Unpacker | None = None, strict_platform: bool = False) -> None:
        self.store = store
        self.strict_platform = strict_platform
        self.unpack = unpack
        self.provider = provider
        self.platforms = platforms
        self.fetch_layers = fetch_layers
        self.verify_diff_ids = verify_diff_ids
        self.progress = progress
        self.workers = workers
        self.added: list[str] = []

    def put_bytes(self, desc: Descriptor, data: bytes) -> None:
        if not self.store.has_blob(desc.digest):
            self.store.put_blob(data, desc.digest, desc.size)
            self.added.append(desc.digest)

    def copy_root(self, root: Root) -> None:
        if isinstance(root, ImageIndex) and mt.is_index(root.media_type()):
            self.copy_index(root)
        else:
            assert isinstance(root, Image)
            self.copy_image(root, top=True)

    def copy_index(self, index: ImageIndex, depth: int = 0) -> None:
        if depth > 4:
            raise ImageError(f"index {index.digest()}: indexes nested too deeply")
        entries = index.manifests()
        chosen = [d for d in entries if self._wanted(d)]
        if not chosen:
            wanted = ", ".join(str(p) for p in self.platforms or [])
            have = ", ".join(str(d.platform) for d in entries if d.platform) or "none"
            raise PlatformNotFoundError(f"index {index.digest()}: no manifest for platform {wanted} "
                                        f"(available: {have})")
        if self.platforms is None:
            # Every platform: keep the index complete (pushable), attestations included as opaque blobs.
            for desc in entries:
                if mt.is_attestation(desc.annotations) and mt.is_manifest(desc.media_type):
                    self.copy_opaque_manifest(desc)
        for desc in chosen:
            if mt.is_index(desc.media_type):
                self.copy_index(index.index(desc), depth + 1)
            elif mt.is_manifest(desc.media_type):
                self.copy_image(index.image(desc))
            else:
                log.info("skipping index entry %s of media type %s", desc.digest, desc.media_type)
        self.put_bytes(index.descriptor(), index.raw_manifest())

    def _wanted(self, desc: Descriptor) -> bool:
        if not (mt.is_manifest(desc.media_type) or mt.is_index(desc.media_type)):
            return False
        if mt.is_attestation(desc.annotations):
            return False
        if self.platforms is None or desc.platform is None:
            return True
        return any(p.matches(desc.platform) for p in self.platforms)

    def copy_image(self, image: Image, *, top: bool = False) -> None:
        """``top``: the reference named this manifest itself (no index chose it for its platform)."""
        raw_manifest = image.raw_manifest()
        config_desc = image.config_descriptor()
        if config_desc.media_type not in mt.CONFIG_TYPES:
            raise ImageError(f"manifest {image.digest()}: config media type {config_desc.media_type!r} "
                             "is not an image config")
        layers = image.layers()  # refuses unknown layer media types before any download
        raw_config = image.raw_config()
        config = parse_config(raw_config, config_desc)
        if top and self.strict_platform and self.platforms is not None:
            check_config_platform(config, self.platforms, image.digest())
        check_declared_diff_ids([layer.descriptor() for layer in layers],
                                (config.get("rootfs") or {}).get("diff_ids") or [])
        self.put_bytes(config_desc, raw_config)
        if self.fetch_layers:
            diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
            if len(diff_ids) != len(layers):
                raise ImageError(f"manifest {image.digest()}: {len(layers)} layers but config "
                                 f"{config_desc.digest} lists {len(diff_ids)} diff_ids")
            descs = [layer.descriptor() for layer in layers]
            with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(descs) or 1)),
                                    thread_name_prefix="pull") as pool:
                futures = [pool.submit(self.copy_layer, d, diff_ids[i]) for i, d in enumerate(descs)]
                errors = []
                for future in futures:
                    try:
                        future.result()
                    except BaseException as err:  # collect, so every worker finished before cleanup
                        errors.append(err)
                if errors:
                    raise errors[0]
        self.put_bytes(image.descriptor(), raw_manifest)

    def copy_opaque_manifest(self, desc: Descriptor) -> None:
        """A manifest whose blobs are not image layers (attestations): copied verbatim, verified."""
        raw = self.provider.read_blob(desc)
        _, config, blobs = parse_manifest(raw, desc)
        for blob in [config, *blobs]:
            if not self.store.has_blob(blob.digest):
                if blob.size > MAX_CONFIG_SIZE:
                    raise ImageError(f"attestation manifest {desc.digest}: blob {blob.digest} is too large "
                                     f"({blob.size} bytes)")
                self.put_bytes(blob, self.provider.read_blob(blob))
        self.put_bytes(desc, raw)

    def copy_layer(self, desc: Descriptor, diff_id: str) -> None:
        key = desc.digest
        label = f"layer-{desc.digest}"
        if self.store.has_blob(desc.digest):
            self.progress.start(key, label, desc.size)
            self.progress.finish(key, "exists")
        else:
            self.progress.start(key, label, desc.size)
            unpack = self.unpack(desc) if self.unpack is not None else None
            try:
                with self.store.ingest(desc.digest, desc.size) as writer:
                    dest = _Tee(writer, unpack) if unpack is not None else writer
                    copy = getattr(self.provider, "copy_blob", None)
                    if callable(copy):
                        copy(desc, cast(BinaryIO, dest), lambda n: self.progress.advance(key, n))
                    else:
                        _copy_stream(self.provider.open_blob(desc), dest,
                                     lambda n: self.progress.advance(key, n))
                    writer.commit()
                self.added.append(desc.digest)
                if isinstance(dest, _Tee) and not dest.broken:
                    self._commit_unpacked(desc, diff_id, dest.unpack)
                    unpack = None
            except BaseException:
                self.progress.finish(key, "failed")
                raise
            finally:
                if unpack is not None:
                    unpack.abort()
            self.progress.finish(key, "done")
        known = self.store.uncompressed_info(desc.digest)
        if self.verify_diff_ids and (known is None or known[0] != diff_id):
            actual, size = diff_id_of(self.store.open_blob(desc.digest),
                                      mt.layer_compression(desc.media_type), f"layer {desc.digest}")
            check_diff_id(f"layer {desc.digest}", actual, diff_id)
            self.store.record_uncompressed(desc.digest, actual, size)


    def _commit_unpacked(self, desc: Descriptor, diff_id: str, unpack: LayerUnpack) -> None:
        """The blob digest matched: check the DiffID the unpacker computed, then make it visible."""
        actual, size = unpack.finish()
        check_diff_id(f"layer {desc.digest}", actual, diff_id)
        self.store.record_uncompressed(desc.digest, actual, size)
        unpack.commit()


def _copy_stream(src: BinaryIO, dest: BlobWriter | _Tee, advance: Callable[[int], None]) -> None:
    with src:
        while chunk := src.read(1 << 20):
            dest.write(chunk)
            advance(len(chunk))


def copy_into_store(store: Store, root: Root, provider: BlobProvider, name: str, *, source: str | None,
                    platforms: Sequence[Platform] | None, fetch_layers: bool = True,
                    verify_diff_ids: bool = True, progress: Progress = NULL_PROGRESS,
                    workers: int = 3, unpack: Unpacker | None = None,
                    strict_platform: bool = False) -> ImageRecord:
    """Copy ``root`` (from any provider) into the store and name it; all or nothing.

    ``unpack`` (with ``fetch_layers``): layers downloaded now are also unpacked while they arrive.
    ``strict_platform``: a single manifest must be for one of ``platforms`` too (its config decides).
    """
    copier = _Copier(store, provider, platforms=platforms, fetch_layers=fetch_layers,
                     verify_diff_ids=verify_diff_ids, progress=progress, workers=workers, unpack=unpack,
                     strict_platform=strict_platform)
    with store.lease():
        try:
            copier.copy_root(root)
            target = root.descriptor()
            return store.put_image(name, Descriptor(target.media_type, target.digest, target.size),
                                   source=source)
        except BaseException:
            store.discard_unreferenced(copier.added)
            raise


def pull_image(store: Store, client: RegistryClient, ref: Reference | str, *,
               platform: Platform | str | None = None, all_platforms: bool = False,
               fetch_layers: bool = True, progress: Progress = NULL_PROGRESS, name: str | None = None,
               workers: int = 3, platforms: Sequence[Platform] | None = None,
               unpack: Unpacker | None = None, manifest: tuple[bytes, str, str] | None = None
               ) -> ImageRecord:
    """Pull ``ref`` into the store under its own name (or ``name``).

    ``fetch_layers=False`` stores manifests and config only: the lazy path, where layers are served
    by the mount server. Otherwise every layer is downloaded, its digest and DiffID verified.
    From an index: ``platform`` (default this machine's), several ``platforms``, or ``all_platforms``.
    A single manifest is taken whatever its platform unless ``platform``/``platforms`` were given: then
    its config must be for one of them (PlatformNotFoundError "no match for platform", as nerdctl).
    ``unpack``: see the module docstring (layers fetched now are extracted while they download).
    ``manifest``: ``ref``'s manifest or index as ``client.get_manifest(ref)`` returned it already.
    """
    parsed = parse_reference(ref) if isinstance(ref, str) else ref
    if parsed.transport != "docker":
        raise ImageError(f"cannot pull {parsed}: not a registry reference")
    if isinstance(platform, str):
        platform = parse_platform(platform)
    if all_platforms:
        wanted: list[Platform] | None = None
    elif platforms:
        wanted = list(platforms)
    else:
        wanted = [platform or host_platform()]
    root, provider = remote_root(client, parsed, manifest)
    progress.start(str(parsed), str(parsed), None)
    progress.finish(str(parsed), "resolved")
    explicit = not all_platforms and (platform is not None or bool(platforms))
    return copy_into_store(store, root, provider, name or str(parsed), source=str(parsed),
                           platforms=wanted, fetch_layers=fetch_layers, progress=progress,
                           workers=workers, unpack=unpack if fetch_layers else None,
                           strict_platform=explicit)


class _StoreFirst:
    """The store, and for the blobs it lacks the image's source repository, asked by digest only (the
    registry provider checks each blob against its descriptor). The client is made on first need."""

    def __init__(self, store: Store, name: str, source: Reference | None,
                 client: Callable[[], RegistryClient]) -> None:
        self.store = store
        self.name = name
        self.source = source
        self._client = client
        self._remote: RegistryProvider | None = None
        self._lock = threading.Lock()   # layer workers ask at once: one client, made once

    def remote(self, desc: Descriptor) -> RegistryProvider:
        if self.source is None:
            raise BlobNotFoundError(f"{self.name}: {kind_of(desc)} {desc.digest} is not in the store and the "
                                    "image has no source registry")
        with self._lock:
            if self._remote is None:
                self._remote = RegistryProvider(self._client(), self.source)
            return self._remote

    def read_blob(self, desc: Descriptor) -> bytes:
        if self.store.has_blob(desc.digest):
            return self.store.provider.read_blob(desc)
        return self.remote(desc).read_blob(desc)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        if self.store.has_blob(desc.digest):
            return self.store.provider.open_blob(desc)
        return self.remote(desc).open_blob(desc)

    def copy_blob(self, desc: Descriptor, dest: BinaryIO,
                  progress: Callable[[int], None] | None = None) -> None:
        self.remote(desc).copy_blob(desc, dest, progress)


class _Completer(_Copier):
    """A copier that leaves the layers the store has alone (their use checks what it reads)."""

    def copy_layer(self, desc: Descriptor, diff_id: str) -> None:
        if not self.store.has_blob(desc.digest):
            super().copy_layer(desc, diff_id)


def complete_image(store: Store, name: str, client: Callable[[], RegistryClient], *,
                   platforms: Sequence[Platform] | None, progress: Progress = NULL_PROGRESS,
                   workers: int = 3) -> ImageRecord:
    """Download what the stored image ``name`` (for ``platforms``; None: all) lacks in the store.

    A lazily pulled image's layers, a build's lazily mounted base layers, an index's other platforms:
    each is fetched by digest from the repository recorded as the image's source (verified: digest,
    then DiffID against the config), never by re-resolving a reference, so the image stays the one
    stored (a tag moved since, or a build's source naming its own manifest, changes nothing).
    ``client`` is called only if something is missing. The name and its record are left as they are.
    """
    record = store.get_image(name)
    source: Reference | None = None
    if record.source:
        try:
            source = parse_reference(record.source)
        except LazypullError as err:
            raise StoreError(f"{record.name}: recorded source {record.source!r} is invalid: {err}") from err
    provider = _StoreFirst(store, record.name, source, client)
    copier = _Completer(store, provider, platforms=platforms, fetch_layers=True, verify_diff_ids=True,
                        progress=progress, workers=workers)
    with store.lease():
        try:
            copier.copy_root(open_root(provider, record.target))
        except BaseException:
            store.discard_unreferenced(copier.added)
            raise
    return record
