"""Workload-based optimisation (``lazypull image optimize``): the image's files in the order a run uses them.

What ``ctr-remote image optimize`` does, in three steps:

1. SRC (one platform) is converted to a temporary plain eStargz image in the store, so that every
   layer can be mounted lazily; eStargz at gzip level 1, since it only lives for the run;
2. a *workload* (the caller: it needs the mount server and runc, which this package may not import)
   runs that image for a while and reports, per temporary layer digest, the files the layer served
   with their first-access time;
3. the accesses become a ctr-remote record (JSON lines ``{"path", "manifestDigest", "layerIndex"}``,
   in first-access order over all layers, naming SRC's manifest) and SRC is converted to DST with it
   (``convert_image`` with ``ConvertOptions.record``): each layer has the files its run read first,
   then ``.prefetch.landmark``, then the rest.

The temporary image is removed (name and blobs) whatever happens. Hold ``store.lease()`` around
:func:`optimize_image` and the naming of DST.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from lazypull.image import mediatypes as mt
from lazypull.image.convert import BlobSink, ConvertOptions, ConvertResult, convert_image
from lazypull.image.errors import ImageError, PlatformNotFoundError
from lazypull.image.model import Image, ImageIndex, Root
from lazypull.image.progress import NULL_PROGRESS, Progress
from lazypull.image.record import parse_record
from lazypull.image.store import Store, normalize_name
from lazypull.registry import Platform

TEMPORARY_REPOSITORY = "localhost/lazypull-optimize"
TEMPORARY_LEVEL = 1

# (temporary image name, its layer digests bottom first) -> {layer digest: [(path, first access ns)]}
Workload = Callable[[str, list[str]], Mapping[str, Sequence[tuple[str, int]]]]


@dataclass(frozen=True)
class RecordEntry:
    """One line of a ctr-remote record: a file the workload used, and the layer that served it."""

    path: str
    manifest_digest: str
    layer_index: int

    def to_json(self) -> str:
        """The line as ctr-remote writes it (Go's encoder: field order, compact, HTML characters
        escaped, newline). A name that is not UTF-8 (surrogate-escaped bytes) keeps its bytes as
        ``\\udcXX`` escapes, which lazypull's record reader turns back into the same name."""
        text = json.dumps({"path": self.path, "manifestDigest": self.manifest_digest,
                           "layerIndex": self.layer_index}, separators=(",", ":"), ensure_ascii=False)
        for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                              ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
            text = text.replace(char, escaped)
        return text.encode("utf-8", "backslashreplace").decode("utf-8") + "\n"


@dataclass(frozen=True)
class OptimizeResult:
    """DST's conversion, the record it was converted with, and SRC's manifest the record names."""

    convert: ConvertResult
    entries: list[RecordEntry]
    manifest_digest: str


def select_image(root: Root, platform: Platform, depth: int = 0) -> Image:
    """The image of ``root`` for ``platform`` (``root`` itself when it is a single manifest)."""
    if not mt.is_index(root.media_type()):
        return cast(Image, root)
    if depth > 4:
        raise ImageError(f"index {root.digest()}: indexes nested too deeply")
    index = cast(ImageIndex, root)
    for entry in index.manifests():
        if mt.is_attestation(entry.annotations):
            continue
        if entry.platform is not None and not platform.matches(entry.platform):
            continue
        if mt.is_manifest(entry.media_type):
            return index.image(entry)
        if mt.is_index(entry.media_type):
            try:
                return select_image(index.index(entry), platform, depth + 1)
            except PlatformNotFoundError:
                continue
    raise PlatformNotFoundError(f"index {root.digest()} has no image for platform {platform}")


def build_record(manifest_digest: str, layer_digests: Sequence[str],
                 accesses: Mapping[str, Sequence[tuple[str, int]]]) -> list[RecordEntry]:
    """Record entries in first-access order over all layers, each path once.

    A layer digest appearing at several indexes (identical layers) is one mount: its files are
    given to the topmost of those indexes, the one overlayfs reads them from.
    """
    top_index = {digest: i for i, digest in enumerate(layer_digests)}
    timed: list[tuple[int, int, int, str]] = []
    for digest, files in accesses.items():
        if digest not in top_index:
            raise ImageError(f"accesses reported for layer {digest}, which the image does not have")
        index = top_index[digest]
        timed.extend((time_ns, index, n, path) for n, (path, time_ns) in enumerate(files))
    timed.sort()
    seen: set[str] = set()
    entries: list[RecordEntry] = []
    for _, index, _, path in timed:
        if path not in seen:
            seen.add(path)
            entries.append(RecordEntry(path, manifest_digest, index))
    return entries


def is_temporary(name: str) -> bool:
    """Whether a store name is one of optimize's temporary images."""
    return normalize_name(name).startswith(TEMPORARY_REPOSITORY + ":")


def temporary_name() -> str:
    """A fresh store name for the temporary eStargz image."""
    return normalize_name(f"{TEMPORARY_REPOSITORY}:{secrets.token_hex(8)}")


def final_options(options: ConvertOptions, platform: Platform) -> ConvertOptions:
    """DST's conversion options, checked (call before the run, so bad flags fail at once)."""
    if options.layer_format not in ("estargz", "zstdchunked"):
        raise ImageError("optimize converts to eStargz or zstd:chunked: give --estargz (default) "
                         "or --zstdchunked")
    final = dataclasses.replace(options, platforms=[platform], record=None)
    final.check()
    return final


@dataclass(frozen=True)
class Temporary:
    """The temporary eStargz copy of SRC's platform image, named in the store while it is run."""

    name: str
    image: Image                  # SRC's image for the platform (its digest is the record's manifest)
    layer_digests: list[str]      # the copy's layers, bottom first (one per SRC layer)
    added: list[str]              # blobs the copy added to the store

    def discard(self, store: Store) -> None:
        """Drop the name and the blobs only the copy used."""
        if store.find_image(self.name) is not None:
            store.remove(self.name)
        store.discard_unreferenced(list(self.added))


def make_temporary(store: Store, src: Root, platform: Platform, progress: Progress = NULL_PROGRESS, *,
                   labels: Mapping[str, str] | None = None) -> Temporary:
    """Convert SRC's ``platform`` image to plain eStargz in the store and name it (lazily mountable),
    with ``labels`` on the name (who made it, so a later run can clean up after one that died)."""
    image = select_image(src, platform)
    options = ConvertOptions(layer_format="estargz", oci=True, estargz_level=TEMPORARY_LEVEL)
    converted = convert_image(image, store, options, progress)
    temp = Temporary(temporary_name(), image, [layer.desc.digest for layer in converted.layers],
                     list(converted.added))
    try:
        store.put_image(temp.name, converted.root, labels=dict(labels or {}))
    except BaseException:
        temp.discard(store)
        raise
    return temp


def convert_with_record(src: Root, sink: BlobSink, options: ConvertOptions, platform: Platform,
                        entries: Sequence[RecordEntry], progress: Progress = NULL_PROGRESS) -> ConvertResult:
    """SRC converted into ``sink`` with the record's files first in each layer (none: no prefetch)."""
    final = final_options(options, platform)
    text = "".join(e.to_json() for e in entries)
    record = parse_record(text, "the recorded workload") if entries else None
    return convert_image(src, sink, dataclasses.replace(final, record=record), progress)


def optimize_image(store: Store, src: Root, sink: BlobSink, options: ConvertOptions, platform: Platform,
                   workload: Workload | None, progress: Progress = NULL_PROGRESS) -> OptimizeResult:
    """Record ``workload`` on SRC's ``platform`` image, then convert SRC into ``sink`` with the record.

    ``options`` says DST's layer format (eStargz or zstd:chunked) and the usual conversion flags;
    its ``platforms`` is replaced by ``[platform]``. No ``workload``: nothing is run and DST has no
    prioritised files (``--no-optimize``). The caller names the result.
    """
    final_options(options, platform)
    image = select_image(src, platform)
    entries: list[RecordEntry] = []
    if workload is not None:
        temp = make_temporary(store, src, platform, progress)
        try:
            accesses = workload(temp.name, temp.layer_digests)
        finally:
            temp.discard(store)
        entries = build_record(image.digest(), temp.layer_digests, accesses)
    result = convert_with_record(src, sink, options, platform, entries, progress)
    return OptimizeResult(result, entries, image.digest())


__all__ = ["OptimizeResult", "RecordEntry", "Temporary", "Workload", "build_record", "convert_with_record",
           "final_options", "is_temporary", "make_temporary", "optimize_image", "select_image",
           "temporary_name"]
