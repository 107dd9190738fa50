"""Cold ``lazypull build`` with a lazy base, with a fully pulled base, and ``buildah bud``, on a shaped link::

    .venv/bin/python -m bench.build                        # python image, wan profile, 3 samples each
    .venv/bin/python -m bench.build --images python --profile wan --samples 2

The Dockerfile is ``FROM <image>`` then ``RUN <the workload's command> > /out``: a build step that
reads what the workload's start reads. Rows: ``lazypull-lazy`` builds FROM the eStargz image
(``esgz``) with the stargz snapshotter (the base is mounted through the mount server and fetched on
demand; the server is started before the clock, as bench/run.py does); ``lazypull-full`` builds FROM
the gzip image (``org``) with ``--snapshotter=overlayfs`` (the base is downloaded and extracted first);
``buildah`` runs Debian's ``buildah bud`` FROM ``org`` with a fresh private containers-storage
(devtools/podman.py). Each sample starts cold (fresh store, empty cache). Timed: the build command
until it exits; bytes: what the registry sent through the delay proxy. Images are prepared by
:mod:`bench.prepare`. Results: ``bench/results/build-<UTC time>.json`` and a table on stdout. Needs root.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import prepare as prep_mod  # noqa: E402
from bench.compare import Comparison, Take  # noqa: E402
from bench.compare import main as compare_main  # noqa: E402
from bench.delayproxy import DelayProxy  # noqa: E402
from bench.summary import megabytes, row_table, seconds  # noqa: E402
from bench.systems import LAZYPULL, stop_lazypull  # noqa: E402
from bench.workloads import Workload  # noqa: E402

ROWS = (("lazypull-lazy", "esgz"), ("lazypull-full", "org"), ("buildah", "org"))


def _context(base: Path, ref: str, workload: Workload) -> Path:
    context = base / "context"
    context.mkdir(parents=True)
    (context / "Dockerfile").write_text(f"FROM {ref}\nRUN {shlex.join(workload.command)} > /out\n")
    return context


def sample(base: Path, system: str, ref: str, registry_host: str, workload: Workload,
           proxy: DelayProxy) -> dict[str, Any]:
    """One cold build: seconds and bytes the registry sent."""
    from devtools.podman import remove_engine_dirs, write_engine_config

    context = _context(base, ref, workload)
    root = base / "lazypull"
    env = dict(os.environ)
    try:
        if system == "buildah":
            env = write_engine_config(base / "engine", registry_host, None)
            env["PATH"] = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            argv = ["buildah", "bud", "--tls-verify=false", "--network", "host", "--ulimit",
                    "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "-t", "localhost/bench:1",
                    str(context)]
        else:
            root.mkdir(parents=True)
            snapshotter = "stargz" if system == "lazypull-lazy" else "overlayfs"
            if snapshotter == "stargz":
                from lazypull.snapshot import MountClient

                with MountClient(root) as mc:
                    mc.ping()
            argv = [*LAZYPULL, "--root", str(root), "--insecure-registry", f"--snapshotter={snapshotter}",
                    "build", "-t", "localhost/bench:1", str(context)]
        os.sync()
        proxy.close_connections()
        proxy.reset()
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800,
                              stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{system}: exited {proc.returncode}: {proc.stderr[-800:]!r}")
        return {"total": elapsed, "bytes_fetched": proxy.counters().bytes_down}
    finally:
        if system == "buildah":
            subprocess.run(["buildah", "rmi", "-a", "-f"], env=env, capture_output=True, check=False)
            subprocess.run(["umount", "-R", str(base / "engine" / "graph" / "overlay")], capture_output=True,
                           check=False)
            remove_engine_dirs(base / "engine")
        else:
            stop_lazypull(root)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _setup(served: prep_mod.Served, workdir: Path) -> Take:
    def take(i: int, w: Workload, system: str, variant: str) -> dict[str, Any]:
        return sample(workdir / f"node-{i}", system, f"{served.ref_host}/{w.name}:{variant}", served.ref_host,
                      w, served.proxy)
    return take


def table(results: dict[str, Any]) -> str:
    """Markdown rows: median (slowest) build time and MB fetched, per image and row."""
    return row_table(results, [("build s", seconds("total")), ("MB fetched", megabytes)])


COMPARISON = Comparison(
    "build", "build", "network namespace, tc, FUSE, runc, buildah", ROWS,
    lambda res: f"total {res['total']:.2f}s, {res['bytes_fetched'] / 1e6:.1f} MB", table, _setup)


def main(argv: list[str] | None = None) -> int:
    return compare_main(COMPARISON, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(main())
