"""Synthetic test images: tar layers from specs, and OCI image layouts built from them.

``make_oci_layout(dir, [[TarEntrySpec(...), ...], ...], tag="v1")`` writes a complete OCI layout
(``oci-layout``, ``index.json`` with ``org.opencontainers.image.ref.name``, ``blobs/sha256``) holding one
image whose layers are the given tars (gzip by default); ``platforms=[...]`` makes an index with one
image per platform. Everything is deterministic (mtime 0 in gzip headers, fixed tar mtimes).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import zstandard

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_TYPES = {
    ("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("oci", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("oci", "none"): "application/vnd.oci.image.layer.v1.tar",
    ("docker", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ("docker", "zstd"): "application/vnd.docker.image.rootfs.diff.tar.zstd",
    ("docker", "none"): "application/vnd.docker.image.rootfs.diff.tar",
}
MTIME = 1609459200  # 2021-01-01T00:00:00Z


@dataclass(frozen=True)
class TarEntrySpec:
    """One tar member. kind: file, dir, symlink, hardlink, whiteout (of ``name``), opaque (dir ``name``)."""

    name: str
    kind: Literal["file", "dir", "symlink", "hardlink", "whiteout", "opaque"] = "file"
    content: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    link: str = ""
    mtime: int = MTIME
    xattrs: dict[str, str] = field(default_factory=dict)


def file(name: str, content: bytes | str, mode: int = 0o644, **kw: Any) -> TarEntrySpec:
    """A regular file."""
    return TarEntrySpec(name, "file", content.encode() if isinstance(content, str) else content, mode, **kw)


def directory(name: str, mode: int = 0o755, **kw: Any) -> TarEntrySpec:
    """A directory."""
    return TarEntrySpec(name, "dir", mode=mode, **kw)


def make_tar(entries: list[TarEntrySpec]) -> bytes:
    """A PAX tar of the entries, in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            name = e.name.rstrip("/")
            if e.kind == "whiteout":
                parent, _, base = name.rpartition("/")
                name = f"{parent}/.wh.{base}" if parent else f".wh.{base}"
            elif e.kind == "opaque":
                name = f"{name}/.wh..wh..opq"
            info = tarfile.TarInfo(name)
            info.mtime = e.mtime
            info.uid, info.gid = e.uid, e.gid
            info.uname = "root" if e.uid == 0 else ""
            info.gname = "root" if e.gid == 0 else ""
            if e.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            data: bytes | None = None
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755 if e.mode is None else e.mode
            elif e.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = e.link
                info.mode = 0o777
            elif e.kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = e.link
                info.mode = 0o644 if e.mode is None else e.mode
            else:
                info.type = tarfile.REGTYPE
                info.mode = 0o644 if e.mode is None else e.mode
                data = e.content if e.kind == "file" else b""
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def compress(data: bytes, compression: Literal["gzip", "zstd", "none"]) -> bytes:
    """Deterministically compressed bytes."""
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class BuiltImage:
    """What make_oci_layout wrote (for one platform)."""

    manifest_digest: str
    manifest_size: int
    manifest: dict[str, Any]
    config_digest: str
    config: dict[str, Any]
    layer_digests: list[str]
    diff_ids: list[str]
    tars: list[bytes]
    blobs: dict[str, bytes]
    platform: str


@dataclass
class BuiltLayout:
    """An OCI layout on disk and what is in it."""

    path: Path
    tag: str | None
    root_digest: str
    root_media_type: str
    root_size: int
    images: list[BuiltImage]

    @property
    def ref(self) -> str:
        """``oci:DIR[:TAG]``."""
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")

    @property
    def image(self) -> BuiltImage:
        return self.images[0]


def _write_blob(path: Path, data: bytes) -> str:
    digest = sha256(data)
    blob = path / "blobs" / "sha256" / digest.removeprefix("sha256:")
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    return digest


def build_image(path: Path, layers: list[list[TarEntrySpec]], *, config: dict[str, Any] | None = None,
                compression: Literal["gzip", "zstd", "none"] = "gzip", docker: bool = False,
                platform: str = "linux/amd64", layer_annotations: list[dict[str, str]] | None = None
                ) -> BuiltImage:
    """Write the blobs of one image into layout ``path``; returns its description (no index entry)."""
    family = "docker" if docker else "oci"
    tars = [make_tar(entries) for entries in layers]
    blobs: dict[str, bytes] = {}
    layer_descs = []
    for i, tar in enumerate(tars):
        blob = compress(tar, compression)
        digest = _write_blob(path, blob)
        blobs[digest] = blob
        desc: dict[str, Any] = {"mediaType": LAYER_TYPES[(family, compression)], "digest": digest,
                                "size": len(blob)}
        if layer_annotations and layer_annotations[i]:
            desc["annotations"] = layer_annotations[i]
        layer_descs.append(desc)
    os_, arch, *variant = platform.split("/")
    cfg: dict[str, Any] = {
        "architecture": arch, "os": os_, "created": "2021-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in tars]},
        "history": [{"created": "2021-01-01T00:00:00Z", "created_by": f"layer {i}"}
                    for i in range(len(tars))],
    }
    if variant:
        cfg["variant"] = variant[0]
    if config:
        cfg.update(config)
    raw_config = json.dumps(cfg, separators=(",", ":")).encode()
    config_digest = _write_blob(path, raw_config)
    blobs[config_digest] = raw_config
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG, "digest": config_digest,
                   "size": len(raw_config)},
        "layers": layer_descs,
    }
    raw_manifest = json.dumps(manifest, separators=(",", ":")).encode()
    manifest_digest = _write_blob(path, raw_manifest)
    blobs[manifest_digest] = raw_manifest
    return BuiltImage(manifest_digest, len(raw_manifest), manifest, config_digest, cfg,
                      [d["digest"] for d in layer_descs], list(cfg["rootfs"]["diff_ids"]), tars, blobs,
                      platform)


def make_oci_layout(path: Path, layers: list[list[TarEntrySpec]], *, config: dict[str, Any] | None = None,
                    tag: str | None = "latest", compression: Literal["gzip", "zstd", "none"] = "gzip",
                    docker: bool = False, platforms: list[str] | None = None,
                    layer_annotations: list[dict[str, str]] | None = None) -> BuiltLayout:
    """Write an OCI layout with one image (or an index of one image per platform, same layers)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    if platforms:
        images = []
        entries = []
        for plat in platforms:
            # Vary the config per platform so the manifests differ.
            built = build_image(path, layers, config=config, compression=compression, docker=docker,
                                platform=plat, layer_annotations=layer_annotations)
            images.append(built)
            os_, arch, *variant = plat.split("/")
            p: dict[str, Any] = {"architecture": arch, "os": os_}
            if variant:
                p["variant"] = variant[0]
            entries.append({"mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
                            "digest": built.manifest_digest, "size": built.manifest_size, "platform": p})
        index = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST if docker else OCI_INDEX,
                 "manifests": entries}
        raw = json.dumps(index, separators=(",", ":")).encode()
        root_digest, root_type, root_size = _write_blob(path, raw), index["mediaType"], len(raw)
    else:
        built = build_image(path, layers, config=config, compression=compression, docker=docker,
                            layer_annotations=layer_annotations)
        images = [built]
        root_digest, root_type = built.manifest_digest, built.manifest["mediaType"]
        root_size = built.manifest_size
    entry: dict[str, Any] = {"mediaType": root_type, "digest": root_digest, "size": root_size}
    if tag:
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index_json = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
    (path / "index.json").write_text(json.dumps(index_json))
    return BuiltLayout(path, tag, root_digest, str(root_type), root_size, images)


def sample_layers() -> list[list[TarEntrySpec]]:
    """Three small layers: a base tree, changes with a whiteout and an opaque dir, a bigger file."""
    return [
        [directory("etc"), file("etc/hostname", "base\n"), file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
         directory("usr"), directory("usr/bin"), file("usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
         directory("var"), directory("var/cache"), file("var/cache/old", "stale")],
        [directory("etc"), TarEntrySpec("etc/hostname", "whiteout"), file("etc/motd", "hello\n"),
         TarEntrySpec("var/cache", "opaque"), TarEntrySpec("etc/link", "symlink", link="motd"),
         TarEntrySpec("etc/hard", "hardlink", link="etc/motd")],
        [directory("data"), file("data/blob.bin", bytes(range(256)) * 400),
         file("data/text.txt", "lorem ipsum " * 500)],
    ]
