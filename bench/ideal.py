"""The physical limit of a lazy start (prior-art 6.1): ``T_ideal = k*RTT + (TOC + W)/B + T_app``.

``TOC`` is the bytes a client must read to learn a layer's layout (TOC member + footer, read with one
tail request), ``W`` the compressed bytes of the chunks the workload actually read, ``B`` the link's
bandwidth, ``k`` the control round trips on the critical path, and ``T_app`` what the workload costs
when every byte is already local (measured: the run phase after a full pull).

W comes from a traced lazy run (:func:`chunks_in_ranges`: the byte ranges the registry served, mapped
onto the TOC's chunk table) and is then priced for each variant by the same (file, chunk offset)
pairs in that variant's own TOC (:func:`chunk_table`).
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from lazypull.format.annotations import CS_MANIFEST_POSITION_ANNOTATION, MANIFEST_POSITION_ANNOTATION

ESTARGZ_FOOTER = 51
TOC_TAR_NAME = "stargz.index.json"
ZSTD_POSITION_KEYS = (CS_MANIFEST_POSITION_ANNOTATION, MANIFEST_POSITION_ANNOTATION)
# TCP connect, manifest, config, footer+TOC tail read (layers in parallel), the chunk stream request.
K_ROUND_TRIPS = 5


class TocError(ValueError):
    """A layer blob's footer or TOC could not be read; the message names the blob."""


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of one file: where its compressed bytes are in the blob."""

    name: str
    chunk_offset: int     # position in the file
    start: int            # blob offset of the member/frame holding it
    end: int              # blob offset where the next member/frame starts

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class LayerLayout:
    """What T_ideal needs of one layer blob."""

    blob_size: int
    toc_offset: int
    toc_bytes: int                          # blob bytes from the TOC to the end (TOC + footer)
    chunks: list[ChunkRef]                  # sorted by start
    prefetch_end: int | None                # c-offset of the prefetch landmark, if any


def blob_path(storage_dir: Path, digest: str) -> Path:
    """Where docker-registry's filesystem driver keeps a blob."""
    hexpart = digest.removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", hexpart):
        raise TocError(f"not a sha256 digest: {digest!r}")
    return storage_dir / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexpart[:2] / hexpart / "data"


def _norm(name: str) -> str:
    while name.startswith(("./", "/")):
        name = name[1:] if name.startswith("/") else name[2:]
    return name


def _estargz_toc(data: bytes, where: str) -> tuple[int, dict[str, Any]]:
    footer = data[-ESTARGZ_FOOTER:]
    if len(footer) != ESTARGZ_FOOTER or footer[12:14] != b"SG" or footer[32:38] != b"STARGZ":
        raise TocError(f"{where}: no eStargz footer")
    try:
        toc_offset = int(footer[16:32], 16)
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data[toc_offset:-ESTARGZ_FOOTER]))) as tar:
            member = tar.extractfile(TOC_TAR_NAME)
            if member is None:
                raise TocError(f"{where}: TOC tar has no {TOC_TAR_NAME}")
            return toc_offset, json.loads(member.read())
    except (ValueError, OSError, tarfile.TarError, KeyError) as err:
        raise TocError(f"{where}: unreadable eStargz TOC: {err}") from err


def _zstd_toc(data: bytes, position: str, where: str) -> tuple[int, dict[str, Any]]:
    try:
        offset, clen, ulen = (int(x) for x in position.split(":")[:3])
        raw = zstandard.ZstdDecompressor().decompress(data[offset:offset + clen], max_output_size=ulen)
        return offset - 8, json.loads(raw)     # the skippable frame header precedes the TOC
    except (ValueError, zstandard.ZstdError) as err:
        raise TocError(f"{where}: unreadable zstd:chunked TOC at {position!r}: {err}") from err


def read_layout(path: Path, annotations: dict[str, str] | None = None) -> LayerLayout:
    """Parse a lazy layer blob (eStargz, or zstd:chunked by its manifest-position annotation)."""
    data = path.read_bytes()
    annotations = annotations or {}
    position = next((annotations[k] for k in ZSTD_POSITION_KEYS if k in annotations), None)
    toc_offset, toc = _zstd_toc(data, position, str(path)) if position else _estargz_toc(data, str(path))
    starts: set[int] = {toc_offset}
    raw_chunks: list[tuple[str, int, int]] = []
    prefetch_end = None
    for entry in toc.get("entries", []):
        name = _norm(str(entry.get("name", "")))
        if name in (".prefetch.landmark", ".no.prefetch.landmark"):
            prefetch_end = int(entry.get("offset", 0)) if name == ".prefetch.landmark" else None
        if entry.get("type") in ("reg", "chunk") and int(entry.get("offset", 0)) > 0:
            start = int(entry["offset"])
            starts.add(start)
            raw_chunks.append((name, int(entry.get("chunkOffset", 0)), start))
    ordered = sorted(starts)
    nxt = dict(itertools.pairwise(ordered))
    last_name = ""
    chunks = []
    for name, chunk_offset, start in raw_chunks:
        if name:
            last_name = name
        chunks.append(ChunkRef(last_name, chunk_offset, start, nxt.get(start, toc_offset)))
    chunks.sort(key=lambda c: c.start)
    return LayerLayout(len(data), toc_offset, len(data) - toc_offset, chunks, prefetch_end)


_RANGE_RE = re.compile(r"(\d+)-(\d*)")


def parse_range(header: str | None, blob_size: int) -> list[tuple[int, int]]:
    """``bytes=a-b,c-`` -> [(a, b+1), (c, size)]; no header means the whole blob."""
    if not header:
        return [(0, blob_size)]
    out = []
    for part in header.removeprefix("bytes=").split(","):
        m = _RANGE_RE.fullmatch(part.strip())
        if m:
            out.append((int(m[1]), int(m[2]) + 1 if m[2] else blob_size))
    return out


def chunks_in_ranges(layout: LayerLayout, ranges: list[tuple[int, int]]) -> list[ChunkRef]:
    """Chunks overlapping any fetched range (below the TOC), in first-fetched order."""
    seen: dict[tuple[str, int], ChunkRef] = {}
    for lo, hi in ranges:
        if lo >= layout.toc_offset:
            continue
        for c in layout.chunks:
            if c.start < hi and c.end > lo:
                seen.setdefault((c.name, c.chunk_offset), c)
    return list(seen.values())


def w_bytes(layout: LayerLayout, wanted: set[tuple[str, int]] | set[str]) -> int:
    """Compressed bytes of the chunks named by (file, chunk offset) pairs, or of whole files by name."""
    total = 0
    done: set[int] = set()
    for c in layout.chunks:
        key: object = c.name if wanted and isinstance(next(iter(wanted)), str) else (c.name, c.chunk_offset)
        if key in wanted and c.start not in done:
            done.add(c.start)
            total += c.size
    return total


def t_ideal(*, rtt: float, bandwidth: float | None, toc_bytes: int, w: int, t_app: float,
            k: int = K_ROUND_TRIPS) -> float:
    """Seconds; ``bandwidth`` in bytes/s (None: unshaped, the transfer term is taken as zero)."""
    transfer = 0.0 if bandwidth is None else (toc_bytes + w) / bandwidth
    return k * rtt + transfer + t_app
