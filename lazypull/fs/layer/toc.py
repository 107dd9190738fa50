"""Opening one layer's TOC before mounting: footer and TOC through the blob source, the TOC digest
checked against the layer's ``containerd.io/snapshot/stargz/toc.digest`` annotation (no annotation, no
lazy mount), the ``manifest-position`` hint of zstd:chunked, and external TOCs (format.md 2.3) fetched
from the ``<tag>-esgztoc`` image on the same registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lazypull.errors import MountError
from lazypull.format import FormatError, open_layer
from lazypull.format.annotations import TOC_DIGEST_ANNOTATION as TOC_DIGEST
from lazypull.format.annotations import UNCOMPRESSED_SIZE_ANNOTATION as UNCOMPRESSED_SIZE
from lazypull.fs.remote import RecordingSource

log = logging.getLogger(__name__)

LAYER_DIGEST = "containerd.io/snapshot/stargz/layer.digest"
MANIFEST_POSITION = ("io.containers.zstd-chunked.manifest-position",
                     "io.github.containers.zstd-chunked.manifest-position")
CHECKSUM_AND_POSITION = (
    ("io.github.containers.zstd-chunked.manifest-checksum",
     "io.github.containers.zstd-chunked.manifest-position"),
    ("io.containers.zstd-chunked.manifest-checksum", "io.containers.zstd-chunked.manifest-position"),
)
EXTERNAL_MARK = b"STARGZEXTERNALTOC"
TAIL_READ = 64 << 10
TOC_IMAGE_SUFFIX = "-esgztoc"

ExternalToc = Callable[[], bytes]


def is_lazy(annotations: Mapping[str, str] | None) -> bool:
    """Whether a layer can be mounted lazily: its TOC can be verified against an annotation
    (``toc.digest``, or containers/storage's zstd:chunked ``manifest-checksum`` + ``manifest-position``)."""
    if not annotations:
        return False
    return bool(annotations.get(TOC_DIGEST)) or _checksum(annotations) is not None


def _checksum(annotations: Mapping[str, str]) -> tuple[str, int, int] | None:
    """(checksum, TOC offset, compressed TOC length) of a containers/storage zstd:chunked layer."""
    for key, pos_key in CHECKSUM_AND_POSITION:
        checksum, position = annotations.get(key), annotations.get(pos_key)
        if checksum and position:
            parts = position.split(":")
            try:
                return checksum, int(parts[0]), int(parts[1])
            except (IndexError, ValueError) as err:
                raise MountError(f"malformed {pos_key} annotation {position!r}") from err
    return None


def _verify_manifest_checksum(digest: str, src: RecordingSource, checksum: str, offset: int,
                              length: int) -> None:
    """Check the compressed TOC against ``manifest-checksum``; the bytes stay recorded, so the reader
    parses exactly what was checked."""
    if offset < 0 or length <= 0 or offset + length > src.size:
        raise MountError(f"layer {digest}: manifest-position {offset}:{length} outside the blob")
    start = max(0, min(offset, src.size - TAIL_READ))
    data = src.read_at(start, src.size - start)
    got = "sha256:" + hashlib.sha256(data[offset - start : offset - start + length]).hexdigest()
    if got != checksum:
        raise MountError(f"layer {digest}: TOC checksum {got} does not match manifest-checksum {checksum}")


def toc_offset_hint(annotations: Mapping[str, str]) -> int | None:
    """The TOC offset from zstd:chunked's ``manifest-position`` (``offset:len:ulen:type``)."""
    for key in MANIFEST_POSITION:
        value = annotations.get(key)
        if value:
            try:
                return int(value.split(":")[0])
            except ValueError as err:
                raise MountError(f"malformed {key} annotation {value!r}") from err
    return None


def _declared_size(digest: str, annotations: Mapping[str, str]) -> int | None:
    """The layer's declared uncompressed size, which no file in it can exceed (None: not declared)."""
    declared = annotations.get(UNCOMPRESSED_SIZE)
    if not declared:
        return None
    try:
        size = int(declared, 10)
    except ValueError:
        size = -1
    if size < 0:
        raise MountError(f"layer {digest}: malformed {UNCOMPRESSED_SIZE} annotation {declared[:40]!r}")
    return size


def open_toc(digest: str, annotations: Mapping[str, str], src: RecordingSource,
             external_toc: ExternalToc | None) -> Any:
    """The verified ``LayerReader`` of a layer; records what it read for the next mount."""
    toc_digest = annotations.get(TOC_DIGEST)
    # A mount applies the entry rules extraction applies (strict), and bounds file sizes by the layer's.
    max_size = _declared_size(digest, annotations)
    hint = toc_offset_hint(annotations)
    if not toc_digest:
        cs = _checksum(annotations)
        if cs is None:
            raise MountError(f"layer {digest} has no {TOC_DIGEST} annotation: its TOC cannot be verified, "
                             f"refusing to mount it lazily")
        _verify_manifest_checksum(digest, src, *cs)
        try:
            reader = open_layer(src, toc_offset_hint=cs[1], strict=True, max_file_size=max_size)
        except FormatError as err:
            raise MountError(f"layer {digest}: cannot open its TOC: {err}") from err
        src.save()
        return reader
    extras: dict[str, bytes] = {}
    saved_ext = src.extra("external_toc")
    try:
        reader = open_layer(src, toc_digest=toc_digest, external_toc=saved_ext, toc_offset_hint=hint,
                            strict=True, max_file_size=max_size)
        if saved_ext is not None:
            extras["external_toc"] = saved_ext
    except FormatError as first:
        src.forget_saved()
        tail = src.tail(64) or src.read_at(max(0, src.size - 64), 64)
        try:
            if EXTERNAL_MARK in tail:
                if external_toc is None:
                    raise MountError(f"layer {digest} keeps its TOC in a separate image, and no registry "
                                     f"reference is known to find it") from first
                blob = external_toc()
                reader = open_layer(src, toc_digest=toc_digest, external_toc=blob, strict=True,
                                    max_file_size=max_size)
                extras["external_toc"] = blob
            else:
                reader = open_layer(src, toc_digest=toc_digest, toc_offset_hint=hint, strict=True,
                                    max_file_size=max_size)
        except FormatError as err:
            raise MountError(f"layer {digest}: cannot open its TOC: {err}") from err
    try:
        src.save(extras)
    except OSError as err:
        log.warning("layer %s: could not save its TOC for the next mount: %s", digest, err)
    return reader


def fetch_external_toc(client: Any, ref: Any, layer_digest: str) -> bytes:
    """The TOC blob of ``layer_digest`` from the ``<tag>-esgztoc`` image next to ``ref`` (format.md 2.3)."""
    if not getattr(ref, "tag", None):
        raise MountError(f"layer {layer_digest} has an external TOC, but {ref} has no tag to find it by")
    toc_ref = dataclasses.replace(ref, tag=ref.tag + TOC_IMAGE_SUFFIX, digest=None)
    raw = client.get_manifest(toc_ref)[0]
    manifest = _json(raw, toc_ref)
    if "manifests" in manifest:       # an index: take the first manifest (the TOC image has one)
        entries = manifest.get("manifests") or []
        if not entries:
            raise MountError(f"external TOC index {toc_ref} lists no manifest")
        by_digest = dataclasses.replace(toc_ref, tag=None, digest=entries[0]["digest"])
        manifest = _json(client.get_manifest(by_digest)[0], by_digest)
    for layer in manifest.get("layers") or []:
        if (layer.get("annotations") or {}).get(LAYER_DIGEST) == layer_digest:
            buf = io.BytesIO()
            client.get_blob(toc_ref, layer["digest"], buf)
            return buf.getvalue()
    raise MountError(f"TOC of layer {layer_digest} not found in {toc_ref}")


def _json(raw: bytes, ref: Any) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as err:
        raise MountError(f"manifest of {ref} is not JSON") from err
    if not isinstance(doc, dict):
        raise MountError(f"manifest of {ref} is not a JSON object")
    return doc


def record_path(layer_dir: Path) -> Path:
    """Where the footer/TOC bytes of a layer are kept between mounts."""
    return layer_dir / "toc.record"
