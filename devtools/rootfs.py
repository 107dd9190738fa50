"""Small real root filesystems and layer tarballs for runtime tests.

The only binary is Debian's static busybox (``apt-get download busybox-static`` + ``dpkg-deb -x``,
cached under ``$LAZYPULL_TEST_CACHE`` or ``/var/cache/lazypull-tests``; when the download is not
possible, the local apt archive's .deb, else the installed package's ``/bin/busybox``). Layer tars
are built in memory from :class:`Entry` lists, so tests can write exactly the members (whiteouts,
hostile names, links) they need.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from devtools.images import TarEntrySpec, make_oci_layout

CACHE_DIR = Path(os.environ.get("LAZYPULL_TEST_CACHE", "/var/cache/lazypull-tests"))
APT_ARCHIVES = Path("/var/cache/apt/archives")
INSTALLED_BUSYBOX = Path("/bin/busybox")

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "alice:x:1234:2345:Alice:/home/alice:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = (
    "root:x:0:\n"
    "daemon:x:1:\n"
    "staff:x:50:alice\n"
    "users:x:2345:\n"
    "nogroup:x:65534:\n"
)
APPLETS = ("sh", "echo", "cat", "ls", "id", "pwd", "env", "true", "false", "sleep", "stat", "mount",
           "readlink", "hostname", "test")


@dataclass(frozen=True)
class Entry:
    """One tar member. ``type``: file, dir, symlink, hardlink, char, block, fifo."""

    name: str
    type: str = "file"
    data: bytes = b""
    linkname: str = ""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: float = 1_600_000_000
    xattrs: dict[str, bytes] = field(default_factory=dict)
    devmajor: int = 0
    devminor: int = 0


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def make_tar(entries: Iterable[Entry]) -> bytes:
    """A PAX tar holding exactly ``entries`` in order (names are not normalised: hostile is fine)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = _TYPES[entry.type]
            info.mode = entry.mode if entry.mode is not None else (0o755 if entry.type == "dir" else 0o644)
            info.uid, info.gid, info.mtime = entry.uid, entry.gid, entry.mtime
            info.linkname = entry.linkname
            info.devmajor, info.devminor = entry.devmajor, entry.devminor
            if entry.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                    for k, v in entry.xattrs.items()}
            if entry.type == "file":
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _locked_cache(name: str) -> tuple[Path, int]:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    lock = os.open(CACHE_DIR / f".{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return CACHE_DIR / name, lock


def _installed_static_busybox() -> bool:
    """Whether /bin/busybox comes from the installed busybox-static package."""
    owner = subprocess.run(["dpkg", "-S", str(INSTALLED_BUSYBOX)], capture_output=True, text=True)
    return owner.returncode == 0 and owner.stdout.startswith("busybox-static:")


def busybox_binary() -> Path:
    """The static busybox from Debian's ``busybox-static`` package (downloaded once, cached)."""
    target, lock = _locked_cache("busybox-static")
    try:
        binary = target / "bin" / "busybox"
        if binary.is_file():
            return binary
        with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
            download = subprocess.run(["apt-get", "download", "busybox-static"], cwd=tmp,
                                      capture_output=True, text=True)
            debs = sorted(Path(tmp).glob("busybox-static_*.deb"))
            if download.returncode != 0 or not debs:
                debs = sorted(APT_ARCHIVES.glob("busybox-static_*.deb"))
            extracted = Path(tmp) / "x"
            if debs:
                subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(extracted)], check=True)
            elif INSTALLED_BUSYBOX.is_file() and _installed_static_busybox():
                (extracted / "bin").mkdir(parents=True)
                shutil.copy2(INSTALLED_BUSYBOX, extracted / "bin" / "busybox")
            else:
                raise RuntimeError("cannot get busybox-static: apt-get download said "
                                   f"{download.stderr.strip()}, and it is not installed")
            if target.exists():
                shutil.rmtree(target)
            os.rename(extracted, target)
        return binary
    finally:
        os.close(lock)


def busybox_entries(*, extra: Iterable[Entry] = ()) -> list[Entry]:
    """The members of a one-binary busybox root filesystem with users, groups and applet links."""
    entries = [
        Entry("bin", "dir"), Entry("bin/busybox", data=busybox_binary().read_bytes(), mode=0o755),
        *[Entry(f"bin/{applet}", "symlink", linkname="busybox") for applet in APPLETS],
        Entry("etc", "dir"), Entry("etc/passwd", data=PASSWD.encode()),
        Entry("etc/group", data=GROUP.encode()),
        Entry("tmp", "dir", mode=0o1777), Entry("root", "dir", mode=0o700),
        Entry("home", "dir"), Entry("home/alice", "dir", uid=1234, gid=2345),
    ]
    entries.extend(extra)
    return entries


def busybox_tar(*, extra: Iterable[Entry] = ()) -> bytes:
    """One layer tar of the busybox root filesystem."""
    return make_tar(busybox_entries(extra=extra))


def busybox_rootfs(dest: Path) -> Path:
    """Write the busybox root filesystem as a plain directory at ``dest``."""
    with tarfile.open(fileobj=io.BytesIO(busybox_tar()), mode="r:") as tar:
        tar.extractall(dest, filter="tar")
    return dest


def busybox_specs(*, extra: Iterable[Entry] = ()) -> list[TarEntrySpec]:
    """The busybox rootfs as :mod:`devtools.images` layer specs (for OCI layouts and pushes)."""
    specs = []
    for entry in busybox_entries(extra=extra):
        if entry.type == "file":
            specs.append(TarEntrySpec(entry.name, "file", entry.data, entry.mode, entry.uid, entry.gid))
        elif entry.type == "dir":
            specs.append(TarEntrySpec(entry.name, "dir", mode=entry.mode, uid=entry.uid, gid=entry.gid))
        elif entry.type == "symlink":
            specs.append(TarEntrySpec(entry.name, "symlink", link=entry.linkname))
        else:
            raise ValueError(f"busybox_specs: unsupported entry type {entry.type}")
    return specs


def push_image_layers(workdir: Path, name: str, layers: list[list[TarEntrySpec]], *,
                      config: dict[str, Any] | None = None,
                      compression: Literal["gzip", "zstd", "none"] = "gzip") -> str:
    """Build an OCI image of ``layers`` and push it as ``name`` (``host:port/repo:tag``) over plain HTTP."""
    from lazypull.image import Layout, Store, copy_into_store
    from lazypull.image.push import push_image
    from lazypull.registry import RegistryClient

    workdir.mkdir(parents=True, exist_ok=True)
    built = make_oci_layout(Path(tempfile.mkdtemp(dir=workdir)), layers, tag="v1", config=config,
                            compression=compression)
    layout = Layout(built.path)
    store = Store(Path(tempfile.mkdtemp(dir=workdir)))
    copy_into_store(store, layout.root("v1"), layout, name, source=None, platforms=None)
    with RegistryClient(insecure=True) as client:
        push_image(store, client, name)
    return name


def push_lazy_image(workdir: Path, name: str, layers: list[list[TarEntrySpec]], *,
                    config: dict[str, Any] | None = None,
                    compression: Literal["gzip", "zstd"] = "gzip",
                    prioritized_files: list[str] | None = None, auth: Any = None) -> tuple[str, list[str]]:
    """Build an eStargz (or zstd:chunked) image with lazypull's own writer and push it as ``name``
    (``auth``: the registry client's credential source).

    Returns the name and the layer digests. The layers carry the TOC digest annotations that make
    the mount server serve them lazily.
    """
    import hashlib
    import json

    from devtools.images import make_tar as make_spec_tar
    from lazypull.format import BuildOptions, build
    from lazypull.image import Layout, Store, copy_into_store
    from lazypull.image.push import push_image
    from lazypull.registry import RegistryClient

    workdir.mkdir(parents=True, exist_ok=True)
    layout_dir = Path(tempfile.mkdtemp(dir=workdir))
    blobs = layout_dir / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    layer_descs, diff_ids = [], []
    media = ("application/vnd.oci.image.layer.v1.tar+gzip" if compression == "gzip"
             else "application/vnd.oci.image.layer.v1.tar+zstd")
    for entries in layers:
        out = io.BytesIO()
        result = build(io.BytesIO(make_spec_tar(entries)), out,
                       BuildOptions(compression=compression, prioritized_files=prioritized_files))
        digest = put(out.getvalue())
        assert digest == result.blob_digest
        layer_descs.append({"mediaType": media, "digest": digest, "size": result.blob_size,
                            "annotations": dict(result.annotations)})
        diff_ids.append(result.diff_id)
    cfg: dict[str, Any] = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                           "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cfg.update(config or {})
    raw_config = json.dumps(cfg).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(raw_config),
                           "size": len(raw_config)},
                "layers": layer_descs}
    raw_manifest = json.dumps(manifest).encode()
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": manifest["mediaType"], "digest": put(raw_manifest),
                            "size": len(raw_manifest),
                            "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}
    (layout_dir / "index.json").write_text(json.dumps(index))
    (layout_dir / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layout = Layout(layout_dir)
    store = Store(Path(tempfile.mkdtemp(dir=workdir)))
    copy_into_store(store, layout.root("v1"), layout, name, source=None, platforms=None)
    with RegistryClient(insecure=True, auth=auth) as client:
        push_image(store, client, name)
    return name, [str(d["digest"]) for d in layer_descs]
