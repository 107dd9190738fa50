"""OCI image layouts on disk (``oci:DIR[:TAG]``, as skopeo and buildah write them): read and write.

A layout is ``DIR/oci-layout`` (``{"imageLayoutVersion": "1.0.0"}``), ``DIR/index.json`` (an OCI index
whose entries carry the tag in ``org.opencontainers.image.ref.name``) and ``DIR/blobs/sha256/<hex>``.
Writes are atomic per blob and for index.json (temp files under ``DIR/.lazypull-ingest``). DIR may
be anything root names, but nothing *inside* it is written through a symbolic link: whoever can write
in DIR could point ``blobs/sha256`` at ``/etc/cron.d``. The directories written into are opened one
component at a time with ``O_NOFOLLOW`` and then used through their descriptors (``/proc/self/fd``), so
they cannot be swapped for a link in between either.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import weakref
from pathlib import Path
from typing import Any, BinaryIO

from lazypull.image import mediatypes as mt
from lazypull.image.blobs import BlobDir, BlobInfo, BlobWriter, write_atomic
from lazypull.image.errors import ImageError, ImageNotFoundError
from lazypull.image.model import Root
from lazypull.image.partial import (
    kind_of,
    open_root,
    parse_index,
    parse_json_object,
    parse_manifest,
    verify_bytes,
)
from lazypull.registry import MAX_MANIFEST_SIZE, Descriptor, Reference, parse_reference
from lazypull.smallfile import read_small

LAYOUT_VERSION = "1.0.0"
INGEST_DIR = ".lazypull-ingest"


class Layout:
    """An OCI image layout directory."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.blobs = BlobDir(self.path / "blobs" / "sha256", self.path / INGEST_DIR,
                             f"the OCI layout {self.path}")
        self._sink: BlobDir | None = None
        self._sink_fds: list[int] = []
        self._sink_lock = threading.Lock()
        self._closer = weakref.finalize(self, _close_all, self._sink_fds)
        self._cleanup_ingest()

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
        return self._writable().has_blob(digest)

    def blob_path(self, digest: str) -> Path | None:
        return self._writable().blob_path(digest)

    def put_blob(self, data: bytes | BinaryIO, expected_digest: str | None = None,
                 expected_size: int | None = None) -> BlobInfo:
        return self._writable().put_blob(data, expected_digest, expected_size)

    def ingest(self, expected_digest: str | None = None, expected_size: int | None = None) -> Any:
        """A temp blob file (context manager yielding a BlobWriter)."""
        return self._writable().ingest(expected_digest, expected_size)

    def _writable(self) -> BlobDir:
        """The blob and ingest directories to write to, created if missing, opened without following
        a link at any component inside the layout; ImageError if one is a link or not a directory."""
        with self._sink_lock:       # conversions write layers from several threads
            if self._sink is None:
                self.path.mkdir(parents=True, exist_ok=True)
                top = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    blobs = self._open_inside(top, "blobs")
                    try:
                        sha256 = self._open_inside(blobs, "sha256", "blobs/")
                    finally:
                        os.close(blobs)
                    self._sink_fds.append(sha256)
                    ingest = self._open_inside(top, INGEST_DIR)
                    self._sink_fds.append(ingest)
                finally:
                    os.close(top)
                self._sink = BlobDir(_fd_path(sha256), _fd_path(ingest), self.blobs.where)
            return self._sink

    def _open_inside(self, parent: int, name: str, prefix: str = "", *, create: bool = True) -> int:
        """``name`` in the directory ``parent`` (made if missing) as a directory fd, never through a link."""
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=parent)
        try:
            return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                raise ImageError(f"{self.path / (prefix + name)} is a symbolic link or not a directory: "
                                 f"refusing to write the OCI layout through it") from err
            raise ImageError(f"cannot open {self.path / (prefix + name)}: {err.strerror}") from err

    def _cleanup_ingest(self) -> None:
        """Remove temp files left by dead writers, in the ingest directory proper (never through a link)."""
        try:
            top = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return          # no layout yet (or not one): nothing to clean
        try:
            ingest = self._open_inside(top, INGEST_DIR, create=False)
        except ImageError:
            return          # missing, or a link: not ours to clean
        finally:
            os.close(top)
        try:
            BlobDir(self.blobs.blobs_dir, _fd_path(ingest), self.blobs.where).cleanup()
        finally:
            os.close(ingest)

    def _close_sink(self) -> None:
        with self._sink_lock:
            self._sink = None
            _close_all(self._sink_fds)

    def discard_unreferenced(self, digests: list[str]) -> None:
        """Delete these blobs unless an index.json entry reaches them (undo of a failed write)."""
        live: set[str] = set()
        for entry in self.index_entries() if (self.path / "index.json").exists() else []:
            _reach(self, entry, live)
        sink = self._writable()
        for digest in digests:
            if digest not in live:
                sink.delete_blob(digest)

    # ---- index.json ----

    def _index_desc(self, raw: bytes) -> Descriptor:
        from lazypull.image.digest import sha256_bytes

        return Descriptor(mt.OCI_INDEX, sha256_bytes(raw), len(raw))

    def index_entries(self) -> list[Descriptor]:
        """The entries of index.json (empty for a new layout)."""
        index_path = self.path / "index.json"
        raw = _read_small(index_path)
        if raw is None:
            if self.path.is_dir() and (self.path / "oci-layout").is_file():
                return []
            raise ImageNotFoundError(f"{self.path} is not an OCI image layout (no index.json)") from None
        doc = parse_json_object(raw, f"{index_path}")
        layout_file = self.path / "oci-layout"
        marker_raw = _read_small(layout_file)
        if marker_raw is not None:
            marker = parse_json_object(marker_raw, str(layout_file))
            if marker.get("imageLayoutVersion") != LAYOUT_VERSION:
                raise ImageError(f"{layout_file}: unsupported imageLayoutVersion "
                                 f"{marker.get('imageLayoutVersion')!r}")
        desc = self._index_desc(raw)
        if doc.get("mediaType") is None:
            doc["mediaType"] = mt.OCI_INDEX
        entries = parse_index(json.dumps(doc).encode(), Descriptor(mt.OCI_INDEX, desc.digest, 0))
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
        if not self.has_blob(desc.digest):
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
        sink = self._writable()
        if not any(sink.ingest_dir.iterdir()):
            self._close_sink()
            with contextlib.suppress(OSError):      # a writer's file appeared, or it was replaced
                os.rmdir(self.path / INGEST_DIR)

    def _write_file(self, name: str, data: bytes) -> None:
        write_atomic(self.path / name, data)


def _read_small(path: Path) -> bytes | None:
    """A layout's index.json or oci-layout (regular, at most MAX_MANIFEST_SIZE bytes), None if missing."""
    return read_small(path, MAX_MANIFEST_SIZE, "", ImageError)


def _fd_path(fd: int) -> Path:
    """A path to the directory open as ``fd`` that resolves to it, whatever its names become."""
    return Path(f"/proc/self/fd/{fd}")


def _close_all(fds: list[int]) -> None:
    while fds:
        with contextlib.suppress(OSError):
            os.close(fds.pop())


def _reach(layout: Layout, desc: Descriptor, live: set[str], depth: int = 0) -> None:
    live.add(desc.digest)
    if depth > 4 or not layout.has_blob(desc.digest):
        return
    try:
        if mt.is_index(desc.media_type):
            entries = parse_index(layout.blobs.read_blob(desc.digest), desc)
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
