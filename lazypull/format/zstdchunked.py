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

from lazypull.format.annotations import MANIFEST_CHECKSUM_ANNOTATION, MANIFEST_POSITION_ANNOTATION
from lazypull.format.compression import ZstdCompressor
from lazypull.format.footer import skippable_frame, zstd_footer


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
