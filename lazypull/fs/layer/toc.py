"""Opening one layer's TOC before mounting: footer and TOC through the blob source, authenticated by
what the layer's descriptor says (``format.layerkind.LayerSpec``: ``toc.digest``, or zstd:chunked's
``manifest-checksum``; none, no lazy mount), the TOC-offset hint of zstd:chunked, and external TOCs
(format.md 2.3), whose bytes the caller finds (``lazypull.image.tocimage``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from lazypull.errors import MountError
from lazypull.format import FormatError, LayerReader, open_layer
from lazypull.format.annotations import TOC_DIGEST_ANNOTATION
from lazypull.format.footer import EXTERNAL_TOC_MARK
from lazypull.format.layerkind import LayerSpec
from lazypull.fs.remote import RecordingSource

log = logging.getLogger(__name__)

TAIL_READ = 64 << 10

ExternalToc = Callable[[], bytes]


def layer_spec(digest: str, annotations: Mapping[str, str], size: int | None = None) -> LayerSpec:
    """The descriptor's ``LayerSpec``; a malformed annotation is a ``MountError`` naming it."""
    try:
        return LayerSpec.from_descriptor(digest, size, "", annotations)
    except FormatError as err:
        raise MountError(str(err)) from err


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


def open_toc(digest: str, annotations: Mapping[str, str] | LayerSpec, src: RecordingSource,
             external_toc: ExternalToc | None) -> LayerReader:
    """The verified ``LayerReader`` of a layer; records what it read for the next mount."""
    spec = annotations if isinstance(annotations, LayerSpec) else layer_spec(digest, annotations, src.size)
    toc_digest = spec.toc_digest
    # A mount applies the entry rules extraction applies (strict), and bounds file sizes by the layer's.
    max_size = spec.uncompressed_size
    hint = spec.toc_offset_hint
    if not toc_digest:
        if spec.manifest_checksum is None or spec.toc_position is None:
            raise MountError(f"layer {digest} has no {TOC_DIGEST_ANNOTATION} annotation: its TOC cannot be "
                             f"verified, refusing to mount it lazily")
        offset, length = spec.toc_position
        _verify_manifest_checksum(digest, src, spec.manifest_checksum, offset, length)
        try:
            # The reader checks the TOC it parses (found by the footer) against the checksum too: the
            # footer may point elsewhere than manifest-position.
            reader = open_layer(src, toc_digest=spec.manifest_checksum, toc_offset_hint=offset, strict=True,
                                max_file_size=max_size)
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
            if EXTERNAL_TOC_MARK in tail:
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


def record_path(layer_dir: Path) -> Path:
    """Where the footer/TOC bytes of a layer are kept between mounts."""
    return layer_dir / "toc.record"
