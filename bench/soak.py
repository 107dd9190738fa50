"""Soak test of the mount server as a node daemon (issue 10): many containers, sequential and at once.

1. Sequential: ``--containers`` runs of ``lazypull run --rm`` of an eStargz image (static busybox and
   ``--files`` small files), each hashing 30 of the files, against Debian's docker-registry on loopback.
   The server's RSS (``/proc/<pid>/status`` VmRSS) and its count of released layer trees not yet freed
   are sampled every ``--sample-every`` containers; the curve is printed with the slope of its second
   half (MB per 100 containers: ~0 when nothing leaks; it was ~1340 before the fix).
2. Concurrent: ``--concurrent`` runs of ``run --rm`` at once; counts successes and what is left behind
   (containers, runc state, holds, mounts).

    python bench/soak.py --containers 1000 --concurrent 64 --json soak.json

Nothing is shaped or cached between runs; a fresh store root under ``--workdir`` each time.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.images import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST  # noqa: E402
from devtools.registry import bench_registry  # noqa: E402

HASHED = 30     # files each container hashes


def _tar(files: int, seed: int = 1) -> bytes:
    """busybox (static, from the host) with its shell applets, and ``files`` files of 1-16 KiB."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes | None = None, *, mode: int = 0o644, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if data is None and not link:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif link:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = len(data or b""), mode
                tar.addfile(info, io.BytesIO(data or b""))

        for d in ("bin", "data", "etc", "tmp"):
            add(d)
        add("bin/busybox", Path("/bin/busybox").read_bytes(), mode=0o755)
        for applet in ("sh", "sha256sum", "cat", "echo", "true", "sleep"):
            add(f"bin/{applet}", link="busybox")
        add("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        for i in range(files):
            add(f"data/{i:05d}", rng.randbytes(rng.randint(1, 16) << 10))
    return buf.getvalue()


def build_image(work: Path, files: int, tar: bytes | None = None) -> Path:
    """An OCI layout holding one eStargz layer (lazypull's writer, TOC annotations kept) of ``tar``,
    default :func:`_tar` of ``files`` files."""
    from lazypull.format import BuildOptions, build

    layout = work / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    out = io.BytesIO()
    result = build(io.BytesIO(_tar(files) if tar is None else tar), out, BuildOptions())
    layer = {"mediaType": OCI_LAYER_GZIP, **put(out.getvalue()), "annotations": dict(result.annotations)}
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": [result.diff_id]}}
    cfg = put(json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_CONFIG, **cfg},
                "layers": [layer]}
    man = put(json.dumps(manifest).encode())
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, **man, "annotations": {"org.opencontainers.image.ref.name": "soak"}}]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return layout


def push(layout: Path, ref: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests",
                    f"oci:{layout}:soak", f"docker://{ref}"], check=True, capture_output=True)


def lazypull(root: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lazypull", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=timeout, cwd="/")


def server_pid(root: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((root / "run" / "daemon.pid").read_text().strip() or 0) or None
    return None


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def released_alive(root: Path) -> int:
    from lazypull.snapshot import MountClient

    with MountClient(root, autostart=False) as mc:
        return int(mc.stats().get("released_trees", {}).get("alive", -1))


def container_command(i: int, files: int) -> list[str]:
    names = [f"/data/{(i * HASHED + k) % files:05d}" for k in range(HASHED)]
    return ["sha256sum", *names]


def sequential(root: Path, ref: str, count: int, files: int, every: int) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    failures: list[str] = []
    began = time.monotonic()
    for i in range(count):
        result = lazypull(root, "--insecure-registry", "run", "--rm", ref, *container_command(i, files))
        if result.returncode != 0 or len(result.stdout.splitlines()) != HASHED:
            failures.append(f"#{i}: exit {result.returncode}: {result.stderr.strip()[-300:]}")
        if (i + 1) % every == 0 or i == 0 or i + 1 == count:
            pid = server_pid(root)
            if pid is None:
                failures.append(f"#{i}: no mount server")
                continue
            time.sleep(1.0)        # the collector runs once the releases settle
            sample = {"containers": i + 1, "rss_mb": round(rss_mb(pid), 1), "pid": pid,
                      "released_alive": released_alive(root), "elapsed_s": round(time.monotonic() - began, 1)}
            samples.append(sample)
            print(f"  {sample['containers']:5d} containers  RSS {sample['rss_mb']:7.1f} MB  "
                  f"released trees alive {sample['released_alive']:3d}  ({sample['elapsed_s']:.0f} s)",
                  flush=True)
    half = [s for s in samples if s["containers"] >= count // 2]
    slope = 0.0
    if len(half) >= 2 and half[-1]["containers"] > half[0]["containers"]:
        growth = half[-1]["rss_mb"] - half[0]["rss_mb"]
        slope = growth / (half[-1]["containers"] - half[0]["containers"]) * 100
    return {"containers": count, "failures": failures, "samples": samples,
            "rss_slope_mb_per_100_second_half": round(slope, 2),
            "rss_first_mb": samples[0]["rss_mb"] if samples else None,
            "rss_last_mb": samples[-1]["rss_mb"] if samples else None}


def concurrent(root: Path, ref: str, count: int, files: int) -> dict[str, Any]:
    from lazypull.snapshot import MountClient

    def one(i: int) -> subprocess.CompletedProcess[str]:
        return lazypull(root, "--insecure-registry", "run", "--rm", ref, *container_command(i, files))

    began = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(one, range(count)))
    elapsed = time.monotonic() - began
    ok = sum(1 for r in results if r.returncode == 0 and len(r.stdout.splitlines()) == HASHED)
    errors = sorted({r.stderr.strip().splitlines()[-1] for r in results if r.returncode and r.stderr.strip()})
    containers = [p.name for p in (root / "containers").iterdir() if not p.name.startswith(".")] \
        if (root / "containers").exists() else []
    runc = subprocess.run(["runc", "--root", str(root / "runc"), "list", "-q"], capture_output=True,
                          text=True).stdout.split()
    with MountClient(root, autostart=False) as mc:
        holds = sorted({h for m in mc.list_mounts() for h in m.holders})
    rootfs = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if f"{root}/containers/" in line]
    print(f"  {ok}/{count} succeeded in {elapsed:.1f} s; left behind: {len(containers)} containers, "
          f"{len(runc)} runc states, {len(holds)} holds, {len(rootfs)} rootfs mounts", flush=True)
    for error in errors[:5]:
        print(f"    error: {error}")
    return {"concurrent": count, "succeeded": ok, "elapsed_s": round(elapsed, 1), "errors": errors,
            "left_containers": len(containers), "left_runc": len(runc), "left_holds": len(holds),
            "left_rootfs_mounts": len(rootfs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=1000, help="sequential run --rm (0: skip)")
    parser.add_argument("--concurrent", type=int, default=64, help="run --rm at once (0: skip)")
    parser.add_argument("--files", type=int, default=3000, help="files in the image's layer")
    parser.add_argument("--sample-every", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lazypull-soak-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    root = work / "root"
    results: dict[str, Any] = {"files": args.files}
    with bench_registry(work / "registry", work / "registry-storage") as registry:
        ref = f"{registry.host}/soak/busybox:esgz"
        push(build_image(work, args.files), ref)
        print(f"image {ref}: one eStargz layer, busybox + {args.files} files; store root {root}")
        try:
            if args.containers:
                print(f"sequential: {args.containers} x run --rm (each hashes {HASHED} files)")
                results["sequential"] = sequential(root, ref, args.containers, args.files, args.sample_every)
                seq = results["sequential"]
                print(f"  RSS slope over the second half: {seq['rss_slope_mb_per_100_second_half']} MB per "
                      f"100 containers; failures: {len(seq['failures'])}")
            if args.concurrent:
                print(f"concurrent: {args.concurrent} x run --rm at once")
                results["concurrent"] = concurrent(root, ref, args.concurrent, args.files)
        finally:
            lazypull(root, "daemon", "stop", timeout=60)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    failed = (results.get("sequential", {}).get("failures") or
              results.get("concurrent", {}).get("succeeded", args.concurrent) != args.concurrent)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
