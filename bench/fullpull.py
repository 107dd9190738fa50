"""Full pull (issue #5): ``lazypull --snapshotter=overlayfs pull`` + ``run`` vs containerd's ``ctr``.

Both pull the demo's legacy gzip image (Debian bookworm minbase + python3, one layer) from a local
Debian ``docker-registry`` on 127.0.0.1 (no shaping: the cost measured is ours, not the network's),
into an empty store each sample, then run ``python3 -c 'print("hi")'``:

- lazypull: ``lazypull --snapshotter=overlayfs --insecure-registry pull REF`` (download, digest and
  DiffID check, unpack), then ``lazypull --snapshotter=overlayfs run --rm REF ...``;
- containerd 1.6 (:mod:`devtools.containerd`, private root/socket, cold restart each sample):
  ``ctr image pull --plain-http REF`` (fetch + unpack into its overlayfs snapshotter), then
  ``ctr run --rm REF ID ...``.

Samples alternate between the two (containerd first in odd rounds) and ``sync`` runs before each,
so neither pays for the other's writeback. Reported: medians and minimums of pull, run and total
wall seconds. ``--doc FILE`` replaces (or appends) the ``## Full pull`` section of that file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from devtools.containerd import ContainerdDaemon, bench_containerd, unmount_below
from devtools.registry import RegistryServer, bench_registry

COMMAND = ["python3", "-c", 'print("hi")']
REPO = "bench/python:org"
SECTION = "## Full pull"


@dataclass
class Sample:
    """One cold sample of one system (seconds)."""

    system: str
    pull: float
    run: float

    @property
    def total(self) -> float:
        return self.pull + self.run


def _timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``argv`` to exit; its wall seconds and stdout. Raises naming the command on failure."""
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=900)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return seconds, proc.stdout


def lazypull_sample(work: Path, ref: str, tree: Path | None = None) -> Sample:
    """A full pull into an empty store, then ``run --rm``; the store is removed afterwards.

    ``tree``: run the lazypull of another source tree (e.g. an older commit, for before/after).
    """
    root = work / "lazypull-root"
    shutil.rmtree(root, ignore_errors=True)
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    base = [sys.executable, "-m", "lazypull", "--snapshotter=overlayfs", "--insecure-registry"]
    subprocess.run(["sync"], check=True)
    try:
        pull, _ = _timed([*base, "pull", "-q", ref], env)
        run, out = _timed([*base, "run", "--rm", ref, *COMMAND], env)
        if out != "hi\n":
            raise RuntimeError(f"lazypull run printed {out!r}")
        return Sample("lazypull" if tree is None else f"lazypull ({tree.name})", pull, run)
    finally:
        unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)


def containerd_sample(daemon: ContainerdDaemon, ref: str, index: int) -> Sample:
    """``ctr image pull`` + ``ctr run --rm`` after a cold restart (empty content and snapshots)."""
    daemon.restart_cold()
    subprocess.run(["sync"], check=True)
    pull, _ = _timed(daemon.ctr("image", "pull", "--plain-http", "--snapshotter", "overlayfs", ref))
    run, out = _timed(daemon.ctr("run", "--rm", "--snapshotter", "overlayfs", ref, f"fullpull-{index}",
                                 *COMMAND))
    if out.replace("\r", "") != "hi\n":
        raise RuntimeError(f"ctr run printed {out!r}")
    return Sample("containerd", pull, run)


def prepare_image(registry: RegistryServer, cache: Path) -> tuple[str, int]:
    """Push the demo's legacy image (built and cached by :mod:`devtools.demo`); its ref and size."""
    from devtools.demo import ORG_NAME, build_images, build_rootfs_tar
    from lazypull.image import Store, push_image
    from lazypull.registry import RegistryClient

    build_root = build_images(cache, build_rootfs_tar(cache))
    store = Store(build_root)
    ref = f"{registry.host}/{REPO}"
    with RegistryClient(insecure=True) as client:
        push_image(store, client, ORG_NAME, dest=ref)
    size = sum(d.size for d in store.resolve(ORG_NAME).layers)
    return ref, size


def _row(name: str, samples: list[Sample]) -> str:
    def fmt(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f})"
    return (f"| {name} | {len(samples)} | {fmt([s.pull for s in samples])} | {fmt([s.run for s in samples])} "
            f"| {fmt([s.total for s in samples])} |")


def render(samples: list[Sample], *, size: int, note: str, command: str) -> str:
    """The ``## Full pull`` section (markdown)."""
    ours = [s for s in samples if s.system == "lazypull"]
    theirs = [s for s in samples if s.system == "containerd"]
    ratio = statistics.median(s.total for s in ours) / statistics.median(s.total for s in theirs)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        SECTION, "",
        f"lazypull's full pull (`lazypull --snapshotter=overlayfs pull` then `run --rm`) vs containerd 1.6 "
        f"from Debian (`ctr image pull --plain-http` then `ctr run --rm`, overlayfs snapshotter, private "
        f"root and socket, restarted with empty root before each sample), both pulling the demo's legacy "
        f"image (Debian bookworm minbase + python3, one gzip layer of {size / (1 << 20):.1f} MiB) from "
        f"Debian's docker-registry on 127.0.0.1, each into an empty store, then running "
        f"`python3 -c 'print(\"hi\")'`. Samples alternate between the systems, `sync` before each. "
        f"Seconds, median (minimum) of n samples. {note}",
        "",
        "| system | n | pull | run | pull + run |",
        "|---|---:|---:|---:|---:|",
        _row("lazypull", ours),
        _row("containerd 1.6 (ctr)", theirs),
        *[_row(name, [s for s in samples if s.system == name])
          for name in dict.fromkeys(s.system for s in samples) if name.startswith("lazypull ")],
        "",
        f"lazypull / containerd (median pull + run): {ratio:.2f}x. Machine: {os.cpu_count()} CPUs shared "
        f"with other work (load average at the end {load}), kernel {platform.release()}, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"Reproduce (as root): `{command}`",
        "",
    ]
    return "\n".join(lines)


def write_section(doc: Path, text: str) -> None:
    """Replace the ``## Full pull`` section of ``doc`` (up to the next ``## ``), or append it."""
    old = doc.read_text() if doc.exists() else ""
    start = old.find(SECTION + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + (old[end + 1:] if end >= 0 else "")
    doc.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/fullpull.py", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3, help="samples per system (default 3)")
    parser.add_argument("--cache-dir", type=Path, default=Path("/var/cache/lazypull-demo"),
                        help="the demo's cache (rootfs tar and built images)")
    parser.add_argument("--systems", default="lazypull,containerd", help="comma-separated subset")
    parser.add_argument("--doc", type=Path, help="write the '## Full pull' section into this file")
    parser.add_argument("--note", default="", help="extra sentence for the doc section")
    parser.add_argument("--json", type=Path, help="write the raw samples here")
    parser.add_argument("--compare-tree", type=Path,
                        help="also sample the lazypull of this source tree (e.g. `git archive` of an "
                             "older commit), interleaved with the others")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("fullpull: run as root (containers, mounts)", file=sys.stderr)
        return 2
    systems = args.systems.split(",")
    if args.compare_tree:
        systems.append("tree")
    work = Path(tempfile.mkdtemp(prefix="lazypull-fullpull-", dir="/var/tmp"))
    samples: list[Sample] = []
    try:
        with bench_registry(work / "registry", work / "registry-storage") as registry:
            ref, size = prepare_image(registry, args.cache_dir)
            daemon = bench_containerd(work / "containerd") if "containerd" in systems else None
            try:
                for i in range(args.samples):
                    order = [s for s in ("containerd", "lazypull", "tree") if s in systems]
                    if i % 2:
                        order.reverse()
                    for system in order:
                        if system not in systems:
                            continue
                        if system == "lazypull":
                            sample = lazypull_sample(work, ref)
                        elif system == "tree":
                            sample = lazypull_sample(work, ref, args.compare_tree.resolve())
                        else:
                            assert daemon is not None
                            sample = containerd_sample(daemon, ref, i)
                        samples.append(sample)
                        print(f"{sample.system:10} pull {sample.pull:6.2f} s  run {sample.run:5.2f} s  "
                              f"total {sample.total:6.2f} s", flush=True)
            finally:
                if daemon is not None:
                    daemon.stop()
    finally:
        unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in samples], indent=1))
    for name in dict.fromkeys(s.system for s in samples):
        print(_row(name, [s for s in samples if s.system == name]))
    if args.doc and {"lazypull", "containerd"} <= set(systems):
        command = f".venv/bin/python -m bench.fullpull --samples {args.samples} --doc {args.doc}"
        if args.compare_tree:
            command += f" --compare-tree {args.compare_tree}"
        write_section(args.doc, render(samples, size=size, note=args.note, command=command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
