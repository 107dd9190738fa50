"""zstd:chunked specifics: the TOC trailer and the annotations (format.md 3).

stargz-snapshotter dialect (what we write)::

    [zstd frames: same member rules as eStargz, one frame per chunk]
    [skippable frame 50 2a 4d 18 | u32 len | zstd(TOC JSON, tab-indented JTOC)]   <- TOC offset = here + 8
    [skippable frame 50 2a 4d 18 | 28 00 00 00 | u64 TOC offset | u64 compressed len
                                                | u64 JSON len | u64 type=1 | "GnUlInUx"]

No TOC tar entry and no end-of-archive marker: the DiffID covers the data frames only. Annotations:
``containerd.io/snapshot/stargz/toc.digest`` (sha256 of the JSON),
``io.containers.estargz.uncompressed-size``, ``io.containers.zstd-chunked.manifest-checksum``
(sha256 of the compressed TOC) and ``io.containers.zstd-chunked.manifest-position``
(``offset:compressed:uncompressed:1``).
containers/storage writes ``io.github.containers.zstd-chunked.*`` keys and a 64-byte footer instead;
readers accept both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from lazypull.format.annotations import TOC_DIGEST_ANNOTATION
from lazypull.format.compression import ZstdCompressor
from lazypull.format.errors import FormatError
from lazypull.format.footer import skippable_frame, zstd_footer

MANIFEST_CHECKSUM_ANNOTATION = "io.containers.zstd-chunked.manifest-checksum"
MANIFEST_POSITION_ANNOTATION = "io.containers.zstd-chunked.manifest-position"
CS_MANIFEST_CHECKSUM_ANNOTATION = "io.github.containers.zstd-chunked.manifest-checksum"
CS_MANIFEST_POSITION_ANNOTATION = "io.github.containers.zstd-chunked.manifest-position"
CS_TARSPLIT_POSITION_ANNOTATION = "io.github.containers.zstd-chunked.tarsplit-position"


def toc_trailer(compressor: ZstdCompressor, toc_json: bytes, at: int) -> tuple[bytes, dict[str, str], int]:
    """(bytes to append at blob offset ``at``, zstd annotations, TOC offset) for a finished TOC."""
    compressed = compressor.compress_whole(toc_json)
    toc_offset = at + 8
    trailer = skippable_frame(compressed) + zstd_footer(toc_offset, len(compressed), len(toc_json))
    annotations = {
        MANIFEST_CHECKSUM_ANNOTATION: "sha256:" + hashlib.sha256(compressed).hexdigest(),
        MANIFEST_POSITION_ANNOTATION: f"{toc_offset}:{len(compressed)}:{len(toc_json)}:1",
    }
    return trailer, annotations, toc_offset


def parse_manifest_position(value: str) -> tuple[int, int, int, int]:
    """``offset:compressed:uncompressed:type`` -> integers (the offset is a TOC-offset hint)."""
    parts = value.split(":")
    try:
        numbers = tuple(int(p, 10) for p in parts)
    except ValueError as err:
        raise FormatError(f"manifest-position {value!r} is not four integers") from err
    if len(numbers) != 4 or min(numbers) < 0:
        raise FormatError(f"manifest-position {value!r} is not four non-negative integers")
    return numbers[0], numbers[1], numbers[2], numbers[3]


def toc_expectation(annotations: Mapping[str, str]) -> tuple[str | None, int | None]:
    """(expected TOC digest, TOC-offset hint) from a layer's annotations, for ``open_layer``.

    ``toc.digest`` wins; otherwise the ``manifest-checksum`` of either prefix. The hint is the first
    number of ``manifest-position`` (either prefix), as the snapshotter uses it.
    """
    digest = annotations.get(TOC_DIGEST_ANNOTATION)
    if not digest:
        digest = (annotations.get(CS_MANIFEST_CHECKSUM_ANNOTATION)
                  or annotations.get(MANIFEST_CHECKSUM_ANNOTATION) or None)
    hint = None
    for key in (MANIFEST_POSITION_ANNOTATION, CS_MANIFEST_POSITION_ANNOTATION):
        if annotations.get(key):
            hint = parse_manifest_position(annotations[key])[0]
            break
    return digest, hint
