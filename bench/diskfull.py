"""A store root on a small disk (issue 10 items 6, 8): lazy containers read more than the disk holds.

The store root is a ``--disk-mib`` tmpfs (default 64 MiB) under the work directory; the image (static
busybox and ``--files`` incompressible 1 MiB files, one eStargz layer, on Debian's docker-registry
on loopback) holds more than fits. ``--containers`` lazy ``run --rm`` in a row each hash
``--per-container`` files (together every file, twice). For each ``--bounds`` (``cache_max_bytes``;
0: the default, 10% of the disk; a bound larger than the disk makes the disk itself fill up) a fresh
disk and server; after each container the chunk cache's size (``cache/chunks``), the rest of the
store (layer state, assembled files, containers) and the disk's use are sampled. Then: the server
log's chunk-cache warnings (they name the path), ``rmi`` and ``image prune`` and what they freed,
and one more container after them.

    python bench/diskfull.py --json diskfull.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.soak import _tar, build_image, lazypull, push  # noqa: E402
from devtools.registry import bench_registry  # noqa: E402

MIB = 1 << 20


def image_tar(files: int, seed: int = 7) -> tuple[bytes, dict[str, str]]:
    """soak's busybox tree (no small files) plus ``files`` random 1 MiB files; their sha256 sums."""
    rng = random.Random(seed)
    sums: dict[str, str] = {}
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(_tar(0))) as base, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in base:
            tar.addfile(member, base.extractfile(member) if member.isfile() else None)
        for i in range(files):
            data = rng.randbytes(MIB)
            info = tarfile.TarInfo(f"data/{i:04d}")
            info.size, info.mode, info.mtime = len(data), 0o644, 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
            sums[f"/data/{i:04d}"] = hashlib.sha256(data).hexdigest()
    return out.getvalue(), sums


def du(path: Path) -> int:
    """Bytes allocated under ``path`` (files that vanish meanwhile are skipped)."""
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def used(point: Path) -> int:
    st = os.statvfs(point)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def sample(root: Path, disk: Path) -> dict[str, float]:
    cache = du(root / "cache" / "chunks")
    return {"cache_mib": round(cache / MIB, 1), "rest_mib": round((du(root) - cache) / MIB, 1),
            "disk_used_mib": round(used(disk) / MIB, 1)}


def fill(disk: Path, leave: int) -> int:
    """Write a file taking all but ``leave`` bytes of the disk (another tenant: logs, containerd's
    content); its size."""
    size = max(0, os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - leave)
    with open(disk / "filler", "wb") as out:
        for _ in range(size // MIB):
            out.write(b"\0" * MIB)
    return size


def unmount(point: Path) -> None:
    """Unmount the disk once the stopped server's last process has let go of it."""
    for _ in range(100):
        if subprocess.run(["umount", str(point)], check=False, capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(point)], check=False)


def phase(work: Path, ref: str, sums: dict[str, str], bound: int, disk_mib: int, containers: int,
          per: int, filler_leave: int | None = None) -> dict[str, Any]:
    from lazypull.fs.cache import default_max_bytes

    disk = work / f"disk-{bound}{'-filled' if filler_leave is not None else ''}"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={disk_mib}m,mode=0700", "tmpfs", str(disk)],
                   check=True)
    root = disk / "root"
    root.mkdir()
    if bound:
        (root / "config.toml").write_text(f"cache_max_bytes = {bound}\n")
    effective = bound or default_max_bytes(disk)
    names = sorted(sums)
    failures: list[str] = []
    samples: list[dict[str, Any]] = []
    filled: list[int] = []
    began = time.monotonic()
    try:
        for i in range(containers):
            if filler_leave is not None and i == 1:
                filled.append(fill(disk, filler_leave))
                print(f"  disk filled by another file: {filled[0] / MIB:.1f} MiB, "
                      f"{filler_leave / MIB:.1f} MiB left free", flush=True)
            if filled and i == containers // 2:
                (disk / "filler").unlink()
                print("  the other file removed", flush=True)
            picked = [names[(i * per + k) % len(names)] for k in range(per)]
            res = lazypull(root, "--insecure-registry", "run", "--rm", ref, "sha256sum", *picked)
            got = {f[1]: f[0] for f in map(str.split, res.stdout.splitlines()) if len(f) == 2}
            if res.returncode != 0 or got != {n: sums[n] for n in picked}:
                failures.append(f"#{i}: exit {res.returncode}, {sum(got.get(n) == sums[n] for n in picked)}"
                                f"/{per} right: {res.stderr.strip()[-300:]}")
            s = {"containers": i + 1, **sample(root, disk), "elapsed_s": round(time.monotonic() - began, 1)}
            samples.append(s)
            print(f"  {i + 1:3d} containers: cache {s['cache_mib']:5.1f} MiB (bound {effective / MIB:.1f}), "
                  f"rest of the store {s['rest_mib']:5.1f} MiB, disk {s['disk_used_mib']:5.1f}/{disk_mib} MiB"
                  f"{'  FAILED' if failures and failures[-1].startswith(f'#{i}:') else ''}", flush=True)
        log = (root / "run" / "daemon.log").read_text(errors="replace").splitlines()
        warnings = [line for line in log
                    if " WARNING " in line and ("chunk cache" in line or "No space" in line)]
        before = sample(root, disk)
        rmi = lazypull(root, "rmi", ref)
        after_rmi = sample(root, disk)
        prune = lazypull(root, "image", "prune")
        after_prune = sample(root, disk)
        again = lazypull(root, "--insecure-registry", "run", "--rm", ref, "sha256sum", names[0])
        again_ok = again.returncode == 0 and again.stdout.split()[:1] == [sums[names[0]]]
        print(f"  failures {len(failures)}; {len(warnings)} chunk-cache warning lines"
              + (f", first: {warnings[0][-200:]}" if warnings else ""), flush=True)
        print(f"  before rmi {before}; after rmi (exit {rmi.returncode}) {after_rmi}; after prune "
              f"(exit {prune.returncode}) {after_prune}; a container after them: "
              f"{'ok' if again_ok else 'FAILED ' + again.stderr.strip()[-200:]}", flush=True)
    finally:
        lazypull(root, "daemon", "stop", timeout=120)
        unmount(disk)
    return {"bound_bytes": bound, "filler_bytes": filled[0] if filled else 0,
            "effective_bound_mib": round(effective / MIB, 1), "disk_mib": disk_mib,
            "containers": containers, "files_per_container": per, "failures": failures, "samples": samples,
            "max_cache_mib": max(s["cache_mib"] for s in samples),
            "max_disk_used_mib": max(s["disk_used_mib"] for s in samples),
            "warnings": len(warnings), "warning_examples": warnings[:3],
            "before_rmi": before, "after_rmi": after_rmi, "rmi_exit": rmi.returncode,
            "after_prune": after_prune, "prune_exit": prune.returncode, "container_after_prune_ok": again_ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--disk-mib", type=int, default=64, help="size of the tmpfs holding the store root")
    parser.add_argument("--files", type=int, default=96, help="1 MiB files in the image")
    parser.add_argument("--containers", type=int, default=24)
    parser.add_argument("--per-container", type=int, default=8, help="files each container hashes")
    parser.add_argument("--bounds", default=f"0,{1 << 30}",
                        help="cache_max_bytes of each phase, comma-separated (0: the default)")
    parser.add_argument("--fill-leave-mib", type=float, default=1.0,
                        help="a last phase (default bound) with the disk filled by another file but this "
                             "much, from the 2nd container to half-way (negative: skip)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lazypull-diskfull-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tar, sums = image_tar(args.files)
    results: dict[str, Any] = {"files": args.files, "phases": []}
    with bench_registry(work / "registry", work / "registry-storage") as registry:
        ref = f"{registry.host}/diskfull/busybox:esgz"
        push(build_image(work, 0, tar), ref)
        print(f"image {ref}: busybox + {args.files} x 1 MiB; store root on a {args.disk_mib} MiB tmpfs")
        for bound in (int(b) for b in args.bounds.split(",")):
            print(f"cache_max_bytes = {bound} ({'default' if not bound else f'{bound / MIB:.0f} MiB'}): "
                  f"{args.containers} x run --rm, {args.per_container} files each")
            results["phases"].append(phase(work, ref, sums, bound, args.disk_mib, args.containers,
                                           args.per_container))
        if args.fill_leave_mib >= 0:
            print(f"default bound, disk filled by another file from container 2 to {args.containers // 2}")
            results["phases"].append(phase(work, ref, sums, 0, args.disk_mib, args.containers,
                                           args.per_container, int(args.fill_leave_mib * MIB)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if any(p["failures"] or not p["container_after_prune_ok"] for p in results["phases"]) else 0)


if __name__ == "__main__":
    main()
