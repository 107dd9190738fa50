"""What a layer descriptor says about reading its blob: the one place deciding whether a layer is lazy
(eStargz, zstd:chunked) or plain, and what opens it lazily (expected TOC digest, TOC position, declared
size), so that pull, mount, run and the podman store never disagree.

A layer is lazy when its TOC can be authenticated from the descriptor alone: by ``toc.digest`` (sha256 of
the TOC JSON; eStargz, and zstd:chunked as stargz-snapshotter writes it), or by containers/storage's
``manifest-checksum`` with its ``manifest-position`` (same key prefix). Anything else is plain: it is
downloaded and extracted whole. The kind is decided by which keys are present (never by their values),
so a malformed value still names the layer lazy and fails, with its key named, when it is opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from lazypull.format.annotations import (
    CS_MANIFEST_CHECKSUM_ANNOTATION,
    CS_MANIFEST_POSITION_ANNOTATION,
    MANIFEST_CHECKSUM_ANNOTATION,
    MANIFEST_POSITION_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
)
from lazypull.format.errors import FormatError

LayerKind = Literal["estargz", "zstdchunked", "plain"]

# (checksum key, position key), containers/storage's prefix first (what podman writes and checks).
_CHECKSUM_AND_POSITION = ((CS_MANIFEST_CHECKSUM_ANNOTATION, CS_MANIFEST_POSITION_ANNOTATION),
                          (MANIFEST_CHECKSUM_ANNOTATION, MANIFEST_POSITION_ANNOTATION))
# The TOC-offset hint, stargz-snapshotter's spelling first (what it reads).
_POSITION_KEYS = (MANIFEST_POSITION_ANNOTATION, CS_MANIFEST_POSITION_ANNOTATION)
_ZSTD_KEYS = frozenset(k for pair in _CHECKSUM_AND_POSITION for k in pair)


def _paired_checksum(annotations: Mapping[str, str]) -> tuple[str, str] | None:
    """The (checksum key, position key) both present with one prefix, or None."""
    for keys in _CHECKSUM_AND_POSITION:
        if annotations.get(keys[0]) and annotations.get(keys[1]):
            return keys
    return None


def layer_kind(annotations: Mapping[str, str] | None, media_type: str = "") -> LayerKind:
    """The kind of a layer from its descriptor: ``plain`` unless its TOC can be authenticated by an
    annotation. ``media_type`` may be empty (containerd's remote-snapshot labels carry none)."""
    if not annotations:
        return "plain"
    if annotations.get(TOC_DIGEST_ANNOTATION):
        # the media type names the compression; without one, zstd:chunked's own keys tell
        zstd = "zstd" in media_type if media_type else any(annotations.get(k) for k in _ZSTD_KEYS)
        return "zstdchunked" if zstd else "estargz"
    return "zstdchunked" if _paired_checksum(annotations) is not None else "plain"


def is_lazy(annotations: Mapping[str, str] | None) -> bool:
    """Whether a layer may be mounted lazily (its TOC can be authenticated from its descriptor)."""
    return layer_kind(annotations) != "plain"


def parse_manifest_position(value: str) -> tuple[int, int, int, int]:
    """``offset:compressed:uncompressed:type`` -> integers (the offset is a TOC-offset hint)."""
    parts = value.split(":")
    try:
        numbers = tuple(int(p, 10) for p in parts)
    except ValueError as err:
        raise FormatError(f"manifest-position {value[:80]!r} is not four integers") from err
    if len(numbers) != 4 or min(numbers) < 0:
        raise FormatError(f"manifest-position {value[:80]!r} is not four non-negative integers")
    return numbers[0], numbers[1], numbers[2], numbers[3]


@dataclass(frozen=True)
class LayerSpec:
    """One layer as its descriptor describes it, checked once; build it with :meth:`from_descriptor`.

    ``toc_digest`` is the sha256 of the TOC JSON (``toc.digest``), else None; ``manifest_checksum`` and
    ``toc_position`` (offset, compressed length) authenticate a zstd:chunked TOC without it.
    """

    digest: str
    size: int | None                    # None: not declared (containerd's labels carry no size)
    media_type: str                     # "": not declared
    annotations: Mapping[str, str] = field(hash=False, compare=False)
    kind: LayerKind = "plain"
    toc_digest: str | None = None
    manifest_checksum: str | None = None
    toc_position: tuple[int, int] | None = None
    toc_offset_hint: int | None = None
    uncompressed_size: int | None = None

    @property
    def lazy(self) -> bool:
        """Whether the layer can be mounted lazily."""
        return self.kind != "plain"

    @classmethod
    def from_descriptor(cls, digest: str, size: int | None, media_type: str,
                        annotations: Mapping[str, str] | None) -> LayerSpec:
        """The spec of a layer descriptor; ``FormatError`` naming the layer and key for a malformed value."""
        ann = dict(annotations or {})
        kind = layer_kind(ann, media_type)
        if kind == "plain":
            return cls(digest, size, media_type, ann)
        checksum: str | None = None
        position: tuple[int, int] | None = None
        hint: int | None = None
        paired = _paired_checksum(ann)
        position_keys = (paired[1],) if paired is not None else _POSITION_KEYS
        for key in position_keys:
            value = ann.get(key)
            if value:
                try:
                    offset, length, _, _ = parse_manifest_position(value)
                except FormatError as err:
                    raise FormatError(f"layer {digest}: malformed {key} annotation: {err}") from None
                hint, position = offset, (offset, length)
                break
        if paired is not None:
            checksum = ann[paired[0]]
        return cls(digest, size, media_type, ann, kind, ann.get(TOC_DIGEST_ANNOTATION) or None, checksum,
                   position, hint, _declared_size(digest, ann))


def _declared_size(digest: str, annotations: Mapping[str, str]) -> int | None:
    """The layer's declared uncompressed size, which no file in it can exceed (None: not declared)."""
    declared = annotations.get(UNCOMPRESSED_SIZE_ANNOTATION)
    if not declared:
        return None
    try:
        size = int(declared, 10)
    except ValueError:
        size = -1
    if size < 0:
        raise FormatError(f"layer {digest}: malformed {UNCOMPRESSED_SIZE_ANNOTATION} annotation "
                          f"{declared[:40]!r}")
    return size
