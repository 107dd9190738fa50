"""Two-layer benchmark images from Debian rootfs tars, as cached OCI layouts, pushed with skopeo.

The base layer is a Debian minbase rootfs; the application layer is what installing the workload's
packages changed in it (new or changed entries, whiteouts for removed ones, hardlink groups kept
whole), plus the workload's extra files. Layers are gzip'd (``gzip -n``), so the layout is the
"legacy" image (``-org`` in stargz-snapshotter's benchmark). Everything is cached under
``cache_dir/images`` keyed by the rootfs tars and the workload, so reruns skip the build.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import httpx

from bench import rootfs
from bench.workloads import Workload

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, "application/vnd.oci.image.index.v1+json",
                             "application/vnd.docker.distribution.manifest.v2+json",
                             "application/vnd.docker.distribution.manifest.list.v2+json"])
# Not part of an image: package caches and the debootstrap logs.
_SKIP_PREFIXES = ("var/cache/apt/archives/", "var/lib/apt/lists/", "var/log/", "debootstrap/")


class ImageBuildError(RuntimeError):
    """Building or pushing a benchmark image failed; the message names the image and step."""


def _norm(name: str) -> str:
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _skip(name: str) -> bool:
    return any(name.startswith(p) for p in _SKIP_PREFIXES)


def _entry_key(m: tarfile.TarInfo) -> tuple[object, ...]:
    xattrs = sorted((k, v) for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr."))
    return (m.type, m.mode, m.uid, m.gid, m.size, int(m.mtime), m.linkname, m.devmajor, m.devminor,
            tuple(xattrs))


def _clean_member(m: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    m.name = name
    if m.islnk():
        m.linkname = _norm(m.linkname)
    m.pax_headers = {k: v for k, v in m.pax_headers.items() if k not in ("atime", "ctime")}
    return m


def write_base_layer(base_tar: Path, out: Path) -> None:
    """The base rootfs as a layer tar (package caches and logs left out)."""
    with tarfile.open(base_tar) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for m in src:
            name = _norm(m.name)
            if not name or _skip(name):
                continue
            dst.addfile(_clean_member(m, name), src.extractfile(m) if m.isreg() else None)


def write_diff_layer(base_tar: Path, app_tar: Path, out: Path, extra_files: dict[str, bytes]) -> int:
    """The application layer: entries of ``app_tar`` new or changed against ``base_tar``, whiteouts
    for entries it lacks, then ``extra_files``. Returns the number of entries written."""
    with tarfile.open(base_tar) as base:
        base_keys = {_norm(m.name): _entry_key(m) for m in base if not _skip(_norm(m.name))}
    with tarfile.open(app_tar) as app:
        members = [m for m in app.getmembers() if _norm(m.name) and not _skip(_norm(m.name))]
        names = {_norm(m.name) for m in members}
        changed = {_norm(m.name) for m in members if base_keys.get(_norm(m.name)) != _entry_key(m)}
        # A hardlink group is written whole, so the layer never links to a file it lacks.
        for _ in range(2):
            for m in members:
                if m.islnk() and (_norm(m.name) in changed or _norm(m.linkname) in changed):
                    changed.update({_norm(m.name), _norm(m.linkname)})
        # Parent directories of everything written, so the layer extracts on its own.
        for name in list(changed):
            parent = posixpath.dirname(name)
            while parent and parent not in changed:
                changed.add(parent)
                parent = posixpath.dirname(parent)
        removed = sorted(n for n in base_keys if n not in names)
        count = 0
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
            for m in members:
                name = _norm(m.name)
                if name in changed:
                    dst.addfile(_clean_member(m, name), app.extractfile(m) if m.isreg() else None)
                    count += 1
            removed_dirs: set[str] = set()
            for name in removed:
                if any(name.startswith(d + "/") for d in removed_dirs):
                    continue   # a whiteout of the directory covers it
                if base_keys[name][0] == tarfile.DIRTYPE:
                    removed_dirs.add(name)
                parent, base_name = posixpath.split(name)
                wh = tarfile.TarInfo(posixpath.join(parent, ".wh." + base_name))
                wh.mtime = 0
                dst.addfile(wh, io.BytesIO(b""))
                count += 1
            for name, data in sorted(extra_files.items()):
                info = tarfile.TarInfo(_norm(name))
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                dst.addfile(info, io.BytesIO(data))
                count += 1
    return count


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _put_blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def build_layout(workload: Workload, cache_dir: Path) -> Path:
    """The workload's legacy (gzip) image as an OCI layout directory, built once and cached."""
    base_tar = rootfs.build_rootfs([], cache_dir)
    app_tar = rootfs.build_rootfs(list(workload.packages), cache_dir)
    ident = (base_tar.name, app_tar.name, workload.name, sorted(workload.extra_files.items()), "v1")
    key = hashlib.sha256(repr(ident).encode()).hexdigest()[:12]
    layout = cache_dir / "images" / f"{workload.name}-{key}"
    if (layout / "index.json").exists():
        return layout
    tmp = layout.with_name(layout.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "blobs" / "sha256").mkdir(parents=True)
    layers, diff_ids = [], []
    for i in range(2):
        plain = tmp / f"layer{i}.tar"
        if i == 0:
            write_base_layer(base_tar, plain)
        else:
            write_diff_layer(base_tar, app_tar, plain, workload.extra_files)
        diff_ids.append(_sha256_file(plain))
        gz = tmp / f"layer{i}.tar.gz"
        with gz.open("wb") as out:
            proc = subprocess.run(["gzip", "-n", "-6", "-c", str(plain)], stdout=out, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise ImageBuildError(f"gzip of {workload.name} layer {i} failed: {proc.stderr.decode()[-500:]}")
        digest = _sha256_file(gz)
        os.replace(gz, tmp / "blobs" / "sha256" / digest[7:])
        plain.unlink()
        layers.append({"mediaType": OCI_LAYER_GZIP, "digest": digest,
                       "size": (tmp / "blobs" / "sha256" / digest[7:]).stat().st_size})
    config = {
        "architecture": "amd64", "os": "linux", "created": "2025-05-20T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": list(workload.command), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "debootstrap --variant=minbase bookworm"},
                    {"created_by": "apt-get install " + " ".join(workload.packages)}],
    }
    cfg = _put_blob(tmp, json.dumps(config, sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, **cfg}, "layers": layers}
    man = _put_blob(tmp, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, **man, "annotations": {"org.opencontainers.image.ref.name": "org"}}]}
    (tmp / "index.json").write_text(json.dumps(index))
    (tmp / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    shutil.rmtree(layout, ignore_errors=True)
    os.replace(tmp, layout)
    return layout


def layout_info(layout: Path) -> dict[str, object]:
    """Layer sizes and digests of a layout (for the results)."""
    index = json.loads((layout / "index.json").read_text())
    man_digest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / man_digest[7:]).read_bytes())
    return {"manifest": man_digest, "layers": [{"digest": ly["digest"], "size": ly["size"]}
                                                for ly in manifest["layers"]],
            "compressed_size": sum(ly["size"] for ly in manifest["layers"])}


def manifest_exists(registry: str, repo: str, tag: str) -> bool:
    """HEAD the manifest on a plain-HTTP registry."""
    try:
        r = httpx.head(f"http://{registry}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT},
                       timeout=30)
    except httpx.HTTPError as err:
        raise ImageBuildError(f"registry {registry} unreachable: {err}") from err
    return r.status_code == 200


def push_layout(layout: Path, registry: str, repo: str, tag: str) -> None:
    """``skopeo copy`` the layout to ``registry/repo:tag`` over plain HTTP (digests preserved)."""
    cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests",
           f"oci:{layout}:org", f"docker://{registry}/{repo}:{tag}"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageBuildError(f"{' '.join(cmd)} failed after {time.monotonic() - t0:.0f}s: "
                              f"{proc.stderr[-1500:]}")
