"""The main of a side-by-side benchmark (bench/build.py, cri.py, podman.py), written once.

Each compares systems on the same images over one shaped link: its options, the root check, the
registry served in a network namespace behind the delay proxy (:func:`bench.prepare.serve`), the
images pushed as ``org`` and ``esgz`` while the link is still fast, then the link shaped to the
profile and every (image, row) sampled cold in one shuffled order (:func:`sample_shuffled`), the
results file rewritten after each sample, and a markdown table at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import prepare as prep_mod
from bench.netshape import PROFILES
from bench.workloads import Workload, parse_names

REPO = Path(__file__).resolve().parents[1]

# take(index, workload, system, variant): one cold sample, its numbers.
Take = Callable[[int, Workload, str, str], dict[str, Any]]


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def sample_shuffled(workloads: Sequence[Workload], rows: Sequence[tuple[str, str]], samples: int,
                    rng: random.Random, take: Take, describe: Callable[[dict[str, Any]], str],
                    results: dict[str, Any], out_path: Path) -> None:
    """Every (workload, row) ``samples`` times in one shuffled order (drift spreads over all rows).

    ``take`` measures one; its result joins ``results["samples"]`` (logged with ``describe``), its
    exception ``results["errors"]``, and ``out_path`` is rewritten after each, so an interrupted run
    keeps what it measured.
    """
    order = [(w, system, variant) for w in workloads for system, variant in rows for _ in range(samples)]
    rng.shuffle(order)
    for i, (w, system, variant) in enumerate(order):
        try:
            res = take(i, w, system, variant)
            results["samples"].append({"image": w.name, "system": system, "variant": variant, **res})
            log(f"{w.name} {system}:{variant} {describe(res)}")
        except Exception as err:
            log(f"{w.name} {system}:{variant} failed: {err}")
            results["errors"].append(f"{w.name} {system}:{variant}: {err}")
        out_path.write_text(json.dumps(results, indent=1))


@dataclass(frozen=True)
class Comparison:
    """What differs between the side-by-side benchmarks."""

    name: str                                      # bench/<name>.py; results <name>-<time>.json
    kind: str                                      # the results' "kind"
    needs: str                                     # why root, for the refusal
    rows: Sequence[tuple[str, str]]                # (system, variant) rows
    describe: Callable[[dict[str, Any]], str]      # one sample's log line
    table: Callable[[dict[str, Any]], str]         # the markdown printed at the end
    # Given the served registry and the work dir (before the images are prepared): the sampler.
    setup: Callable[[prep_mod.Served, Path], Take]
    add_args: Callable[[argparse.ArgumentParser], None] | None = None
    start: Callable[[argparse.Namespace], None] | None = None  # after the options, before anything runs


def main(c: Comparison, description: str, argv: list[str] | None = None) -> int:
    """Parse the options, run the comparison, print its table; 2 when not root."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--images", default="python")
    p.add_argument("--profile", default="wan", choices=list(PROFILES))
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("LAZYPULL_BENCH_CACHE",
                                                                          "/var/tmp/lazypull-bench")))
    p.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--seed", type=int, default=None)
    if c.add_args is not None:
        c.add_args(p)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print(f"bench/{c.name}.py needs root ({c.needs})", file=sys.stderr)
        return 2
    profile = PROFILES[args.profile]
    workloads = parse_names(args.images)
    args.cache_dir = args.cache_dir.resolve()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if c.start is not None:
        c.start(args)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_path = args.results_dir.resolve() / f"{c.name}-{stamp}.json"
    results: dict[str, Any] = {"kind": c.kind, "date": stamp,
                               "command": " ".join(shlex.quote(a) for a in sys.argv),
                               "profile": vars(profile), "samples": [], "errors": []}
    workdir = args.cache_dir / f"{c.name}-work-{os.getpid()}"
    rng = random.Random(args.seed)
    with contextlib.ExitStack() as stack:
        served = prep_mod.serve(stack, workdir, args.cache_dir)
        take = c.setup(served, workdir)
        for w in workloads:
            log(f"preparing {w.name}")
            prep_mod.prepare(w, cache_dir=args.cache_dir, registry=served.registry, proxy=served.proxy,
                             ref_host=served.ref_host, workdir=workdir, variants=("org", "esgz"), log=log)
        served.ns.shape(profile.rate_mbit)
        served.proxy.set_rtt(profile.rtt)
        sample_shuffled(workloads, c.rows, args.samples, rng, take, c.describe, results, out_path)
    print(c.table(results))
    log(f"results: {out_path}")
    return 0
