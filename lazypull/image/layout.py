"""OCI image layouts on disk (``oci:DIR[:TAG]``, as skopeo and buildah write them): read and write.

A layout is ``DIR/oci-layout`` (``{"imageLayoutVersion": "1.0.0"}``), ``DIR/index.json`` (an OCI index
whose entries carry the tag in ``org.opencontainers.image.ref.name``) and ``DIR/blobs/sha256/<hex>``.
Writes are atomic per blob and for index.json (temp files under ``DIR/.lazypull-ingest``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

from lazypull.image import mediatypes as mt
from lazypull.image.blobs import BlobDir, BlobInfo, BlobWriter, write_atomic
from lazypull.image.errors import ImageError, ImageNotFoundError
from lazypull.image.model import Root
from lazypull.image.partial import (
    MAX_MANIFEST_SIZE,
    kind_of,
    open_root,
    parse_index,
    parse_json_object,
    parse_manifest,
    verify_bytes,
)
from lazypull.registry import Descriptor, Reference, parse_reference

LAYOUT_VERSION = "1.0.0"


class Layout:
    """An OCI image layout directory."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.blobs = BlobDir(self.path / "blobs" / "sha256", self.path / ".lazypull-ingest",
                             f"the OCI layout {self.path}")
        self.blobs.cleanup()

    @classmethod
    def from_reference(cls, ref: str | Reference) -> tuple[Layout, str | None]:
        """``oci:DIR[:TAG]`` -> (layout, tag)."""
        parsed = parse_reference(ref) if isinstance(ref, str) else ref
        if parsed.transport != "oci" or not parsed.path:
            raise ImageError(f"{ref} is not an oci:DIR[:TAG] reference")
        return cls(parsed.path), parsed.tag

    # ---- BlobProvider ----

    def read_blob(self, desc: Descriptor) -> bytes:
        return verify_bytes(self.blobs.read_blob(desc.digest, desc.size), desc, kind_of(desc))

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self.blobs.open_blob(desc.digest)

    # ---- sink ----

    def has_blob(self, digest: str) -> bool:
        return self.blobs.has_blob(digest)

    def blob_path(self, digest: str) -> Path | None:
        return self.blobs.blob_path(digest)

    def put_blob(self, data: bytes | BinaryIO, expected_digest: str | None = None,
                 expected_size: int | None = None) -> BlobInfo:
        return self.blobs.put_blob(data, expected_digest, expected_size)

    def ingest(self, expected_digest: str | None = None, expected_size: int | None = None) -> Any:
        """A temp blob file (context manager yielding a BlobWriter)."""
        return self.blobs.ingest(expected_digest, expected_size)

    def discard_unreferenced(self, digests: list[str]) -> None:
        """Delete these blobs unless an index.json entry reaches them (undo of a failed write)."""
        live: set[str] = set()
        for entry in self.index_entries() if (self.path / "index.json").exists() else []:
            _reach(self, entry, live)
        for digest in digests:
            if digest not in live:
                self.blobs.delete_blob(digest)

    # ---- index.json ----

    def _index_desc(self, raw: bytes) -> Descriptor:
        from lazypull.image.digest import sha256_bytes

        return Descriptor(mt.OCI_INDEX, sha256_bytes(raw), len(raw))

    def index_entries(self) -> list[Descriptor]:
        """The entries of index.json (empty for a new layout)."""
        index_path = self.path / "index.json"
        try:
            with open(index_path, "rb") as f:
                raw = f.read(MAX_MANIFEST_SIZE + 1)
        except FileNotFoundError:
            if self.path.is_dir() and (self.path / "oci-layout").is_file():
                return []
            raise ImageNotFoundError(f"{self.path} is not an OCI image layout (no index.json)") from None
        if len(raw) > MAX_MANIFEST_SIZE:
            raise ImageError(f"{index_path} is larger than {MAX_MANIFEST_SIZE} bytes")
        doc = parse_json_object(raw, f"{index_path}")
        layout_file = self.path / "oci-layout"
        if layout_file.is_file():
            marker = parse_json_object(layout_file.read_bytes(), str(layout_file))
            if marker.get("imageLayoutVersion") != LAYOUT_VERSION:
                raise ImageError(f"{layout_file}: unsupported imageLayoutVersion "
                                 f"{marker.get('imageLayoutVersion')!r}")
        desc = self._index_desc(raw)
        if doc.get("mediaType") is None:
            doc["mediaType"] = mt.OCI_INDEX
        _, entries = parse_index(json.dumps(doc).encode(), Descriptor(mt.OCI_INDEX, desc.digest, 0))
        return entries

    def find(self, tag: str | None) -> Descriptor:
        """The index.json entry for a tag; without a tag, the only entry."""
        entries = self.index_entries()
        if tag is None:
            if len(entries) != 1:
                raise ImageNotFoundError(f"{self.path}: {len(entries)} images in the layout; name one with "
                                         f"oci:{self.path}:TAG")
            return entries[0]
        for entry in entries:
            name = entry.annotations.get(mt.REF_NAME)
            if name == tag or (name and name.endswith(":" + tag) and "/" in name):
                return entry
        tags = sorted(e.annotations.get(mt.REF_NAME, "") for e in entries)
        listed = ", ".join(t for t in tags if t) or "none"
        raise ImageNotFoundError(f"{self.path}: no image tagged {tag!r} (tags: {listed})")

    def root(self, tag: str | None) -> Root:
        """The image or index tagged ``tag``."""
        return open_root(self, self.find(tag))

    def add_entry(self, desc: Descriptor, tag: str | None) -> None:
        """Point ``tag`` at ``desc`` in index.json (replacing an entry with the same tag)."""
        if not self.blobs.has_blob(desc.digest):
            raise ImageError(f"{self.path}: cannot tag {desc.digest}: blob not in the layout")
        self.path.mkdir(parents=True, exist_ok=True)
        entries = [] if not (self.path / "index.json").exists() else self.index_entries()
        annotations = dict(desc.annotations)
        if tag:
            annotations[mt.REF_NAME] = tag
            entries = [e for e in entries if e.annotations.get(mt.REF_NAME) != tag]
        new = Descriptor(desc.media_type, desc.digest, desc.size, annotations, desc.platform, desc.urls)
        entries.append(new)
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [e.to_json() for e in entries]}
        self._write_file("oci-layout", json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        self._write_file("index.json", json.dumps(doc, separators=(",", ":")).encode())
        ingest = self.blobs.ingest_dir
        if ingest.is_dir() and not any(ingest.iterdir()):
            ingest.rmdir()

    def _write_file(self, name: str, data: bytes) -> None:
        write_atomic(self.path / name, data)


def _reach(layout: Layout, desc: Descriptor, live: set[str], depth: int = 0) -> None:
    live.add(desc.digest)
    if depth > 4 or not layout.has_blob(desc.digest):
        return
    try:
        if mt.is_index(desc.media_type):
            _, entries = parse_index(layout.blobs.read_blob(desc.digest), desc)
            for entry in entries:
                _reach(layout, entry, live, depth + 1)
        elif mt.is_manifest(desc.media_type):
            _, config, layers = parse_manifest(layout.blobs.read_blob(desc.digest), desc)
            live.update(d.digest for d in [config, *layers])
    except ImageError:
        pass  # unreadable: keep only what is known


def layout_root(ref: str | Reference) -> Root:
    """Read ``oci:DIR[:TAG]`` as an Image or ImageIndex."""
    layout, tag = Layout.from_reference(ref)
    return layout.root(tag)


__all__ = ["BlobWriter", "Layout", "layout_root"]
