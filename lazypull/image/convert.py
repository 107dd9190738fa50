"""Image conversion (``lazypull image convert``): a function from an image to a new image.

What nerdctl / ctr-remote produce (format.md 1.11, 2.3, 2.4, 3.1): every layer rebuilt with
``lazypull.format.build`` (eStargz or zstd:chunked) or re-compressed; layer annotations
``containerd.io/snapshot/stargz/toc.digest`` and ``io.containers.estargz.uncompressed-size`` (+ the
zstd:chunked manifest checksum/position); a new config whose ``rootfs.diff_ids`` are the new DiffIDs
(unchanged with keep-diff-id); a new manifest, and a new index when the source is an index (platforms
not converted are dropped, as containerd's converter does). ``--oci`` turns Docker media types into OCI
ones. With an external TOC, the TOC blobs form a separate single-manifest "TOC image".

Layers convert in parallel (one thread per layer, the writer itself uses two); each distinct layer
once. New blobs go into the sink (the store or an OCI layout) atomically; the sink's ``put_image`` /
``add_entry`` names the result afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal, Protocol, cast

from zlib_ng import zlib_ng

from lazypull.format.annotations import BLOB_LAYOUT_ANNOTATIONS, UNCOMPRESSED_DIGEST_ANNOTATION
from lazypull.image import mediatypes as mt
from lazypull.image.blobs import BlobInfo, BlobWriter
from lazypull.image.digest import check_diff_id, sha256_bytes
from lazypull.image.errors import DigestMismatchError, ImageError, PlatformNotFoundError
from lazypull.image.model import Image, ImageIndex, Layer, Root
from lazypull.image.progress import NULL_PROGRESS, Progress, counting_reader
from lazypull.image.record import Record
from lazypull.registry import Descriptor, Platform

log = logging.getLogger(__name__)

LayerFormat = Literal["estargz", "zstdchunked", "uncompress", "gzip"]


class BlobSink(Protocol):
    """Where converted blobs go: the store or an OCI layout."""

    def has_blob(self, digest: str) -> bool: ...

    def put_blob(self, data: bytes | BinaryIO, expected_digest: str | None = None,
                 expected_size: int | None = None) -> BlobInfo: ...

    def ingest(self, expected_digest: str | None = None, expected_size: int | None = None) -> Any: ...


@dataclass(frozen=True)
class ConvertOptions:
    """What ``image convert`` was asked to do (nerdctl's flags, defaults as nerdctl's)."""

    layer_format: LayerFormat | None = None
    oci: bool = False
    estargz_level: int = 9
    estargz_chunk_size: int = 0
    estargz_min_chunk_size: int = 0
    estargz_external_toc: bool = False
    estargz_keep_diff_id: bool = False
    record: Record | None = None
    zstd_level: int = 3
    zstd_chunk_size: int = 0
    gzip_level: int = 6
    platforms: list[Platform] | None = None     # None: all platforms
    workers: int | None = None                  # layers converted at once (default: CPUs, at most 4)
    writer_threads: int = 2

    def check(self) -> None:
        """Refuse combinations nerdctl refuses."""
        if self.estargz_keep_diff_id and not self.estargz_external_toc:
            raise ImageError("option --estargz-keep-diff-id must be used with --estargz-external-toc")
        if (self.estargz_external_toc or self.estargz_keep_diff_id or self.estargz_min_chunk_size) \
                and self.layer_format != "estargz":
            raise ImageError("--estargz-external-toc, --estargz-keep-diff-id and --estargz-min-chunk-size "
                             "need --estargz")
        if self.record and self.layer_format not in ("estargz", "zstdchunked"):
            raise ImageError("--estargz-record-in needs --estargz (--zstdchunked-record-in: --zstdchunked)")
        if self.record and self.estargz_keep_diff_id:
            raise ImageError("--estargz-record-in cannot be used with --estargz-keep-diff-id "
                             "(lossless conversion keeps the original file order)")
        if not 0 <= self.estargz_level <= 9:
            raise ImageError(f"invalid --estargz-compression-level {self.estargz_level} (0-9)")
        if not 1 <= self.zstd_level <= 22:
            raise ImageError(f"invalid --zstdchunked-compression-level {self.zstd_level} (1-22)")
        for name, value in (("--estargz-chunk-size", self.estargz_chunk_size),
                            ("--estargz-min-chunk-size", self.estargz_min_chunk_size),
                            ("--zstdchunked-chunk-size", self.zstd_chunk_size)):
            if value < 0:
                raise ImageError(f"invalid {name} {value}: must not be negative")


@dataclass(frozen=True)
class ConvertedLayer:
    """One layer's conversion: the new descriptor and DiffID, and the TOC blob if external."""

    source: Descriptor
    desc: Descriptor
    diff_id: str | None          # None: unchanged (take the source's)
    toc_blob: Descriptor | None = None
    missed: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConvertResult:
    """The new root (manifest or index) and, with an external TOC, the TOC image's manifest."""

    root: Descriptor
    toc_image: Descriptor | None = None
    layers: list[ConvertedLayer] = field(default_factory=list)
    added: list[str] = field(default_factory=list)


def _desc_json(desc: Descriptor) -> dict[str, Any]:
    """A descriptor as Go marshals it: struct fields in order, map keys (annotations) sorted."""
    out = desc.to_json()
    if "annotations" in out:
        out["annotations"] = {k: out["annotations"][k] for k in sorted(out["annotations"])}
    return out


def _go_json(value: Any) -> bytes:
    """Compact JSON as Go's encoder writes it (no spaces; UTF-8; <, >, &, U+2028, U+2029 escaped)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode()


class _Converter:
    def __init__(self, sink: BlobSink, options: ConvertOptions, progress: Progress) -> None:
        self.sink = sink
        self.options = options
        self.progress = progress
        self.added: list[str] = []
        self._layer_futures: dict[str, Future[ConvertedLayer]] = {}
        self._lock = threading.Lock()
        workers = options.workers or min(4, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="convert")

    # ---- blobs ----

    def put(self, data: bytes) -> Descriptor:
        digest = sha256_bytes(data)
        if not self.sink.has_blob(digest):
            self.sink.put_blob(data, digest, len(data))
            with self._lock:
                self.added.append(digest)
        return Descriptor("", digest, len(data))

    def ensure_blob(self, layer: Layer) -> None:
        """Copy an unchanged layer blob into the sink if it lacks it (e.g. layout -> store)."""
        if self.sink.has_blob(layer.digest()):
            return
        with layer.compressed() as src:
            self.sink.put_blob(src, layer.digest(), layer.size())
        with self._lock:
            self.added.append(layer.digest())

    # ---- layers ----

    def layer(self, layer: Layer, manifest_digest: str, index: int) -> Future[ConvertedLayer]:
        key = layer.digest()
        files: tuple[str, ...] = ()
        if self.options.record:
            files = tuple(self.options.record.files_for(manifest_digest, index))
            key = f"{key}:{hashlib.sha256(json.dumps(files).encode()).hexdigest()}"
        with self._lock:
            future = self._layer_futures.get(key)
            if future is None:
                future = self.pool.submit(self.convert_layer, layer, list(files))
                self._layer_futures[key] = future
        return future

    def convert_layer(self, layer: Layer, files: list[str]) -> ConvertedLayer:
        desc = layer.descriptor()
        fmt = self.options.layer_format
        media = desc.media_type
        if fmt is None or media in mt.NON_DISTRIBUTABLE:
            self.ensure_blob(layer)
            return ConvertedLayer(desc, self._retype(desc, media), None)
        key = desc.digest
        self.progress.start(key, f"layer-{desc.digest}", desc.size)
        try:
            if fmt in ("estargz", "zstdchunked"):
                result = self._build(layer, files)
            else:
                result = self._recompress(layer, fmt)
        except BaseException:
            self.progress.finish(key, "failed")
            raise
        self.progress.finish(key, "done")
        return result

    def _retype(self, desc: Descriptor, media: str) -> Descriptor:
        if self.options.oci:
            media = mt.to_oci(media)
        return Descriptor(media, desc.digest, desc.size, dict(desc.annotations), desc.platform, desc.urls)

    def _source(self, layer: Layer) -> BinaryIO:
        key = layer.digest()
        return counting_reader(layer.compressed(), self.progress, key)

    def _build(self, layer: Layer, files: list[str]) -> ConvertedLayer:
        from lazypull.format import BuildOptions, FormatError, build

        o = self.options
        desc = layer.descriptor()
        zstd = o.layer_format == "zstdchunked"
        build_options = BuildOptions(
            compression="zstd" if zstd else "gzip",
            level=o.zstd_level if zstd else o.estargz_level,
            chunk_size=o.zstd_chunk_size if zstd else o.estargz_chunk_size,
            min_chunk_size=0 if zstd else o.estargz_min_chunk_size,
            prioritized_files=files if files else None,
            external_toc=o.estargz_external_toc,
            keep_diff_id=o.estargz_keep_diff_id,
            parallelism=o.writer_threads,
        )
        with self.sink.ingest() as writer:
            w = cast(BlobWriter, writer)
            try:
                with self._source(layer) as src:
                    res = build(src, cast(BinaryIO, w), build_options)
            except FormatError as err:
                raise ImageError(f"converting layer {desc.digest}: {err}") from err
            info = w.commit()
        if info.digest != res.blob_digest or info.size != res.blob_size:
            raise DigestMismatchError(f"converting layer {desc.digest}: writer reported {res.blob_digest} "
                                      f"({res.blob_size} B) but wrote {info.digest} ({info.size} B)")
        with self._lock:
            self.added.append(info.digest)
        if o.estargz_keep_diff_id and res.diff_id != layer.diff_id():
            raise DigestMismatchError(f"converting layer {desc.digest} losslessly changed its DiffID "
                                      f"from {layer.diff_id()} to {res.diff_id}")
        annotations = {k: v for k, v in desc.annotations.items() if k not in BLOB_LAYOUT_ANNOTATIONS}
        annotations.update(res.annotations)
        annotations[mt.TOC_DIGEST] = res.toc_digest
        annotations[mt.UNCOMPRESSED_SIZE] = str(res.uncompressed_size)
        if UNCOMPRESSED_DIGEST_ANNOTATION in annotations and not o.estargz_keep_diff_id:
            annotations[UNCOMPRESSED_DIGEST_ANNOTATION] = res.diff_id     # the new blob's DiffID
        if zstd:
            media = mt.OCI_LAYER_ZSTD
        else:
            media = mt.with_compression(desc.media_type, "gzip")
            if o.oci:
                media = mt.to_oci(media)
        toc_desc = None
        if res.toc_blob is not None:
            put = self.put(res.toc_blob)
            toc_desc = Descriptor(mt.OCI_LAYER_GZIP, put.digest, put.size,
                                  {mt.TOC_LAYER_DIGEST: info.digest})
        if res.missed:
            log.info("layer %s: prioritized files not found: %s", desc.digest, ", ".join(res.missed))
        return ConvertedLayer(desc, Descriptor(media, info.digest, info.size, annotations, None, ()),
                              None if o.estargz_keep_diff_id else res.diff_id, toc_desc, tuple(res.missed))

    def _recompress(self, layer: Layer, fmt: str) -> ConvertedLayer:
        desc = layer.descriptor()
        compression: Literal["none", "gzip"] = "none" if fmt == "uncompress" else "gzip"
        h = hashlib.sha256()
        n = 0
        from lazypull.format.compression import DECOMPRESS_ERRORS
        from lazypull.image.compression import decompressed

        with self.sink.ingest() as writer:
            w = cast(BlobWriter, writer)
            comp = zlib_ng.compressobj(self.options.gzip_level, zlib_ng.DEFLATED, 31) \
                if compression == "gzip" else None
            try:
                with decompressed(self._source(layer), mt.layer_compression(desc.media_type)) as tar:
                    while chunk := tar.read(1 << 20):
                        h.update(chunk)
                        n += len(chunk)
                        w.write(comp.compress(chunk) if comp else chunk)
            except DECOMPRESS_ERRORS as err:
                raise ImageError(f"layer {desc.digest}: cannot decompress: {err}") from err
            if comp:
                w.write(comp.flush())
            info = w.commit()
        with self._lock:
            self.added.append(info.digest)
        diff_id = "sha256:" + h.hexdigest()
        check_diff_id(f"layer {desc.digest}", diff_id, layer.diff_id())
        media = mt.with_compression(desc.media_type, compression)
        if self.options.oci:
            media = mt.to_oci(media)
        annotations = {k: v for k, v in desc.annotations.items() if k not in BLOB_LAYOUT_ANNOTATIONS}
        return ConvertedLayer(desc, Descriptor(media, info.digest, info.size, annotations, None, desc.urls),
                              None)

    # ---- manifests ----

    def image(self, image: Image) -> tuple[Descriptor, list[ConvertedLayer]]:
        manifest = image.manifest()
        layers = image.layers()
        futures = [self.layer(layer, image.digest(), i) for i, layer in enumerate(layers)]
        converted = [f.result() for f in futures]
        config = image.config()
        config_desc = image.config_descriptor()
        diff_ids = [c.diff_id or layers[i].diff_id() for i, c in enumerate(converted)]
        old_ids = ((config.get("rootfs") or {}).get("diff_ids")) or []
        if diff_ids != old_ids:
            rootfs = dict(config.get("rootfs") or {"type": "layers"})
            config["rootfs"] = {"type": rootfs.get("type", "layers"), "diff_ids": diff_ids}
        config_media = mt.to_oci(config_desc.media_type) if self.options.oci else config_desc.media_type
        if diff_ids != old_ids or config_media != config_desc.media_type:
            # containerd re-marshals the config as a Go map: keys sorted, values compact.
            new_config = self.put(_go_json({k: config[k] for k in sorted(config)}))
        else:
            raw = image.raw_config()
            new_config = self.put(raw)
        manifest_media = mt.to_oci(image.media_type()) if self.options.oci else image.media_type()
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": manifest_media}
        if isinstance(manifest.get("artifactType"), str):
            out["artifactType"] = manifest["artifactType"]
        out["config"] = _desc_json(Descriptor(config_media, new_config.digest, new_config.size,
                                              dict(config_desc.annotations)))
        out["layers"] = [_desc_json(c.desc) for c in converted]
        if isinstance(manifest.get("subject"), dict):
            out["subject"] = manifest["subject"]
        return self._write_root(out, manifest, image.descriptor()), converted

    def index(self, index: ImageIndex, depth: int = 0) -> tuple[Descriptor, list[ConvertedLayer]]:
        if depth > 4:
            raise ImageError(f"index {index.digest()}: indexes nested too deeply")
        doc = index.manifest()
        entries = index.manifests()
        new_entries: list[Descriptor] = []
        layers: list[ConvertedLayer] = []
        for entry in entries:
            if mt.is_attestation(entry.annotations):
                continue  # its subject is a manifest this conversion replaces
            if self.options.platforms is not None and entry.platform is not None \
                    and not any(p.matches(entry.platform) for p in self.options.platforms):
                continue
            if mt.is_manifest(entry.media_type):
                new, conv = self.image(index.image(entry))
            elif mt.is_index(entry.media_type):
                new, conv = self.index(index.index(entry), depth + 1)
            else:
                continue
            new_entries.append(new)
            layers.extend(conv)
        if not new_entries:
            wanted = ", ".join(str(p) for p in self.options.platforms or [])
            raise PlatformNotFoundError(f"index {index.digest()}: no manifest for platform {wanted} "
                                        "to convert")
        media = mt.to_oci(index.media_type()) if self.options.oci else index.media_type()
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": media,
                               "manifests": [_desc_json(e) for e in new_entries]}
        return self._write_root(out, doc, index.descriptor()), layers

    def _write_root(self, out: dict[str, Any], source_doc: dict[str, Any], old: Descriptor) -> Descriptor:
        """Store a new manifest or index ``out`` (its mediaType set) with the source document's annotations
        (keys sorted, as Go writes them); its descriptor keeps the old one's annotations, platform, urls."""
        if isinstance(source_doc.get("annotations"), dict):
            out["annotations"] = dict(sorted(source_doc["annotations"].items()))
        written = self.put(_go_json(out))
        return Descriptor(out["mediaType"], written.digest, written.size, dict(old.annotations), old.platform,
                          old.urls)

    def toc_image(self, layers: list[ConvertedLayer]) -> Descriptor | None:
        tocs = {c.toc_blob.digest: c.toc_blob for c in layers if c.toc_blob is not None}
        if not tocs:
            return None
        config = self.put(b"{}")
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": config.digest, "size": config.size},
            "layers": [_desc_json(tocs[d]) for d in sorted(tocs)],
        }
        written = self.put(_go_json(manifest))
        return Descriptor(mt.OCI_MANIFEST, written.digest, written.size)


def convert_image(src: Root, sink: BlobSink, options: ConvertOptions,
                  progress: Progress = NULL_PROGRESS) -> ConvertResult:
    """Convert ``src`` into new blobs in ``sink``; the caller names the result.

    Hold ``Store.lease()`` around this and the naming, so pruning cannot take the new blobs. If the
    conversion fails, the blobs it added that nothing references are discarded (when the sink can).
    """
    options.check()
    conv = _Converter(sink, options, progress)
    try:
        if mt.is_index(src.media_type()):
            root, layers = conv.index(cast(ImageIndex, src))
        else:
            root, layers = conv.image(cast(Image, src))
        toc = conv.toc_image(layers) if options.estargz_external_toc else None
        root = Descriptor(root.media_type, root.digest, root.size)
        return ConvertResult(root, toc, layers, list(conv.added))
    except BaseException:
        conv.pool.shutdown(wait=True, cancel_futures=True)
        discard = getattr(sink, "discard_unreferenced", None)
        if callable(discard):
            discard(list(conv.added))
        raise
    finally:
        conv.pool.shutdown(wait=True, cancel_futures=True)
