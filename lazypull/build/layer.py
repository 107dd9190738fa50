"""A step's layer into the content store: gzip tar, or straight to eStargz / zstd:chunked.

The diff tar is written to a temp file once (it also gives the DiffID), then compressed into the
store through an ingest writer (verified, fsynced, renamed). The lazy formats use the format
package's writer, so the layer carries the TOC annotations that make it lazily mountable.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, cast

from lazypull.build.errors import BuildError
from lazypull.format.layerkind import layer_kind
from lazypull.image import Store
from lazypull.image import mediatypes as mt
from lazypull.registry import Descriptor

LayerFormat = Literal["gzip", "estargz", "zstdchunked"]


@dataclass(frozen=True)
class BuiltLayer:
    """A layer in the store: its descriptor (with annotations) and DiffID."""

    descriptor: Descriptor
    diff_id: str


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def store_layer(store: Store, tar_path: Path, layer_format: LayerFormat) -> BuiltLayer:
    """Compress the uncompressed layer tar at ``tar_path`` into ``store``."""
    if layer_format == "gzip":
        diff_id = _sha256_file(tar_path)
        with store.ingest() as writer, open(tar_path, "rb") as src:
            with gzip.GzipFile(fileobj=cast(BinaryIO, writer), mode="wb", compresslevel=6, mtime=0) as gz:
                shutil.copyfileobj(src, gz, 1 << 20)
            info = writer.commit()
        return BuiltLayer(Descriptor(mt.OCI_LAYER_GZIP, info.digest, info.size), diff_id)
    return _write_lazy(store, tar_path, layer_format)


def in_format(desc: Descriptor, layer_format: LayerFormat) -> bool:
    """Whether a layer already is what a build with ``layer_format`` writes (gzip: anything goes)."""
    if layer_format == "gzip":
        return True
    compression = "gzip" if layer_format == "estargz" else "zstd"
    return (layer_kind(desc.annotations, desc.media_type) == layer_format
            and mt.layer_compression(desc.media_type) == compression)


def convert_blob(store: Store, blob: Path, layer_format: LayerFormat) -> BuiltLayer:
    """A stored layer blob (gzip, zstd or plain tar) rewritten as ``layer_format``, into the store."""
    return _write_lazy(store, blob, layer_format)


def _write_lazy(store: Store, path: Path, layer_format: LayerFormat) -> BuiltLayer:
    from lazypull.format import BuildOptions, FormatError, build

    zstd = layer_format == "zstdchunked"
    with store.ingest() as writer, open(path, "rb") as src:
        try:
            result = build(src, cast(BinaryIO, writer), BuildOptions(compression="zstd" if zstd else "gzip"))
        except FormatError as err:
            raise BuildError(f"writing the layer as {layer_format}: {err}") from err
        info = writer.commit()
    if info.digest != result.blob_digest:       # the DiffID is the blob's own (TOC and landmarks in it)
        raise BuildError(f"the {layer_format} writer reported {result.blob_digest} but wrote {info.digest}")
    annotations = dict(result.annotations)
    annotations[mt.TOC_DIGEST] = result.toc_digest
    annotations[mt.UNCOMPRESSED_SIZE] = str(result.uncompressed_size)
    media = mt.OCI_LAYER_ZSTD if zstd else mt.OCI_LAYER_GZIP
    return BuiltLayer(Descriptor(media, info.digest, info.size, annotations), result.diff_id)
