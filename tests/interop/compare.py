"""Comparing layers by meaning: the tree the Go reader shows vs ours, TOCs vs TOCs, blobs vs claims.

Every function returns a list of human-readable differences (empty when equal), each naming the path and
the field, so an assertion failure says exactly what differed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zstandard

from lazypull.format import FileSource, LayerReader, TOCEntry, open_layer

ZSTD_SKIPPABLE = b"\x50\x2a\x4d\x18"
ZSTD_FOOTER_MAGIC = b"GnUlInUx"

# The Go 0.12 reader fills a missing groupName from the *user* name table (format.md 1.6), so its
# groupName is not a reference; every other field of its tree is compared.
TREE_FIELDS = (
    "type",
    "size",
    "mode",
    "uid",
    "gid",
    "userName",
    "linkName",
    "modtime",
    "devMajor",
    "devMinor",
)


@contextmanager
def opened(blob: Path, toc_digest: str | None = None) -> Iterator[LayerReader]:
    """Our reader over a blob file, closing the file afterwards."""
    with FileSource(blob) as src:
        yield open_layer(src, toc_digest=toc_digest)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _modtime(entry: TOCEntry) -> str:
    if entry.modtime is None:
        return ""
    return str(entry.modtime.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _resolve(reader: LayerReader, entry: TOCEntry) -> TOCEntry:
    seen = set()
    while entry.type == "hardlink":
        if entry.name in seen:
            raise AssertionError(f"hardlink loop at {entry.name}")
        seen.add(entry.name)
        target = reader.lookup(entry.link_name)
        if target is None:
            raise AssertionError(f"our reader: hardlink {entry.name} -> {entry.link_name} not found")
        entry = target
    return entry


def our_tree(reader: LayerReader) -> dict[str, dict[str, Any]]:
    """Our reader's tree in the oracle's shape (hardlinks resolved to their target, like Go)."""
    tree: dict[str, dict[str, Any]] = {}
    digests: dict[str, tuple[str, int]] = {}
    for entry in reader.entries():
        target = _resolve(reader, entry)
        row: dict[str, Any] = {
            "name": entry.name,
            "type": target.type,
            "size": target.size if target.type == "reg" else 0,
            "mode": target.mode,
            "uid": target.uid,
            "gid": target.gid,
            "userName": target.user_name or "",
            "groupName": target.group_name or "",
            "linkName": target.link_name or "",
            "modtime": _modtime(target),
            "devMajor": target.dev_major,
            "devMinor": target.dev_minor,
            "xattrs": dict(target.xattrs or {}),
            "numLink": target.num_link,
            "chunks": 0,
        }
        if target is not entry:
            row["hardlinkOf"] = target.name
        if target.type == "reg":
            if target.name not in digests:
                digests[target.name] = (sha256(reader.read_file(target)), len(reader.chunks(target)))
            row["digest"], row["chunks"] = digests[target.name]
            if target.size == 0:
                row["chunks"] = 0
        tree[entry.name] = row
    return tree


def go_tree(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The oracle's `verify` entries keyed by path, xattrs decoded from base64 JSON."""
    import base64

    out = {}
    for e in entries:
        row = dict(e)
        row["xattrs"] = {k: base64.b64decode(v) for k, v in (e.get("xattrs") or {}).items()}
        row.setdefault("chunks", 0)
        out[e["name"]] = row
    return out


def diff_trees(go: dict[str, dict[str, Any]], ours: dict[str, dict[str, Any]]) -> list[str]:
    """Differences between the Go reader's tree and ours (paths, metadata, content, chunk counts)."""
    diffs = [f"path {p!r}: only the Go reader has it" for p in sorted(go.keys() - ours.keys())]
    diffs += [f"path {p!r}: only our reader has it" for p in sorted(ours.keys() - go.keys())]
    for p in sorted(go.keys() & ours.keys()):
        g, o = go[p], ours[p]
        for f in (*TREE_FIELDS, "xattrs", "numLink", "hardlinkOf", "digest", "chunks"):
            if g.get(f) != o.get(f):
                diffs.append(f"path {p!r} field {f}: Go {g.get(f)!r}, ours {o.get(f)!r}")
    return diffs


def diff_tree_vs_tar(tree: dict[str, dict[str, Any]], files: dict[str, str]) -> list[str]:
    """Regular-file contents a reader shows vs the sha256s recorded when the tar was written."""
    diffs = []
    for name, digest in sorted(files.items()):
        row = tree.get(name)
        if row is None:
            diffs.append(f"file {name!r} of the source tar is missing")
        elif row.get("digest") != digest:
            diffs.append(f"file {name!r}: content {row.get('digest')}, source tar has {digest}")
    return diffs


def raw_toc(blob: Path) -> tuple[bytes, dict[str, Any], str]:
    """The TOC JSON bytes of an eStargz or zstd:chunked blob found independently of our reader
    (footer -> TOC member/frame), its parsed form, and "gzip"/"zstd"."""
    data = blob.read_bytes()
    if data[-48:-44] == ZSTD_SKIPPABLE and data[-8:] == ZSTD_FOOTER_MAGIC:
        off, clen, ulen, kind = struct.unpack("<QQQQ", data[-40:-8])
        if kind != 1:
            raise AssertionError(f"{blob}: zstd:chunked manifest type {kind}, want 1")
        raw = zstandard.ZstdDecompressor().decompress(data[off : off + clen], max_output_size=ulen)
        if len(raw) != ulen:
            raise AssertionError(f"{blob}: TOC is {len(raw)} bytes, footer says {ulen}")
        return raw, json.loads(raw), "zstd"
    footer = data[-51:]
    extra = footer[16:38]
    if footer[12:14] != b"SG" or not extra.endswith(b"STARGZ"):
        raise AssertionError(f"{blob}: no eStargz or zstd:chunked footer")
    off = int(extra[:16], 16)
    d = zlib.decompressobj(31)
    member = d.decompress(data[off:-51])
    with tarfile.open(fileobj=io.BytesIO(member)) as tar:
        first = tar.next()
        if first is None or first.name != "stargz.index.json":
            raise AssertionError(f"{blob}: TOC member does not start with stargz.index.json")
        f = tar.extractfile(first)
        assert f is not None
        raw = f.read()
    return raw, json.loads(raw), "gzip"


def diff_tocs(
    go: dict[str, Any], ours: dict[str, Any], *, ignore: tuple[str, ...] = ("offset",)
) -> list[str]:
    """Entry-by-entry comparison of two TOCs built from the same tar with the same options: order,
    landmarks, dedupe, chunking and every field except compressed positions must match."""
    diffs = []
    if go.get("version") != ours.get("version"):
        diffs.append(f"TOC version: Go {go.get('version')}, ours {ours.get('version')}")
    ge, oe = go["entries"], ours["entries"]
    for i in range(max(len(ge), len(oe))):
        g = {k: v for k, v in ge[i].items() if k not in ignore} if i < len(ge) else None
        o = {k: v for k, v in oe[i].items() if k not in ignore} if i < len(oe) else None
        if g != o:
            diffs.append(f"TOC entry {i}: Go {g}, ours {o}")
        if len(diffs) > 8:
            diffs.append("...")
            break
    return diffs


def decompressed_digest(blob: Path, compression: str) -> tuple[str, int]:
    """sha256 and length of the whole decompressed stream (the DiffID and uncompressed size)."""
    h = hashlib.sha256()
    n = 0
    with blob.open("rb") as f:
        stream: Any = (
            gzip.GzipFile(fileobj=f)
            if compression == "gzip"
            else zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        )
        while chunk := stream.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return "sha256:" + h.hexdigest(), n
