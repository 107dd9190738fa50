"""Hand-made eStargz blobs whose TOC says exactly what a hostile writer wants it to say.

``metadata_blob`` writes a layer of entries without content (names, links, xattrs are what hostile
layers play with): the tar stream of the members (one gzip member, as Python's tarfile writes it, PAX
headers included) and a TOC listing the same entries, so that the lazy reader and the extraction see one
layer. ``toc_blob`` writes a TOC alone (anything JSON can say), over a payload of the caller's bytes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazypull.format.annotations import TOC_DIGEST_ANNOTATION as TOC_DIGEST
from lazypull.format.footer import estargz_footer

_TAR_TYPES = {"reg": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
              "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}


@dataclass
class Member:
    """An entry without content: what both the tar and the TOC say about it."""

    name: str
    type: str = "reg"
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Layer:
    path: Path
    digest: str
    annotations: dict[str, str]


def _toc_member(toc: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("stargz.index.json")
        info.size = len(toc)
        tar.addfile(info, io.BytesIO(toc))
    return gzip.compress(buf.getvalue())


def toc_blob(tmp: Path, entries: list[dict[str, Any]] | bytes, payload: bytes = b"", name: str = "layer",
             annotations: dict[str, str] | None = None, gap: int = 0) -> Layer:
    """An eStargz blob: ``payload`` (gzip members), then a TOC of ``entries`` (or these JSON bytes).
    ``gap``: that many zero bytes before the TOC (a sparse file: cheap however large)."""
    toc = entries if isinstance(entries, bytes) else json.dumps({"version": 1, "entries": entries}).encode()
    payload = payload or gzip.compress(b"\0" * 1024)
    tail = _toc_member(toc) + estargz_footer(len(payload) + gap)
    path = tmp / f"{name}.blob"
    with open(path, "wb") as f:
        f.write(payload)
        f.seek(len(payload) + gap)
        f.write(tail)
    notes = {TOC_DIGEST: "sha256:" + hashlib.sha256(toc).hexdigest(), **(annotations or {})}
    # the blob's digest; with a gap, a name only (hashing the gap's zeros would cost time for nothing)
    named = payload + tail if not gap else payload + gap.to_bytes(8, "big") + tail
    return Layer(path, "sha256:" + hashlib.sha256(named).hexdigest(), notes)


def metadata_blob(tmp: Path, members: list[Member], name: str = "layer") -> Layer:
    """A layer of ``members`` (no content) whose tar and TOC agree."""
    buf = io.BytesIO()
    entries: list[dict[str, Any]] = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = _TAR_TYPES[m.type]
            info.mode = m.mode
            info.linkname = m.link
            info.mtime = 1609459200
            info.uid = m.uid
            pax = {"path": m.name, "uid": str(m.uid)}
            if m.link:
                pax["linkpath"] = m.link
            for key, value in m.xattrs.items():
                pax["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
            info.pax_headers = pax
            tar.addfile(info)
            entry: dict[str, Any] = {"name": m.name, "type": m.type, "mode": m.mode, "uid": m.uid,
                                     "modtime": "2021-01-01T00:00:00Z"}
            if m.link:
                entry["linkName"] = m.link
            if m.xattrs:
                entry["xattrs"] = {k: base64.b64encode(v).decode() for k, v in m.xattrs.items()}
            entries.append(entry)
        data = buf.getvalue()   # before close: no end-of-archive blocks, the TOC entry follows
    return toc_blob(tmp, entries, gzip.compress(data), name)
