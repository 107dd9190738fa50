"""Pushing a stored image to a registry: blobs (skipping what the registry has), then manifests.

Blobs not in the store (an image pulled lazily) come from the image's source registry: mounted
across repositories on the same registry, else copied through a temp file.

An index is pushed with every child manifest present in the store; with a platform, only that
platform's manifest is pushed under the tag. The ``NAME-esgztoc`` TOC image of an eStargz image
converted with an external TOC (format.md 2.3) is pushed alongside when the store has it.
"""

from __future__ import annotations

import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from lazypull.image import mediatypes as mt
from lazypull.image.errors import BlobNotFoundError, ImageError
from lazypull.image.partial import ManifestImage, ManifestIndex, parse_manifest
from lazypull.image.progress import NULL_PROGRESS, Progress, counting_reader
from lazypull.image.store import Store
from lazypull.registry import Descriptor, Platform, Reference, RegistryClient, parse_reference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushResult:
    """What was pushed: the reference and digest of the root, and the TOC image if any."""

    ref: Reference
    digest: str
    toc_image: PushResult | None = None


class _Pusher:
    def __init__(self, store: Store, client: RegistryClient, ref: Reference, progress: Progress,
                 workers: int, source: Reference | None) -> None:
        self.store = store
        self.client = client
        self.ref = ref
        self.progress = progress
        self.workers = workers
        self.source = source

    def push_blob(self, desc: Descriptor, label: str) -> None:
        path = self.store.blob_path(desc.digest)
        key = desc.digest
        mount_from: list[str] = []
        if path is None:
            # A lazily pulled image: its layers are still in the registry it came from.
            if self.source is None:
                raise BlobNotFoundError(f"cannot push {self.ref}: {label} {desc.digest} is not in the store "
                                        "and the image has no source registry")
            if self.source.registry == self.ref.registry:
                mount_from = [self.source.repository]
        self.progress.start(key, f"{label}-{desc.digest}", desc.size)

        def opener() -> BinaryIO:
            if path is not None:
                src: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by the client
            else:
                assert self.source is not None
                src = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the client
                self.client.get_blob(self.source, desc.digest, src, size=desc.size)
                src.seek(0)
            return counting_reader(src, self.progress, key)

        try:
            self.client.push_blob(self.ref, desc.digest, desc.size, opener, mount_from=mount_from)
        except BaseException:
            self.progress.finish(key, "failed")
            raise
        self.progress.finish(key, "done")

    def push_image(self, image: ManifestImage) -> None:
        config = image.config_descriptor()
        blobs = [(config, "config"), *((d, "layer") for d in image.layer_descriptors())]
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(blobs))),
                                thread_name_prefix="push") as pool:
            futures = [pool.submit(self.push_blob, d, label) for d, label in blobs]
            errors = []
            for future in futures:
                try:
                    future.result()
                except BaseException as err:
                    errors.append(err)
            if errors:
                raise errors[0]
        self.client.put_manifest(self.ref.with_digest(image.digest()), image.raw_manifest(),
                                 image.media_type())


    def push_opaque(self, desc: Descriptor) -> None:
        """An attestation manifest: its blobs as they are, then the manifest."""
        raw = self.store.read_blob(desc.digest)
        _, config, blobs = parse_manifest(raw, desc)
        for blob in [config, *blobs]:
            self.push_blob(blob, "blob")
        self.client.put_manifest(self.ref.with_digest(desc.digest), raw, desc.media_type)


def push_image(store: Store, client: RegistryClient, name: str, *, dest: Reference | str | None = None,
               platform: Platform | None = None, progress: Progress = NULL_PROGRESS, workers: int = 3,
               with_toc_image: bool = True) -> PushResult:
    """Push the stored image ``name`` to ``dest`` (default: the registry its name points at)."""
    record = store.get_image(name)
    ref = parse_reference(dest) if isinstance(dest, str) else (dest or parse_reference(record.name))
    if ref.transport != "docker":
        raise ImageError(f"cannot push to {ref}: not a registry reference")
    if ref.digest and not ref.tag:
        raise ImageError(f"cannot push to {ref}: give a tag, not a digest")
    ref = Reference(ref.registry, ref.repository, ref.tag or "latest", None)
    source = parse_reference(record.source) if record.source else None
    pusher = _Pusher(store, client, ref, progress, workers, source)
    target = record.target
    if mt.is_index(target.media_type):
        index = ManifestIndex(store.provider, target)
        entries = [d for d in index.manifests()
                   if mt.is_manifest(d.media_type) and not mt.is_attestation(d.annotations)]
        attestations = [d for d in index.manifests()
                        if mt.is_manifest(d.media_type) and mt.is_attestation(d.annotations)]
        if platform is not None:
            chosen = [d for d in entries if d.platform is None or platform.matches(d.platform)]
            local = [d for d in chosen if store.has_blob(d.digest)]
            if not local:
                raise BlobNotFoundError(f"cannot push {record.name}: no manifest for platform {platform} "
                                        "in the store")
            image = ManifestImage(store.provider, local[0])
            pusher.push_image(image)
            digest = client.put_manifest(ref, image.raw_manifest(), image.media_type())
        else:
            missing = [d for d in entries + attestations if not store.has_blob(d.digest)]
            if missing:
                plats = ", ".join(str(d.platform) for d in missing)
                raise BlobNotFoundError(f"cannot push {record.name}: manifests for {plats} are not in the "
                                        "store (pull with --all-platforms, or push one --platform)")
            for entry in entries:
                pusher.push_image(ManifestImage(store.provider, entry))
            for entry in attestations:
                pusher.push_opaque(entry)
            digest = client.put_manifest(ref, index.raw_manifest(), index.media_type())
    else:
        image = ManifestImage(store.provider, target)
        pusher.push_image(image)
        digest = client.put_manifest(ref, image.raw_manifest(), image.media_type())
    store.update_source(record.name, str(ref))
    toc_result = None
    if with_toc_image and ref.tag and not record.name.endswith(mt.TOC_IMAGE_SUFFIX):
        toc_name = _toc_image_name(record.name)
        if toc_name is not None and store.find_image(toc_name) is not None:
            toc_result = push_image(store, client, toc_name,
                                    dest=ref.with_tag(ref.tag + mt.TOC_IMAGE_SUFFIX),
                                    progress=progress, workers=workers, with_toc_image=False)
    return PushResult(ref, digest, toc_result)


def _toc_image_name(name: str) -> str | None:
    """``reg/repo:tag`` -> ``reg/repo:tag-esgztoc`` (only tagged names have a TOC image)."""
    ref = parse_reference(name)
    if not ref.tag or ref.digest:
        return None
    return str(ref.with_tag(ref.tag + mt.TOC_IMAGE_SUFFIX))
