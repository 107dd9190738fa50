"""Cold pod start through containerd's CRI plugin: containerd's overlayfs snapshotter with the legacy
gzip image (``org``) vs lazypull's proxy snapshotter with the eStargz image (``esgz``, prioritized),
on a shaped link (:mod:`bench.netshape` bandwidth, :mod:`bench.delayproxy` round trips)::

    .venv/bin/python -m bench.cri                           # python image, wan profile, 3 samples each
    .venv/bin/python -m bench.cri --images python --profile wan --samples 5

What a kubelet does for a new pod, driven by our CRI client (``devtools/cri.py``, containerd 1.6's
CRI plugin started by ``devtools/containerd.py``): the sandbox first (its pause image pulled
untimed, as it is cached on a real node), then, timed, ``PullImage`` (``pull``), ``CreateContainer``
(``create``) and ``StartContainer`` until the container exited with its expected output (``run``). The
lazy row pulls through lazypull's CRI image service (``--cri-image-service``), as a node configured by
docs/kubernetes.md does. Every sample is cold: a fresh containerd root, and for the lazy row a fresh
lazypull root (empty chunk cache), all started before the clock. lazypull is HEAD's, pinned as by
``bench/run.py`` (``--live-tree``: the working tree's). Images are prepared (built, converted,
pushed, cached) by :mod:`bench.prepare`, as for ``bench/run.py``. Results: ``bench/results/cri-<UTC
time>.json`` and a table on stdout (median and slowest of the samples). Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import prepare as prep_mod  # noqa: E402
from bench.compare import Comparison, Take, log  # noqa: E402
from bench.compare import main as compare_main  # noqa: E402
from bench.delayproxy import DelayProxy  # noqa: E402
from bench.summary import megabytes, row_table, seconds  # noqa: E402
from bench.systems import LAZYPULL, stop_lazypull  # noqa: E402
from bench.workloads import Workload  # noqa: E402
from devtools.registry import RegistryServer  # noqa: E402

ROWS = (("containerd-overlayfs", "org"), ("lazypull-cri", "esgz"))
PAUSE = "lazypull-bench/pause"


@dataclass
class Node:
    """containerd with its CRI plugin (and, for the lazy row, lazypull's mount server) under ``base``."""

    base: Path
    lazy: bool
    sandbox_image: str
    plain_http: tuple[str, ...]

    def start(self) -> None:
        from devtools.containerd import CriContainerd

        self.base.mkdir(parents=True)
        self.root = self.base / "lazypull"
        snap_sock = self.base / "sn.sock"
        self.image_socket: Path | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        if self.lazy:
            self.root.mkdir()
            self.image_socket = self.base / "cri.sock"
            self.daemon = subprocess.Popen(
                [*LAZYPULL, "--root", str(self.root), "daemon", "--containerd-socket", str(snap_sock),
                 "--cri-image-service", str(self.image_socket), "--cri-containerd-socket",
                 str(self.base / "ctrd" / "containerd.sock")],
                stdout=subprocess.DEVNULL, stderr=(self.base / "daemon.log").open("wb"))
            deadline = time.monotonic() + 60
            while not (snap_sock.exists() and self.image_socket.exists()):
                if self.daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("lazypull daemon did not start: "
                                       + (self.base / "daemon.log").read_text()[-1500:])
                time.sleep(0.05)
        self.containerd = CriContainerd(self.base / "ctrd", snapshot_socket=snap_sock if self.lazy else None,
                                        snapshotter="lazypull" if self.lazy else "overlayfs",
                                        sandbox_image=self.sandbox_image, plain_http=self.plain_http)
        self.containerd.base.mkdir()
        self.containerd.start()

    def stop(self) -> None:
        from devtools.cri import CriClient

        containerd = getattr(self, "containerd", None)
        if containerd is not None and containerd.proc is not None:
            with contextlib.suppress(Exception):
                cri = CriClient(containerd.socket)
                for pod in cri.list_pods():
                    cri.remove_pod(pod)
                cri.close()
            containerd.stop()
        if self.lazy:
            stop_lazypull(self.root)
        subprocess.run(["rm", "-rf", str(self.base)], check=False)


def sample(node: Node, ref: str, workload: Workload, proxy: DelayProxy, registry: RegistryServer
           ) -> dict[str, Any]:
    """One cold pod start; the phases in seconds, the bytes the registry sent, and the lazy mounts."""
    from devtools.cri import CriClient

    cri = CriClient(node.containerd.socket, node.image_socket)
    try:
        logs = node.base / "logs"
        logs.mkdir()
        config = CriClient.sandbox_config("bench", logs)
        pod = cri.run_pod(config)            # pulls the pause image: untimed
        os.sync()
        proxy.close_connections()
        proxy.reset()
        mark = registry.mark()
        t0 = time.perf_counter()
        cri.pull(ref)
        t1 = time.perf_counter()
        container = cri.create_container(pod, config, "workload", ref, list(workload.command), "c.log")
        t2 = time.perf_counter()
        cri.start_container(container)
        deadline = time.monotonic() + 600
        while True:
            status = cri.container_status(container)
            if status.state == 2:                  # CONTAINER_EXITED
                break
            if workload.ready and workload.ready in _log_text(logs / "c.log"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ref}: container still running after 600 s")
            time.sleep(0.01)
        t3 = time.perf_counter()
        out = _log_text(logs / "c.log")
        if workload.expect not in out:
            raise RuntimeError(f"{ref}: expected {workload.expect!r}, log: {out[-500:]!r}")
        fetched = proxy.counters().bytes_down
        blobs = [r for r in registry.requests_since(mark) if r.kind == "blob"]
        mounts = sum("fuse.lazypull" in line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                     if str(node.base) in line)
        return {"pull": t1 - t0, "create": t2 - t1, "run": t3 - t2, "total": t3 - t0,
                "bytes_fetched": fetched, "blob_requests": len(blobs), "lazy_mounts": mounts}
    finally:
        cri.close()


def _log_text(path: Path) -> str:
    """The messages of a CRI log file (``time stream tag message`` lines)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(line.split(" ", 3)[3] if line.count(" ") >= 3 else line for line in lines)


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--live-tree", action="store_true",
                   help="run the working tree's lazypull (default: HEAD's, pinned as bench/run.py does)")


def _start(args: argparse.Namespace) -> None:
    if not args.live_tree:
        from bench.run import pin_lazypull

        args.cache_dir.mkdir(parents=True, exist_ok=True)
        log(f"lazypull pinned at {pin_lazypull(args.cache_dir)[:12]} (HEAD)")


def _setup(served: prep_mod.Served, workdir: Path) -> Take:
    """The pause image pushed (before the link is shaped: a node has it cached), then the sampler."""
    from devtools.rootfs import busybox_specs, push_image_layers

    ref_host, registry = served.ref_host, served.registry
    pause = f"{registry.host}/{PAUSE}:1"
    push_image_layers(workdir / "pause", pause, [busybox_specs()],
                      config={"config": {"Entrypoint": ["/bin/sleep", "86400"]}})

    def take(i: int, w: Workload, system: str, variant: str) -> dict[str, Any]:
        node = Node(workdir / f"node-{i}", system == "lazypull-cri", pause, (ref_host, registry.host))
        try:
            node.start()
            return sample(node, f"{ref_host}/{w.name}:{variant}", w, served.proxy, registry)
        finally:
            node.stop()
    return take


def table(results: dict[str, Any]) -> str:
    """Markdown rows: median (slowest) per phase, and MB fetched, per image and row."""
    phases = ("pull", "create", "run", "total")
    return row_table(results, [*((f"{phase} s", seconds(phase)) for phase in phases),
                               ("MB fetched", megabytes)])


COMPARISON = Comparison(
    "cri", "cri-pod-start", "network namespace, tc, FUSE, containerd", ROWS,
    lambda res: (f"total {res['total']:.2f}s (pull {res['pull']:.2f}, create {res['create']:.2f}, "
                 f"run {res['run']:.2f}), {res['bytes_fetched'] / 1e6:.1f} MB, "
                 f"{res['lazy_mounts']} lazy mounts"),
    table, _setup, add_args=_add_args, start=_start)


def main(argv: list[str] | None = None) -> int:
    return compare_main(COMPARISON, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(main())
