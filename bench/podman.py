"""Cold ``podman run`` without and with lazypull's additional layer store (docs/podman.md), on a shaped
link (:mod:`bench.netshape` bandwidth, :mod:`bench.delayproxy` round trips)::

    .venv/bin/python -m bench.podman                        # python image, wan profile, 3 samples each
    .venv/bin/python -m bench.podman --images python --profile wan --samples 5

Rows: ``podman`` runs the legacy gzip image (``org``) with no store configured: podman downloads and
unpacks every layer; ``podman-lazypull-store`` runs the eStargz image (``esgz``, prioritized) with
``additionallayerstores`` naming a store served by ``lazypull store``: podman takes the layers from the
store and the container reads them on demand. Timed: ``podman run --rm IMAGE CMD`` from a cold,
private containers-storage (graphroot, runroot under a fresh directory, devtools/podman.py) and, for
the lazy row, a fresh lazypull root (empty chunk cache) whose mount server and store were started
before the clock; the workload's expected output is checked. Debian's podman 4.3 as root. lazypull is
the working tree's (the store is new). Images are prepared (built, converted, pushed, cached) by
:mod:`bench.prepare`, as for ``bench/run.py``. Results: ``bench/results/podman-<UTC time>.json`` and a
table on stdout (median and slowest). Needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
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

ROWS = (("podman", "org"), ("podman-lazypull-store", "esgz"))


def sample(base: Path, lazy: bool, ref: str, registry_host: str, workload: Workload, proxy: DelayProxy
           ) -> dict[str, Any]:
    """One cold ``podman run``: seconds, bytes the registry sent, layers linked to the store."""
    from devtools.podman import RUN_FLAGS, remove_engine_dirs, write_engine_config

    root, store = base / "lazypull", base / "store"
    env = write_engine_config(base / "engine", registry_host, store if lazy else None)
    env["PATH"] = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    try:
        if lazy:
            root.mkdir(parents=True)
            subprocess.run([*LAZYPULL, "--root", str(root), "store", str(store)], env=env, check=True,
                           capture_output=True)
        os.sync()
        proxy.close_connections()
        proxy.reset()
        keep = os.environ.get("BENCH_PODMAN_KEEP_LOGS")      # a directory for the servers' logs
        argv = ["podman", *(["--log-level=debug"] if keep else []), "run", "--rm", *RUN_FLAGS, ref,
                *workload.command]
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900,
                              stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0 or workload.expect not in proc.stdout + proc.stderr:
            raise RuntimeError(f"{ref}: podman run exited {proc.returncode}: {proc.stderr[-800:]!r}")
        fetched = proxy.counters().bytes_down
        if keep:
            Path(keep, f"{base.name}-podman.log").write_text(proc.stderr)
        linked = len(list((base / "engine" / "graph" / "overlay").glob("*/additionallayer")))
        served = 0
        if lazy:        # what the layer filesystems fetched (the rest of bytes_fetched: podman's own)
            stats = subprocess.run([*LAZYPULL, "--root", str(root), "stats", "--json"], env=env,
                                   capture_output=True, text=True, check=False).stdout
            with contextlib.suppress(ValueError, KeyError, AttributeError):
                served = sum(int(v["bytes_fetched"]) for v in json.loads(stats)["layers"].values())
            if keep:
                subprocess.run(["cp", str(root / "run" / "daemon.log"), f"{keep}/{base.name}.log"],
                               check=False)
        return {"total": elapsed, "bytes_fetched": fetched, "store_layers": linked,
                "lazy_layer_bytes": served}
    finally:
        subprocess.run(["podman", "rmi", "-a", "-f"], env=env, capture_output=True, check=False)
        subprocess.run(["umount", "-R", str(base / "engine" / "graph" / "overlay")], capture_output=True,
                       check=False)
        remove_engine_dirs(base / "engine")
        if lazy:
            subprocess.run([*LAZYPULL, "--root", str(root), "store", "--stop", str(store)], env=env,
                           capture_output=True, check=False)
            stop_lazypull(root)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _setup(served: prep_mod.Served, workdir: Path) -> Take:
    def take(i: int, w: Workload, system: str, variant: str) -> dict[str, Any]:
        return sample(workdir / f"node-{i}", system != "podman", f"{served.ref_host}/{w.name}:{variant}",
                      served.ref_host, w, served.proxy)
    return take


def table(results: dict[str, Any]) -> str:
    """Markdown rows: median (slowest) run time and MB fetched, per image and row."""
    return row_table(results, [("podman run s", seconds("total")), ("MB fetched", megabytes),
                               ("layers from store", lambda rows: str(rows[0]["store_layers"]))])


COMPARISON = Comparison(
    "podman", "podman-run", "network namespace, tc, FUSE, podman", ROWS,
    lambda res: (f"total {res['total']:.2f}s, {res['bytes_fetched'] / 1e6:.1f} MB, "
                 f"{res['store_layers']} layers from the store"), table, _setup)


def main(argv: list[str] | None = None) -> int:
    return compare_main(COMPARISON, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(main())
