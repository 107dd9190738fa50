"""A private containerd 1.6 (Debian) for tests, bench and the demo, and Debian's `ctr-remote` 0.12 converter.

The daemon runs as root with its own config, root, state and socket under one directory, without
the CRI plugin and the unused snapshotters (overlayfs and native remain, as does the runc shim for
`ctr-remote image optimize`). `ContainerdDaemon` starts it (`CriContainerd`: with the CRI plugin);
`Ctr` wraps the client commands. The benchmark's yardstick uses `namespace` (`ctr()` argv, containers
removed at stop) and `restart_cold` (stop, wipe root and state, start: each sample pulls from nothing,
as stargz-snapshotter's ``reboot_containerd.sh`` does).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazypull.format.annotations import TOC_DIGEST_ANNOTATION as TOC_DIGEST_ANNOTATION
from lazypull.format.annotations import UNCOMPRESSED_SIZE_ANNOTATION as UNCOMPRESSED_SIZE_ANNOTATION

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

# Plugins this fixture never uses; disabling them keeps startup quick and the log quiet.
_DISABLED_PLUGINS = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
]


class ContainerdError(Exception):
    """containerd or one of its clients failed; the message names the command and its stderr."""


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class ContainerdDaemon:
    """One containerd process with everything private under `base`.

    `gc_pause_threshold`: the GC scheduler's (0.02 collects promptly, what tests want; None: containerd's
    default, what the benchmark measures against). `namespace`: the one `ctr()` commands use and whose
    containers `stop` removes (None: none removed).
    """

    base: Path
    proc: subprocess.Popen[bytes] | None = None
    gc_pause_threshold: float | None = 0.02
    namespace: str | None = None

    @property
    def socket(self) -> Path:
        return self.base / "containerd.sock"

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def log(self) -> Path:
        return self.base / "containerd.log"

    def ctr(self, *args: str) -> list[str]:
        """argv of a ``ctr`` command against this daemon (in `namespace`, if set)."""
        ns = ["--namespace", self.namespace] if self.namespace else []
        return ["ctr", "--address", str(self.socket), *ns, *args]

    def config_text(self) -> str:
        disabled = ", ".join(json.dumps(p) for p in _DISABLED_PLUGINS)
        text = (
            "version = 2\n"
            f'root = "{self.root}"\n'
            f'state = "{self.state}"\n'
            f"disabled_plugins = [{disabled}]\n"
            "[grpc]\n"
            f'  address = "{self.socket}"\n'
            "[ttrpc]\n"
            f'  address = "{self.socket}.ttrpc"\n'
            "[debug]\n"
            f'  address = "{self.base / "debug.sock"}"\n'
            "[metrics]\n"
            '  address = ""\n'
        )
        if self.gc_pause_threshold is not None:
            text += ('[plugins."io.containerd.gc.v1.scheduler"]\n'
                     f"  pause_threshold = {self.gc_pause_threshold}\n")
        return text

    def start(self, timeout: float = 30.0) -> ContainerdDaemon:
        """Starts containerd and waits until it answers `ctr version`."""
        if shutil.which("containerd") is None:
            raise ContainerdError("containerd is not installed (scripts/install-deps.sh installs it)")
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.toml"
        config.write_text(self.config_text())
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerdError(f"containerd exited with {self.proc.returncode}: {self._log_tail()}")
            if self.socket.exists():
                probe = subprocess.run(
                    ["ctr", "--address", str(self.socket), "version"], capture_output=True, timeout=10
                )
                if probe.returncode == 0:
                    return self
            time.sleep(0.1)
        self.stop()
        raise ContainerdError(f"containerd did not answer on {self.socket} within {timeout}s")

    def remove_containers(self) -> None:
        """Kill and delete every task and container in `namespace` (nothing without one)."""
        if self.namespace is None or self.proc is None or self.proc.poll() is not None:
            return
        out = subprocess.run(self.ctr("containers", "list", "-q"), capture_output=True, text=True)
        for cid in out.stdout.split():
            subprocess.run(self.ctr("tasks", "kill", "-s", "SIGKILL", cid), capture_output=True)
            for _ in range(50):
                gone = subprocess.run(self.ctr("tasks", "delete", cid), capture_output=True)
                if gone.returncode == 0 or b"not found" in gone.stderr:
                    break
                time.sleep(0.1)
            subprocess.run(self.ctr("containers", "delete", cid), capture_output=True)

    def halt(self) -> None:
        """Remove `namespace`'s containers, stop the daemon (SIGTERM, then SIGKILL), unmount anything
        left under `base`; the files stay."""
        self.remove_containers()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        unmount_below(self.base)

    def stop(self) -> None:
        """`halt`, then remove `base`."""
        self.halt()
        shutil.rmtree(self.base, ignore_errors=True)

    def restart_cold(self) -> None:
        """Halt, wipe root and state (content, snapshots, metadata), start again."""
        self.halt()
        for d in (self.root, self.state):
            shutil.rmtree(d, ignore_errors=True)
        self.start()

    def __enter__(self) -> ContainerdDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


BENCH_NAMESPACE = "lazypull-bench"


def bench_containerd(base: Path) -> ContainerdDaemon:
    """The benchmark's yardstick: containerd's own GC pacing, containers in ``lazypull-bench``."""
    return ContainerdDaemon(base, gc_pause_threshold=None, namespace=BENCH_NAMESPACE)


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first (from /proc/self/mountinfo)."""
    prefix = str(path.resolve())
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_below(path: Path) -> None:
    """Lazily unmount everything mounted at or below ``path`` (our own leftovers only)."""
    if not path.exists():
        return
    for point in mounts_below(path):
        subprocess.run(["umount", "-l", point], capture_output=True)


@dataclass(frozen=True)
class ConvertedImage:
    """An image read back from containerd's content store."""

    name: str
    manifest_digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: list[tuple[dict[str, Any], Path]] = field(default_factory=list)  # (descriptor, blob file)


@dataclass(frozen=True)
class Ctr:
    """`ctr` and `ctr-remote` against one daemon's socket."""

    socket: Path
    workdir: Path  # scratch space for callers, removed with the fixture

    def run(self, args: Sequence[str], *, tool: str = "ctr", timeout: float = 900) -> bytes:
        cmd = [tool, "--address", str(self.socket), *args]
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            raise ContainerdError(
                f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')}"
            )
        return proc.stdout

    def import_archive(self, archive: Path) -> list[str]:
        """`ctr images import` of an OCI image layout tar (names from its index annotations)."""
        self.run(["images", "import", "--no-unpack", "--all-platforms", str(archive)])
        return self.image_names()

    def image_names(self) -> list[str]:
        out = self.run(["images", "list", "--quiet"]).decode()
        return [line for line in out.splitlines() if line]

    def image_target(self, name: str) -> str:
        """The digest an image name points to (a manifest, here)."""
        for line in self.run(["images", "list"]).decode().splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == name:
                return next(p for p in parts if p.startswith("sha256:"))
        raise ContainerdError(f"image {name} not found in containerd")

    def convert(
        self,
        src: str,
        dst: str,
        *,
        zstdchunked: bool = False,
        level: int | None = None,
        chunk_size: int | None = None,
    ) -> None:
        """`ctr-remote image convert --oci --estargz` or `--oci --zstdchunked` (ctr-remote 0.12).

        ctr-remote 0.12 refuses `--estargz` together with `--zstdchunked`; the chunk size and level flags
        are named `--estargz-*` but apply to both.
        """
        args = ["image", "convert", "--oci", "--zstdchunked" if zstdchunked else "--estargz"]
        if level is not None:
            args += ["--estargz-compression-level", str(level)]
        if chunk_size is not None:
            args += ["--estargz-chunk-size", str(chunk_size)]
        self.run([*args, src, dst], tool="ctr-remote")

    def content_get(self, digest: str, dest: Path) -> Path:
        """`ctr content get` of one blob into `dest`, streamed."""
        cmd = ["ctr", "--address", str(self.socket), "content", "get", digest]
        with dest.open("wb") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, timeout=900)
        if proc.returncode != 0:
            raise ContainerdError(f"{' '.join(cmd)}: {proc.stderr.decode(errors='replace')}")
        return dest

    def content_bytes(self, digest: str) -> bytes:
        data = self.run(["content", "get", digest])
        if _digest(data) != digest:
            raise ContainerdError(f"content {digest} read back with digest {_digest(data)}")
        return data

    def read_image(self, name: str, dest_dir: Path) -> ConvertedImage:
        """Reads an image's manifest, config and every layer blob (into `dest_dir`)."""
        target = self.image_target(name)
        raw = self.content_bytes(target)
        manifest = json.loads(raw)
        if manifest.get("mediaType") == OCI_INDEX or "manifests" in manifest:
            raise ContainerdError(f"image {name} is an index; tests use single-platform images")
        config = json.loads(self.content_bytes(manifest["config"]["digest"]))
        dest_dir.mkdir(parents=True, exist_ok=True)
        layers = []
        for desc in manifest["layers"]:
            path = self.content_get(desc["digest"], dest_dir / desc["digest"].replace(":", "_"))
            layers.append((desc, path))
        return ConvertedImage(name, target, manifest, config, layers)


def _tar_add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_oci_archive(
    layers: Sequence[Path],
    out: Path,
    name: str,
    *,
    compress: bool = True,
    gzip_level: int = 1,
    docker_types: bool = False,
) -> dict[str, Any]:
    """Writes a single-platform (linux/amd64) OCI image layout tar that `ctr images import` accepts.

    Each layer tar is gzipped (or stored plain with `compress=False`); returns the manifest. The image
    name goes into the index annotations (`io.containerd.image.name`, `org.opencontainers.image.ref.name`).
    `docker_types` uses Docker schema 2 media types for manifest, config and layers (what `--oci` converts).
    """
    manifest_type, config_type = (
        (DOCKER_MANIFEST, DOCKER_CONFIG) if docker_types else (OCI_MANIFEST, OCI_CONFIG)
    )
    layer_types = (DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR) if docker_types else (OCI_LAYER_GZIP, OCI_LAYER_TAR)
    blobs: list[tuple[str, Path | bytes]] = []
    descs = []
    diff_ids = []
    tmp = Path(tempfile.mkdtemp(prefix="oci-archive-", dir=out.parent))
    try:
        for i, layer in enumerate(layers):
            diff = hashlib.sha256()
            comp = hashlib.sha256()
            blob = tmp / f"layer{i}"
            with layer.open("rb") as src, blob.open("wb") as raw:
                sink: Any = (
                    gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=gzip_level, mtime=0)
                    if compress
                    else raw
                )
                while chunk := src.read(1 << 20):
                    diff.update(chunk)
                    sink.write(chunk)
                if compress:
                    sink.close()
            with blob.open("rb") as f:
                while chunk := f.read(1 << 20):
                    comp.update(chunk)
            d = "sha256:" + comp.hexdigest()
            descs.append(
                {
                    "mediaType": layer_types[0] if compress else layer_types[1],
                    "digest": d,
                    "size": blob.stat().st_size,
                }
            )
            diff_ids.append("sha256:" + diff.hexdigest())
            blobs.append((d, blob))
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": [{"created_by": f"lazypull test layer {i}"} for i in range(len(layers))],
            },
            sort_keys=True,
        ).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": _digest(config), "size": len(config)},
            "layers": descs,
        }
        mraw = json.dumps(manifest, sort_keys=True).encode()
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": manifest_type,
                    "digest": _digest(mraw),
                    "size": len(mraw),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
            _tar_add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            _tar_add_bytes(tar, "index.json", json.dumps(index).encode())
            for data in (config, mraw):
                _tar_add_bytes(tar, "blobs/sha256/" + _digest(data).split(":")[1], data)
            for d, path in blobs:
                tar.add(str(path), arcname="blobs/sha256/" + d.split(":")[1], recursive=False)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def start_containerd(parent: Path | None = None) -> ContainerdDaemon:
    """Starts a private containerd under a fresh directory (short path: unix socket length limit)."""
    base = Path(tempfile.mkdtemp(prefix="lpctrd-", dir=str(parent) if parent else "/tmp"))
    os.chmod(base, 0o700)
    daemon = ContainerdDaemon(base)
    daemon.start()
    return daemon


@dataclass
class CriContainerd(ContainerdDaemon):
    """containerd with its CRI plugin (``io.containerd.grpc.v1.cri``) on, images unpacked by the snapshot
    proxy plugin ``snapshotter`` at ``snapshot_socket`` (with the snapshot annotations a lazy snapshotter
    needs; None: containerd's own ``snapshotter``, e.g. overlayfs), pods host-network only (an empty CNI
    config dir), ``sandbox_image`` as the pause image, and ``plain_http`` registries reached over HTTP.
    The CRI socket is :attr:`socket` (containerd's own)."""

    snapshot_socket: Path | None = None
    snapshotter: str = "lazypull"
    sandbox_image: str = ""
    plain_http: tuple[str, ...] = ()

    def config_text(self) -> str:
        disabled = ", ".join(json.dumps(p) for p in _DISABLED_PLUGINS if p != "io.containerd.grpc.v1.cri")
        base = super().config_text()
        start = base.index("disabled_plugins")
        base = base[:start] + f"disabled_plugins = [{disabled}]" + base[base.index("\n", start):]
        hosts = self.base / "certs.d"
        for host in self.plain_http:
            (hosts / host).mkdir(parents=True, exist_ok=True)
            (hosts / host / "hosts.toml").write_text(
                f'server = "http://{host}"\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n')
        (self.base / "cni").mkdir(exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        if self.snapshot_socket is not None:
            base += ("[proxy_plugins]\n"
                     f"  [proxy_plugins.{self.snapshotter}]\n"
                     '    type = "snapshot"\n'
                     f'    address = "{self.snapshot_socket}"\n')
        return base + (
            f"[{cri}]\n"
            f'  sandbox_image = "{self.sandbox_image}"\n'
            "  restrict_oom_score_adj = true\n"      # runc cannot lower oom_score_adj on every machine
            '  stream_server_address = "127.0.0.1"\n'
            '  stream_server_port = "0"\n'
            "  disable_apparmor = true\n"
            f"[{cri}.containerd]\n"
            f'  snapshotter = "{self.snapshotter}"\n'
            "  disable_snapshot_annotations = false\n"
            '  default_runtime_name = "runc"\n'
            f"[{cri}.containerd.runtimes.runc]\n"
            '  runtime_type = "io.containerd.runc.v2"\n'
            f"[{cri}.cni]\n"
            f'  conf_dir = "{self.base / "cni"}"\n'
            f"[{cri}.registry]\n"
            f'  config_path = "{hosts}"\n'
        )
