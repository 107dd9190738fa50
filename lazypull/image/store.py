"""The local content store: blobs by digest and an index of named images, safe to interrupt.

Layout under the root (docs/architecture.md)::

    content/blobs/sha256/<hex>   verified blobs; written to content/ingest/, fsynced, renamed
    content/ingest/<random>      blobs being written (each flock'ed by its writer while open)
    content/gc.lock              shared by operations in flight; exclusive for pruning
    images.json                  {"version": 1, "images": {name: record}} replaced atomically
    images.lock                  serialises read-modify-write of images.json

A blob file exists only once complete and verified; an image name exists only once every blob it
needs was written. A process killed half way leaves at most ingest files, which the next store
opening removes (their flock is free once the writer is gone).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lazypull.errors import LazypullError
from lazypull.image import mediatypes as mt
from lazypull.image.blobs import BlobDir, BlobInfo, BlobWriter, write_atomic
from lazypull.image.digest import check_digest, hex_of, is_digest
from lazypull.image.errors import (
    BlobNotFoundError,
    ImageError,
    ImageNotFoundError,
    PlatformNotFoundError,
    StoreError,
)
from lazypull.image.model import Image, Root
from lazypull.image.partial import (
    ManifestImage,
    ManifestIndex,
    kind_of,
    open_root,
    parse_config,
    parse_index,
    parse_manifest,
    verify_bytes,
)
from lazypull.image.platform import config_platform, host_platform, parse_platform, platform_label
from lazypull.image.rootdir import prepare_root
from lazypull.lockfile import flocked as _flocked
from lazypull.registry import Descriptor, Platform, Reference, parse_reference

log = logging.getLogger(__name__)
INDEX_VERSION = 1


def normalize_name(name: str) -> str:
    """The canonical store name of a reference (``ubuntu`` -> ``docker.io/library/ubuntu:latest``)."""
    try:
        ref = parse_reference(name)
    except LazypullError as err:  # ReferenceError_
        raise ImageError(f"invalid image name {name!r}: {err}") from err
    if ref.transport != "docker":
        raise ImageError(f"invalid image name {name!r}: a store name is a registry-style reference")
    return str(ref)


@dataclass(frozen=True)
class ImageRecord:
    """A named image in the store: what the name points at, when, and where it came from."""

    name: str
    target: Descriptor
    created: dt.datetime
    source: str | None = None
    labels: dict[str, str] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target.to_json(),
            "created": self.created.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        if self.source:
            out["source"] = self.source
        if self.labels:
            out["labels"] = dict(self.labels)
        return out

    @classmethod
    def from_json(cls, name: str, value: object) -> ImageRecord:
        if not isinstance(value, dict):
            raise StoreError(f"images.json: entry {name!r} is not an object")
        target = Descriptor.from_json(value.get("target"), f"images.json entry {name!r} target")
        created_text = value.get("created")
        try:
            created = dt.datetime.strptime(str(created_text), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        except ValueError as err:
            raise StoreError(f"images.json: entry {name!r} has a bad created time {created_text!r}") from err
        source = value.get("source")
        labels = value.get("labels") or {}
        return cls(name, target, created, source if isinstance(source, str) else None,
                   {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {})


@dataclass(frozen=True)
class ResolvedImage:
    """One platform's image of a named image, with everything a mount or a container needs."""

    name: str
    manifest_digest: str
    manifest: dict[str, Any]
    config_digest: str
    config: dict[str, Any]
    layers: list[Descriptor]
    source: Reference | None
    platform: str
    manifest_descriptor: Descriptor | None = None
    diff_ids: list[str] = field(default_factory=list)


class StoreProvider:
    """The store as a BlobProvider for the generic Image/ImageIndex implementations."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def read_blob(self, desc: Descriptor) -> bytes:
        return verify_bytes(self._store.blobs.read_blob(desc.digest, desc.size), desc, kind_of(desc))

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self._store.open_blob(desc.digest)


class Store:
    """Content-addressed blobs plus named images under ``root``."""

    def __init__(self, root: Path | str) -> None:
        self.root = prepare_root(root)      # 0700 from the start; an older, wider store is narrowed
        self.content_dir = self.root / "content"
        self.blobs_dir = self.content_dir / "blobs" / "sha256"
        self.ingest_dir = self.content_dir / "ingest"
        self.blobs = BlobDir(self.blobs_dir, self.ingest_dir, f"the store {self.root}")
        self.index_path = self.root / "images.json"
        self.provider = StoreProvider(self)
        self.cleanup()

    # ---- blobs (delegated to BlobDir) ----------------------------------------------------------

    def blob_file(self, digest: str) -> Path:
        """Where a blob lives (whether or not it is there); the digest is checked first."""
        return self.blobs.blob_file(digest)

    def blob_path(self, digest: str) -> Path | None:
        """The local blob file if present."""
        return self.blobs.blob_path(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blobs.has_blob(digest)

    def blob_size(self, digest: str) -> int:
        return self.blobs.blob_size(digest)

    def open_blob(self, digest: str) -> BinaryIO:
        return self.blobs.open_blob(digest)

    def read_blob(self, digest: str) -> bytes:
        return self.blobs.read_blob(digest)

    def ingest(self, expected_digest: str | None = None,
               expected_size: int | None = None) -> contextlib.AbstractContextManager[BlobWriter]:
        """A temp blob file to write; call ``commit()`` inside the block or it is discarded."""
        return self.blobs.ingest(expected_digest, expected_size)

    def put_blob(self, data: bytes | BinaryIO, expected_digest: str | None = None,
                 expected_size: int | None = None) -> BlobInfo:
        """Store bytes or the rest of a stream; verified against the expected digest/size if given."""
        return self.blobs.put_blob(data, expected_digest, expected_size)

    def delete_blob(self, digest: str) -> bool:
        """Remove a blob (used when an operation fails and nothing references the blob)."""
        return self.blobs.delete_blob(digest)

    def verify_blob(self, digest: str) -> None:
        """Re-hash a stored blob; DigestMismatchError if it was corrupted on disk."""
        self.blobs.verify_blob(digest)

    def cleanup(self) -> int:
        """Remove ingest files whose writer is gone and stale images.json temp files; returns count."""
        removed = self.blobs.cleanup()
        if self.root.is_dir() and any(self.root.glob("images.json.*.tmp")):
            with self._index_lock():
                for tmp in self.root.glob("images.json.*.tmp"):
                    tmp.unlink(missing_ok=True)
                    removed += 1
        return removed

    # ---- leases and pruning -----------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Held while an operation writes blobs not yet named, so pruning leaves them alone."""
        self.content_dir.mkdir(parents=True, exist_ok=True)
        with _flocked(self.content_dir / "gc.lock", fcntl.LOCK_SH):
            yield

    def prune(self, also: Callable[[set[str]], object] | None = None) -> list[str]:
        """Delete blobs no named image reaches; skipped (returns []) while any lease is held.
        ``also(live)``: more to free while the same locks are held (the layer state and cached chunks of
        layers outside ``live``, the blobs named images reach, present or not)."""
        if not self.blobs_dir.is_dir():
            return []
        with _flocked(self.content_dir / "gc.lock", fcntl.LOCK_EX | fcntl.LOCK_NB) as held:
            if not held:
                log.info("prune skipped: an operation holds a lease")
                return []
            with self._index_lock():
                live = self._live_blobs()
                removed = []
                for path in self.blobs_dir.iterdir():
                    digest = "sha256:" + path.name
                    if is_digest(digest) and digest not in live:
                        path.unlink(missing_ok=True)
                        (self.content_dir / "uncompressed" / path.name).unlink(missing_ok=True)
                        removed.append(digest)
                if also is not None:
                    also(live)
                return removed

    def live_blobs(self) -> set[str]:
        """Every blob (manifest, config, layer) some named image reaches, present locally or not."""
        with self._index_lock():
            return self._live_blobs()

    def _live_blobs(self) -> set[str]:
        """Every blob some named image reaches (call with the index lock held)."""
        live: set[str] = set()
        for record in self._read_index().values():
            self._mark(record.target, live)
        return live

    def _mark(self, desc: Descriptor, live: set[str]) -> None:
        if desc.digest in live or not is_digest(desc.digest):
            return
        live.add(desc.digest)
        if not self.has_blob(desc.digest):
            return
        try:
            if mt.is_index(desc.media_type):
                entries = parse_index(self.read_blob(desc.digest), desc)
                for entry in entries:
                    self._mark(entry, live)
            elif mt.is_manifest(desc.media_type):
                _, config, layers = parse_manifest(self.read_blob(desc.digest), desc)
                for d in [config, *layers]:
                    live.add(d.digest)
        except ImageError as err:
            log.warning("prune: cannot read %s: %s", desc.digest, err)

    def discard_unreferenced(self, digests: list[str]) -> None:
        """Delete these blobs unless a named image reaches them (undo of a failed operation)."""
        if not digests:
            return
        with self._index_lock():
            live = self._live_blobs()
            for digest in digests:
                if digest not in live:
                    self.delete_blob(digest)

    def referenced_blobs(self, desc: Descriptor) -> set[str]:
        """Every blob a root descriptor reaches (locally present or not)."""
        live: set[str] = set()
        self._mark(desc, live)
        return live

    # ---- uncompressed sizes (containerd's containerd.io/uncompressed label) ----

    def record_uncompressed(self, digest: str, diff_id: str, size: int) -> None:
        """Remember a layer blob's DiffID and uncompressed size, learnt while verifying it."""
        check_digest(diff_id, "diff_id")
        path = self.content_dir / "uncompressed" / hex_of(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"diff_id": diff_id, "size": size}).encode(), durable=False)

    def uncompressed_info(self, digest: str) -> tuple[str, int] | None:
        """(DiffID, uncompressed size) recorded for a layer blob, if known."""
        try:
            doc = json.loads((self.content_dir / "uncompressed" / hex_of(digest)).read_text())
            return str(doc["diff_id"]), int(doc["size"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    # ---- images.json -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with _flocked(self.root / "images.lock", fcntl.LOCK_EX):
            yield

    def _read_index(self) -> dict[str, ImageRecord]:
        try:
            raw = self.index_path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError as err:
            raise StoreError(f"{self.index_path} is not valid JSON: {err}") from err
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), dict):
            raise StoreError(f"{self.index_path}: expected {{\"version\": 1, \"images\": {{...}}}}")
        if doc.get("version") != INDEX_VERSION:
            raise StoreError(f"{self.index_path}: unsupported version {doc.get('version')!r}")
        return {name: ImageRecord.from_json(name, value) for name, value in doc["images"].items()}

    def _write_index(self, records: dict[str, ImageRecord]) -> None:
        doc = {"version": INDEX_VERSION,
               "images": {name: records[name].to_json() for name in sorted(records)}}
        data = json.dumps(doc, indent=2).encode() + b"\n"
        # cleanup() removes leftovers by this name pattern
        write_atomic(self.index_path, data,
                     tmp=self.root / f"images.json.{os.getpid()}.{secrets.token_hex(4)}.tmp")

    def list_images(self) -> list[ImageRecord]:
        """All named images, sorted by name."""
        records = self._read_index()
        return [records[name] for name in sorted(records)]

    def find_image(self, name: str) -> ImageRecord | None:
        """The record for a name (normalised), or for a unique image-ID prefix; None if absent."""
        records = self._read_index()
        try:
            key = normalize_name(name)
        except ImageError:
            key = None
        if key is not None and key in records:
            return records[key]
        if name in records:
            return records[name]
        ident = name.removeprefix("sha256:")
        if re.fullmatch(r"[0-9a-f]{4,64}", ident):
            hits = {r.target.digest for r in records.values()
                    if r.target.digest.removeprefix("sha256:").startswith(ident)}
            if len(hits) > 1:
                raise ImageError(f"image ID {name!r} is ambiguous")
            if hits:
                digest = hits.pop()
                return next(r for r in sorted(records.values(), key=lambda r: r.name)
                            if r.target.digest == digest)
        return None

    def get_image(self, name: str) -> ImageRecord:
        """The record for a name; ImageNotFoundError if absent."""
        record = self.find_image(name)
        if record is None:
            raise ImageNotFoundError(f"image {name!r} not found in the store {self.root}")
        return record

    def put_image(self, name: str, target: Descriptor, *, source: str | None = None,
                  labels: dict[str, str] | None = None, created: dt.datetime | None = None) -> ImageRecord:
        """Name ``target`` (whose blob must already be stored); replaces an existing name."""
        key = normalize_name(name)
        check_digest(target.digest, f"target of {key}")
        if not self.has_blob(target.digest):
            raise BlobNotFoundError(f"cannot name {key}: manifest {target.digest} is not in the store")
        if not (mt.is_index(target.media_type) or mt.is_manifest(target.media_type)):
            raise ImageError(f"cannot name {key}: {target.media_type!r} is not a manifest or index type")
        record = ImageRecord(key, target, created or dt.datetime.now(dt.UTC), source, dict(labels or {}))
        with self._index_lock():
            records = self._read_index()
            records[key] = record
            self._write_index(records)
        return record

    def update_source(self, name: str, source: str) -> ImageRecord:
        """Remember where an image was pushed (the lazy path fetches layers from there)."""
        with self._index_lock():
            records = self._read_index()
            old = records.get(normalize_name(name))
            if old is None:
                raise ImageNotFoundError(f"image {name!r} not found in the store {self.root}")
            new = ImageRecord(old.name, old.target, old.created, source, old.labels)
            records[old.name] = new
            self._write_index(records)
        return new

    def tag(self, src: str, dst: str) -> ImageRecord:
        """Give the image ``src`` a second name ``dst``."""
        record = self.get_image(src)
        return self.put_image(dst, record.target, source=record.source, labels=record.labels)

    def remove(self, name: str) -> ImageRecord:
        """Drop a name (blobs are deleted by :meth:`prune`)."""
        record = self.get_image(name)
        with self._index_lock():
            records = self._read_index()
            if records.pop(record.name, None) is None:
                raise ImageNotFoundError(f"image {name!r} not found in the store {self.root}")
            self._write_index(records)
        return record

    # ---- images ------------------------------------------------------------------------------

    def root_image(self, name: str) -> Root:
        """The image or index a name points at, readable through the Image protocols."""
        record = self.get_image(name)
        return open_root(self.provider, record.target)

    def open(self, desc: Descriptor) -> Root:
        """An image or index by descriptor."""
        return open_root(self.provider, desc)

    def image(self, name: str, platform: Platform | None = None) -> Image:
        """One platform's image of a name (default: this machine's)."""
        record = self.get_image(name)
        return self._select(record.name, record.target, platform or host_platform())

    def _select(self, name: str, desc: Descriptor, platform: Platform, depth: int = 0) -> ManifestImage:
        if depth > 4:
            raise ImageError(f"{name}: indexes nested too deeply")
        if mt.is_manifest(desc.media_type):
            if not self.has_blob(desc.digest):
                raise BlobNotFoundError(f"{name}: manifest {desc.digest} is not in the store")
            return ManifestImage(self.provider, desc)
        index = ManifestIndex(self.provider, desc)
        candidates = [d for d in index.manifests()
                      if (d.platform is None or platform.matches(d.platform))
                      and (mt.is_manifest(d.media_type) or mt.is_index(d.media_type))]
        local = [d for d in candidates if self.has_blob(d.digest)]
        if not local:
            if candidates:
                raise BlobNotFoundError(f"{name}: the manifest for platform {platform} is not in the store "
                                        f"(pull it with --platform {platform})")
            raise PlatformNotFoundError(f"{name}: no manifest for platform {platform} in index "
                                        f"{desc.digest}")
        return self._select(name, local[0], platform, depth + 1)

    def resolve(self, name: str, platform: Platform | str | None = None) -> ResolvedImage:
        """Everything about one platform's image of ``name`` that mounting or running needs."""
        if isinstance(platform, str):
            platform = parse_platform(platform)
        record = self.get_image(name)
        image = self._select(record.name, record.target, platform or host_platform())
        manifest = image.parsed_manifest()
        config = parse_config(image.raw_config(), manifest[1])
        source: Reference | None = None
        if record.source:
            try:
                source = parse_reference(record.source)
            except LazypullError as err:
                raise StoreError(f"{record.name}: recorded source {record.source!r} is invalid: "
                                 f"{err}") from err
        return ResolvedImage(
            name=record.name,
            manifest_digest=image.digest(),
            manifest=manifest[0],
            config_digest=manifest[1].digest,
            config=config,
            layers=manifest[2],
            source=source,
            platform=platform_label(config_platform(config)),
            manifest_descriptor=image.descriptor(),
            diff_ids=list((config.get("rootfs") or {}).get("diff_ids") or []),
        )

    def metadata_of(self, image: ResolvedImage) -> list[tuple[str, str]]:
        """(digest, media type) of what a pull of ``image`` fetched besides its layers, as nerdctl's
        ``fetching`` lines list them: the index its name points at (if any), its manifest and config."""
        record = self.get_image(image.name)
        out = []
        if record.target.digest != image.manifest_digest:
            out.append((record.target.digest, record.target.media_type))
        out.append((image.manifest_digest,
                    image.manifest_descriptor.media_type if image.manifest_descriptor else mt.OCI_MANIFEST))
        config = image.manifest.get("config") if isinstance(image.manifest, dict) else None
        media = config.get("mediaType") if isinstance(config, dict) else None
        out.append((image.config_digest, str(media or mt.OCI_CONFIG)))
        return out
