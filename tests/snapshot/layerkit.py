"""Test material for the lazy layer and the mount server: a tar with every edge case, blobs built from it
with ``lazypull.format.build``, a fault-injecting ``RangeSource`` and a fault-injecting HTTP proxy.
"""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lazypull.fs.cache import DirectoryCache
from lazypull.fs.config import FsConfig
from lazypull.fs.layer import LayerTree, open_layer_tree
from lazypull.fs.layer.hints import Groups
from lazypull.fs.remote import FileRangeSource, RangeSource

MTIME = 1609459200  # 2021-01-01T00:00:00Z


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# name -> content of the regular files in the edge-case tar (big ones are several chunks at 4 KiB)
FILES: dict[str, bytes] = {
    "etc/hello.txt": b"hello\n",
    "etc/setuid": b"#!/bin/sh\necho root\n",
    "etc/cap": b"capable\n",
    "etc/empty": b"",
    "bin/big": _rand(20000, 1),
    "bin/huge": _rand(150_000, 2),
    "opq/keep": b"kept\n",
    "usr/lib/one": b"one" * 1000,
    "usr/lib/two": b"two" * 1000,
}


def edge_tar() -> bytes:
    """A layer tar with dirs, files, symlink, hardlink, whiteouts, an opaque dir, xattrs, devices."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes, *, data: bytes = b"", mode: int = 0o644, **kw: Any) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.mtime = MTIME
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            for key, value in kw.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for d in ("etc/", "bin/", "opq/", "dev/", "usr/", "usr/lib/"):
            add(d, tarfile.DIRTYPE, mode=0o755)
        for name, data in FILES.items():
            mode = 0o4755 if name == "etc/setuid" else 0o644
            extra: dict[str, Any] = {}
            if name == "etc/cap":
                extra["pax_headers"] = {"SCHILY.xattr.user.foo": "bar",
                                        "SCHILY.xattr.trusted.x": "y"}
            add(name, tarfile.REGTYPE, data=data, mode=mode, uid=1000 if name == "etc/hello.txt" else 0,
                gid=1001 if name == "etc/hello.txt" else 0, **extra)
        add("etc/hard", tarfile.LNKTYPE, linkname="etc/hello.txt")
        add("link", tarfile.SYMTYPE, linkname="etc/hello.txt", mode=0o777)
        add("etc/.wh.removed", tarfile.REGTYPE)
        add("etc/.wh.hello.txt", tarfile.REGTYPE)      # a real hello.txt exists: stays hidden
        add("opq/.wh..wh..opq", tarfile.REGTYPE)
        add("dev/null0", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
        add("dev/fifo", tarfile.FIFOTYPE, mode=0o600)
    return buf.getvalue()


@dataclass
class Blob:
    path: Path
    result: Any  # lazypull.format.BuildResult
    tar: bytes

    @property
    def digest(self) -> str:
        return str(self.result.blob_digest)

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.result.annotations)


def build_blob(tmp: Path, tar: bytes | None = None, name: str = "layer", **options: Any) -> Blob:
    """Build an eStargz (or zstd:chunked) blob from a tar into ``tmp``."""
    from lazypull.format import BuildOptions, build

    tar = edge_tar() if tar is None else tar
    options.setdefault("chunk_size", 4096)
    path = tmp / f"{name}.blob"
    with open(path, "wb") as out:
        result = build(io.BytesIO(tar), out, BuildOptions(**options))
    return Blob(path, result, tar)


@dataclass
class FaultySource:
    """A RangeSource over another one that records requests and injects faults on demand."""

    inner: RangeSource
    corrupt: int = 0                 # flip a byte in this many upcoming responses
    down: bool = False               # fail every request (as a stopped registry does)
    delay: float = 0.0
    requests: list[list[tuple[int, int]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def size(self) -> int:
        return self.inner.size

    def describe(self) -> str:
        return "faulty:" + self.inner.describe()

    def read_ranges(self, ranges: Sequence[tuple[int, int]], deadline: float | None = None) -> list[bytes]:
        with self.lock:
            self.requests.append(list(ranges))
        if self.delay:
            time.sleep(self.delay)
        if self.down:
            raise ConnectionRefusedError("registry is down (test)")
        datas = self.inner.read_ranges(ranges, deadline)
        with self.lock:
            if self.corrupt > 0 and datas and datas[0]:
                self.corrupt -= 1
                first = bytearray(datas[0])
                first[len(first) // 2] ^= 0xFF
                datas[0] = bytes(first)
        return datas


def open_tree(blob: Blob, root: Path, config: FsConfig | None = None, source: RangeSource | None = None,
              annotations: dict[str, str] | None = None, preload: bool = False,
              digest: str | None = None, groups: Groups | None = None) -> LayerTree:
    """A LayerTree over a blob file (or ``source``) with its cache under ``root``.

    ``preload=False`` forgets the blob tail read with the TOC, so every chunk read goes to ``source``
    (tests that count requests want that).
    """
    config = config or FsConfig(prefetch=False, background_fetch=False, read_deadline=5.0)
    src = source or FileRangeSource(blob.path)
    notes = annotations if annotations is not None else blob.annotations
    tree = open_layer_tree(digest or blob.digest, notes, src, root=root, config=config,
                           cache=DirectoryCache(config.chunk_dir(root), config.cache_max_bytes),
                           groups=groups)
    if not preload:
        tree.fetcher.preloaded = []
    return tree


def lookup_path(tree: LayerTree, path: str) -> int:
    """Inode of a path, through ``lookup``."""
    ino = 1
    for part in path.split("/"):
        attr = tree.lookup(ino, part.encode())
        assert attr is not None, f"{path}: {part} not found"
        ino = attr.ino
    return ino


def read_all(tree: LayerTree, ino: int, block: int = 128 << 10) -> bytes:
    """A whole file through ``Tree.read``, in FUSE-sized blocks."""
    out = bytearray()
    while True:
        data = tree.read(ino, len(out), block)
        if not data:
            return bytes(out)
        out += data


# -- registry side --


def push_blob(registry_url: str, repo: str, data: bytes) -> str:
    """Upload a blob to a real registry (monolithic upload); its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=registry_url, timeout=30) as client:
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        r.raise_for_status()
        location = r.headers["Location"]
        sep = "&" if "?" in location else "?"
        r = client.put(f"{location}{sep}digest={digest}", content=data,
                       headers={"Content-Type": "application/octet-stream"})
        r.raise_for_status()
    return digest


def push_manifest(registry_url: str, repo: str, tag: str, manifest: dict[str, Any]) -> str:
    """Upload an OCI manifest under a tag; its digest."""
    import json

    raw = json.dumps(manifest).encode()
    with httpx.Client(base_url=registry_url, timeout=30) as client:
        r = client.put(f"/v2/{repo}/manifests/{tag}", content=raw,
                       headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        r.raise_for_status()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def push_image(registry_url: str, repo: str, tag: str, layers: list[tuple[bytes, str, dict[str, str], str]]
               ) -> str:
    """Push an image of ``(blob, media type, annotations, diff_id)`` layers for this machine's platform."""
    import json

    from lazypull.image.platform import host_platform

    plat = host_platform()
    config = {"architecture": plat.architecture, "os": plat.os,
              "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": [diff_id for *_, diff_id in layers]}}
    if plat.variant:
        config["variant"] = plat.variant
    raw_config = json.dumps(config).encode()
    config_digest = push_blob(registry_url, repo, raw_config)
    descs = []
    for data, media_type, notes, _ in layers:
        digest = push_blob(registry_url, repo, data)
        desc: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if notes:
            desc["annotations"] = notes
        descs.append(desc)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config_digest, "size": len(raw_config)},
                "layers": descs}
    return push_manifest(registry_url, repo, tag, manifest)


def gzip_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A plain (not eStargz) gzip tar layer and its diff_id."""
    import gzip

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = MTIME
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest()
