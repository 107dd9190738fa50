"""lazypull's lazy-start benchmark, HelloBench style: ``make bench`` (reduced) or the full matrix::

    .venv/bin/python bench/run.py                       # python image, wan profile, 5 samples
    .venv/bin/python bench/run.py --images python,gcc,postgres --profiles lan,wan,slow --samples 5

For every (image, profile) it measures, in shuffled order and each sample cold: containerd 1.6 full
pull (the yardstick), lazypull's own full pull (``--snapshotter=overlayfs``), and lazypull lazy
starts of ``esgz-noopt``, ``esgz`` (prioritized files) and ``zstdchunked``. Raw results go to
``bench/results/<UTC time>.json``; then :mod:`bench.summary` writes the "Lazy start" section of
docs/benchmarks.md and docs/bench-lazy-start.png. Needs root (netns, tc, FUSE, runc).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):      # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import prepare as prep_mod
from bench import summary
from bench.delayproxy import DelayProxy
from bench.netshape import PROFILES, NetNamespace, Profile
from bench.sample import Sample, measure
from bench.systems import LAZYPULL, ContainerdSystem, LazypullSystem
from bench.workloads import parse_names
from devtools.registry import RegistryServer, summarize

REPO = Path(__file__).resolve().parents[1]
# (system key, variant tag): what each row of the results is.
ROWS = [("containerd", "org"), ("lazypull-overlayfs", "org"), ("lazypull-lazy", "esgz-noopt"),
        ("lazypull-lazy", "esgz"), ("lazypull-lazy", "zstdchunked")]
# Ablation, only when asked for: the prioritized eStargz with the mount server's background fetch off.
EXTRA_ROWS = [("lazypull-lazy-nobg", "esgz"),
              # issue 14 item 2: eStargz without prioritized files, the image removed and pulled again
              # (everything wiped as for a first-ever start but the node's learned store, ``learned/``:
              # what the previous start read), the same with create waiting for the prefetch
              # (``prefetch_wait``, as the containerd proxy does), and the layers' TOC records kept too
              # (a re-start after the chunk cache was evicted, the image still there)
              ("lazypull-lazy-repull", "esgz-noopt"), ("lazypull-lazy-repull-wait", "esgz-noopt"),
              ("lazypull-lazy-evicted", "esgz-noopt"),
              # the first-start row with learning and the passwd/group fetch off: the fetches of the code
              # before issue 14 item 2, for comparison
              ("lazypull-lazy-nolearn", "esgz-noopt"),
              # the first-start row with the blob-order read-ahead on (fs.layer.readahead; off by default)
              ("lazypull-lazy-readahead", "esgz-noopt"),
              # issue 14 item 3: `lazypull run --rm` as one command (it pulls; all timed as the run
              # phase), with the mount server started before the clock, and without (the command starts it)
              ("lazypull-run", "esgz"), ("lazypull-run-cold", "esgz")]
# With --base-python: the same rows by another lazypull (the interpreter of a tree before a change),
# interleaved with these in one run.
BASE_ROWS = [(system + "-base", variant) for system, variant in ROWS + EXTRA_ROWS
             if system.startswith("lazypull-")]
# Which systems time `run` as one command, and which start no mount server before the clock.
ONE_COMMAND = ("lazypull-run", "lazypull-run-cold")
COLD_SERVER = ("lazypull-run-cold",)
# What each system keeps of its store root between samples (globs under the root; the others keep
# nothing). The -base twins keep the same.
KEEP = {"lazypull-lazy-repull": ("learned",), "lazypull-lazy-repull-wait": ("learned",),
        "lazypull-lazy-evicted": ("learned", "snapshots/*/toc.record", "snapshots/*/origins")}


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)      # unwinds through every finally: rules, daemons, mounts


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    # What one `lazypull` command costs before doing anything (interpreter + imports): every phase pays it.
    startup = []
    for _ in range(3):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "lazypull", "--version"], capture_output=True)
        startup.append(time.monotonic() - t0)
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu": cpu, "memory": mem,
            "python": platform.python_version(), "commit": commit,
            "loadavg_start": os.getloadavg(), "cli_startup_s": sorted(startup)[1]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="lazypull lazy-start benchmark (HelloBench style)")
    p.add_argument("--images", default="python", help="comma list of python,gcc,postgres")
    p.add_argument("--profiles", default="wan", help=f"comma list of {','.join(PROFILES)}")
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--rows", default="all",
                   help="comma list of system:variant (e.g. containerd:org,lazypull-lazy:esgz), 'all' "
                        "(the five standard rows) or 'all+nobg' (plus lazypull-lazy-nobg:esgz)")
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("LAZYPULL_BENCH_CACHE",
                                                                          "/var/tmp/lazypull-bench")))
    p.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md and the PNG")
    p.add_argument("--seed", type=int, default=None, help="shuffle seed (default: random)")
    p.add_argument("--live-tree", action="store_true",
                   help="run lazypull from the working tree as it changes (default: from a snapshot of HEAD, "
                        "so edits made while the benchmark runs do not leak into it)")
    p.add_argument("--base-python", default=None, metavar="PY",
                   help="the interpreter of another lazypull (e.g. a venv whose path has an older tree) for "
                        "the *-base rows (any lazypull row with -base, e.g. lazypull-lazy-base:esgz)")
    p.add_argument("--prepare-only", action="store_true",
                   help="build, push, convert and trace the images (cached for later runs), measure nothing")
    args = p.parse_args(argv)
    if args.samples < 1:
        p.error("--samples must be at least 1")
    try:
        args.workloads = parse_names(args.images)
    except ValueError as err:
        p.error(str(err))
    args.profile_list = []
    for name in (n.strip() for n in args.profiles.split(",") if n.strip()):
        if name not in PROFILES:
            p.error(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
        args.profile_list.append(PROFILES[name])
    if args.rows == "all":
        args.row_list = list(ROWS)
    elif args.rows == "all+nobg":
        args.row_list = ROWS + EXTRA_ROWS
    else:
        args.row_list = []
        known = ROWS + EXTRA_ROWS + (BASE_ROWS if args.base_python else [])
        for item in args.rows.split(","):
            system, _, variant = item.strip().partition(":")
            if (system, variant) not in known:
                p.error(f"unknown row {item!r}; choose from {', '.join(f'{s}:{v}' for s, v in known)}")
            args.row_list.append((system, variant))
    return args


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def run(args: argparse.Namespace) -> Path:
    """The whole benchmark; returns the results file."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out_path: Path = args.results_dir / f"lazy-start-{stamp}.json"
    workdir = args.cache_dir / f"work-{os.getpid()}"
    results: dict[str, Any] = {
        "kind": "lazy-start", "date": stamp, "command": " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine(), "profiles": {p.name: vars(p) for p in args.profile_list},
        "images": {}, "samples": [], "errors": [],
    }

    def save() -> None:
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=str))
        tmp.replace(out_path)

    rng = random.Random(args.seed)
    variants = tuple(sorted({v for _, v in args.row_list}, key=prep_mod.VARIANTS.index))
    with contextlib.ExitStack() as stack:
        ns, registry, proxy, ref_host = prep_mod.serve(stack, workdir, args.cache_dir)
        log(f"registry {registry.host} in netns {ns.name}; delay proxy {ref_host}")

        prepared: dict[str, prep_mod.Prepared] = {}
        for w in args.workloads:
            log(f"preparing {w.name}")
            try:
                prepared[w.name] = prep_mod.prepare(w, cache_dir=args.cache_dir, registry=registry,
                                                    proxy=proxy, ref_host=ref_host, workdir=workdir,
                                                    variants=variants, log=log)
            except Exception as err:       # one image failing must not lose the others
                log(f"  {w.name} skipped: {err}")
                results["errors"].append(f"{w.name}: preparation failed: {err}")
                continue
            results["images"][w.name] = vars(prepared[w.name])
        save()
        if args.prepare_only:
            return out_path

        systems: dict[str, Any] = {}
        if any(s == "containerd" for s, _ in args.row_list):
            systems["containerd"] = ContainerdSystem(workdir / "containerd")
            stack.callback(systems["containerd"].close)
        for key, snap, config in (("lazypull-overlayfs", "overlayfs", ""), ("lazypull-lazy", "stargz", ""),
                                  ("lazypull-lazy-nobg", "stargz", "background_fetch = false\n"),
                                  ("lazypull-lazy-repull", "stargz", ""),
                                  ("lazypull-lazy-repull-wait", "stargz", "prefetch_wait = true\n"),
                                  ("lazypull-lazy-evicted", "stargz", ""),
                                  ("lazypull-lazy-nolearn", "stargz",
                                   "learn_window = 0\nfetch_user_db = false\n"),
                                  ("lazypull-lazy-readahead", "stargz", "blob_readahead = 524288\n"),
                                  ("lazypull-run", "stargz", ""), ("lazypull-run-cold", "stargz", "")):
            for suffix, python in (("", None), ("-base", args.base_python)):
                if (suffix and python is None) or not any(s == key + suffix for s, _ in args.row_list):
                    continue
                systems[key + suffix] = LazypullSystem(
                    workdir / f"root-{key}{suffix}", snap, config=config, name=key + suffix,
                    keep=KEEP.get(key, ()), one_command=key in ONE_COMMAND,
                    warm_server=key not in COLD_SERVER, python=python)
                stack.callback(systems[key + suffix].close)

        for profile in args.profile_list:
            run_profile(args, profile, ns, proxy, registry, systems, ref_host, results, rng, save)
        results["machine"]["loadavg_end"] = os.getloadavg()
        results["qdisc_stats"] = ns.qdisc_stats()
        save()
    return out_path


class _Counting:
    """Zeroes the proxy counters and marks the access log when a sample starts; reads both when the
    workload has finished."""

    def __init__(self, proxy: DelayProxy, registry: RegistryServer) -> None:
        self.proxy, self.registry, self.mark = proxy, registry, 0

    def before(self) -> None:
        self.proxy.close_connections()
        self.proxy.reset()
        self.mark = self.registry.mark()

    def after(self, sample: Sample) -> None:
        c = self.proxy.counters()
        sample.proxy = {"connections": c.connections, "bytes_down": c.bytes_down, "bytes_up": c.bytes_up}
        sample.registry = summarize(self.registry.requests_since(self.mark))


def run_profile(args: argparse.Namespace, profile: Profile, ns: NetNamespace, proxy: DelayProxy,
                registry: RegistryServer, systems: dict[str, Any], ref_host: str, results: dict[str, Any],
                rng: random.Random, save: Any) -> None:
    """Every sample of one network profile, each round in shuffled order."""
    ns.shape(profile.rate_mbit)
    proxy.set_rtt(profile.rtt)
    try:
        for workload in args.workloads:
            if workload.name not in results["images"]:
                continue            # its preparation failed (see results["errors"])
            jobs = [(s, v) for s, v in args.row_list]
            for system_key, variant in jobs:     # the start that the kept rows learn from: untimed
                if KEEP.get(system_key.removesuffix("-base")):
                    for other in systems.values():
                        other.quiesce()
                    primer = Sample(workload.name, variant, system_key, profile.name, -1)
                    measure(systems[system_key], f"{ref_host}/{workload.name}:{variant}", workload, primer,
                            before=lambda: None, after=lambda _s: None)
                    systems[system_key].quiesce()
                    log(f"{profile.name} learning run {workload.name} {system_key} {variant}: "
                        f"{'ok' if primer.ok else primer.error} (not counted)")
            for index in range(args.samples):
                order = jobs[:]
                rng.shuffle(order)
                for system_key, variant in order:
                    sample = Sample(workload.name, variant, system_key, profile.name, index)
                    ref = f"{ref_host}/{workload.name}:{variant}"
                    for other in systems.values():      # nothing of an earlier sample still runs
                        other.quiesce()
                    counting = _Counting(proxy, registry)
                    t0 = time.monotonic()
                    measure(systems[system_key], ref, workload, sample, before=counting.before,
                            after=counting.after)
                    systems[system_key].quiesce()
                    results["samples"].append(sample.to_json())
                    status = "ok" if sample.ok else f"FAILED: {(sample.error or '')[:300]}"
                    log(f"{profile.name} #{index} {workload.name:8} {system_key:18} {variant:11} "
                        f"pull {sample.pull:6.2f} create {sample.create:6.2f} run {sample.run:6.2f} "
                        f"({sample.registry.get('bytes', 0) / 1e6:.1f} MB, "
                        f"{sample.registry.get('requests', 0)} req) {status} [{time.monotonic() - t0:.0f}s]")
                    save()
    finally:
        ns.shape(None)
        proxy.set_rtt(0.0)


def pin_lazypull(cache_dir: Path) -> str:
    """Extract HEAD's lazypull package into the cache and put it first on the import path of this
    process and of every child (CLI, mount server); returns the commit."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    src = cache_dir / "src" / commit[:12]
    if not (src / "lazypull" / "__init__.py").exists():
        tmp = src.with_name(src.name + ".tmp")
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "lazypull"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        subprocess.run(["rm", "-rf", str(src)], check=True)
        tmp.rename(src)
    # Byte-compiled (a no-op once done): with PYTHONDONTWRITEBYTECODE set, every CLI process would
    # otherwise compile each lazypull module it imports, tens of ms per phase.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src / "lazypull")], check=True)
    # The editable install's meta-path finder would still map `lazypull` to the working tree;
    # a sitecustomize beside the snapshot drops it in every child interpreter.
    (src / "sitecustomize.py").write_text(
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in getattr(f, '__name__', '')]\n")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src) + (os.pathsep + old if old else "")
    sys.path.insert(0, str(src))
    sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", "")]
    # The mount server is started as `python -I -m lazypull daemon` (lazypull.selfexec), which ignores
    # PYTHONPATH and would import the editable install, i.e. the working tree as it is when the server
    # starts: an interpreter of its own whose site-packages lists the snapshot first, then this one's
    # site-packages (the dependencies) as a plain path (its editable finder's .pth is not run).
    python = _pinned_python(src)
    sys.executable = str(python)        # what selfexec starts the mount server with (reset_cold's ping)
    LAZYPULL[0] = str(python)           # what every CLI phase runs
    return commit


def _pinned_python(src: Path) -> Path:
    """``src/venv/bin/python``: an interpreter importing lazypull from ``src`` alone, even with ``-I``."""
    venv = src / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "lazypull-pin.pth").write_text(f"{src}\n{deps}\n")
    return python


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py needs root (network namespace, tc, FUSE mounts, runc)", file=sys.stderr)
        return 2
    if not args.live_tree:
        args.cache_dir = args.cache_dir.resolve()
        args.results_dir = args.results_dir.resolve()
        log(f"lazypull pinned at {pin_lazypull(args.cache_dir)[:12]} (HEAD)")
        os.chdir(args.cache_dir)     # a child's sys.path[0] is its cwd: never the working tree
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    out: Path = run(args)
    log(f"results: {out}")
    if not args.no_docs and not args.prepare_only:
        summary.write_docs([out], REPO / "docs" / "benchmarks.md", REPO / "docs" / "bench-lazy-start.png")
        log("wrote docs/benchmarks.md (## Lazy start) and docs/bench-lazy-start.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
