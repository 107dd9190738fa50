"""Network faults under a real mount (issue 10 items 2, 3, 11): every file of a lazy layer read through
the mount server's FUSE mount while a :class:`~devtools.httpservers.FaultProxy` in front of the
registry spoils a share of the blob requests.

1. Fault rates: for each kind (``corrupt``: a corrupt body of the right length; ``reset``: the
   connection closed without an answer; ``truncate``: the headers and 100 body bytes, then the
   connection closed; ``5xx``: a 503) and each ``--rates`` (default 1/5/20%), a fresh store root and
   server pull the image lazily, then every file of ``/data`` is read once and checked: reads, wrong
   bytes, EIO, blob requests, faults injected, wall time.
2. Registry down: every blob request dropped; ``--down-reads`` reads of files not yet fetched, each
   one's time to fail, and the requests sent meanwhile (the circuit breaker fails most at once).
3. Recovery: ``--cycles`` times down for 3 s (a read every 0.2 s), then up; a reader tries a new file
   every 50 ms: time from the registry's return to the first served read.
4. Trickle: the first blob request sends 10 bytes then 1 byte/s; three readers of one file at once.

Prefetch, background fetch, whole-file and neighbour fetches are off (``config.toml``), so each file's
first read is one request of its own; the server's network limits are its defaults.

    python bench/faults.py --json faults.json
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.soak import _tar, build_image, lazypull, push  # noqa: E402
from devtools.httpservers import Fault, FaultProxy  # noqa: E402
from devtools.registry import bench_registry  # noqa: E402

CONFIG = """prefetch = false
background_fetch = false
whole_file_max = 0
neighbour_window = 0
readahead = 0
fetch_user_db = false
fetch_elf_deps = false
learn_window = 0
warm_connections = 0
"""

BLOBS = "/blobs/"


@dataclass
class RandomFault(Fault):
    """A :class:`Fault` injected into each matching request with probability ``rate``."""

    rate: float = 1.0
    rng: random.Random | None = None

    def matches(self, method: str, path: str, range_header: str = "") -> bool:
        return super().matches(method, path, range_header) and (self.rng or random).random() < self.rate


def make_fault(kind: str, rate: float, seed: int) -> Fault:
    rng = random.Random(seed)
    common: dict[str, Any] = {"method": "GET", "path_contains": BLOBS, "times": -1, "rate": rate, "rng": rng}
    if kind == "corrupt":
        return RandomFault("corrupt", **common)
    if kind == "reset":
        return RandomFault("drop", **common)
    if kind == "truncate":
        return RandomFault("truncate", after_bytes=100, **common)
    if kind == "5xx":
        return RandomFault("status", status=503, **common)
    raise ValueError(kind)


KINDS = ("corrupt", "reset", "truncate", "5xx")


class Layer:
    """A fresh store root whose server has pulled the image lazily through the proxy."""

    def __init__(self, work: Path, name: str, ref: str) -> None:
        from lazypull.snapshot import MountClient

        self.root = work / name
        self.root.mkdir(parents=True)
        (self.root / "config.toml").write_text(CONFIG)
        with MountClient(self.root) as mc:
            pulled = mc.pull_image(ref, insecure=True)
        lazy = [layer.path for layer in pulled.layers if layer.lazy and layer.path]
        if len(lazy) != 1:
            raise SystemExit(f"expected one lazy layer, got {pulled.layers}")
        self.top = lazy[0]

    def read(self, name: str) -> bytes:
        fd = os.open(self.top / name, os.O_RDONLY)
        try:
            data = b""
            while chunk := os.read(fd, 1 << 20):
                data += chunk
            return data
        finally:
            os.close(fd)

    def stop(self) -> None:
        lazypull(self.root, "daemon", "stop", timeout=120)


def blob_requests(proxy: FaultProxy, since: int) -> list[Any]:
    return [r for r in proxy.requests[since:] if r.method == "GET" and BLOBS in r.path]


def fault_rates(work: Path, ref: str, proxy: FaultProxy, sums: dict[str, str], kinds: list[str],
                rates: list[float]) -> list[dict[str, Any]]:
    rows = []
    for kind in kinds:
        for rate in rates:
            layer = Layer(work, f"root-{kind}-{rate:g}", ref)
            fault = proxy.add(make_fault(kind, rate, seed=KINDS.index(kind) * 1000 + int(rate * 1000)))
            mark = len(proxy.requests)
            eio = wrong = other = 0
            began = time.monotonic()
            try:
                for name in sorted(sums):
                    try:
                        if hashlib.sha256(layer.read(name)).hexdigest() != sums[name]:
                            wrong += 1
                    except OSError as err:
                        if err.errno == errno.EIO:
                            eio += 1
                        else:
                            other += 1
                elapsed = time.monotonic() - began
            finally:
                proxy.remove(fault)
                layer.stop()
            reqs = blob_requests(proxy, mark)
            row = {"kind": kind, "rate": rate, "reads": len(sums), "requests": len(reqs),
                   "faults": sum(1 for r in reqs if r.fault), "eio": eio, "wrong": wrong,
                   "other_errors": other, "wall_s": round(elapsed, 1)}
            rows.append(row)
            print(f"  {kind:8s} {rate:4.0%}: {row['reads']} reads, {row['requests']} requests, "
                  f"{row['faults']} faults, {eio} EIO, {wrong} wrong, {other} other errors, "
                  f"{row['wall_s']} s", flush=True)
    return rows


def down_and_up(work: Path, ref: str, proxy: FaultProxy, sums: dict[str, str], down_reads: int,
                cycles: int) -> dict[str, Any]:
    layer = Layer(work, "root-down", ref)
    names = iter(sorted(sums))
    try:
        fault = proxy.add(Fault("drop", method="GET", path_contains=BLOBS, times=-1))
        mark = len(proxy.requests)
        fails: list[float] = []
        served = 0
        for _ in range(down_reads):
            t0 = time.monotonic()
            try:
                layer.read(next(names))
                served += 1
            except OSError:
                pass
            fails.append(round(time.monotonic() - t0, 2))
        down_requests = len(blob_requests(proxy, mark))
        print(f"  registry down: {down_reads} reads, {served} served; time to fail each {fails}; "
              f"{down_requests} requests sent", flush=True)
        recovery: list[float] = []
        for cycle in range(cycles):
            if cycle:
                fault = proxy.add(Fault("drop", method="GET", path_contains=BLOBS, times=-1))
                end = time.monotonic() + 3.0
                while time.monotonic() < end:
                    with contextlib.suppress(OSError):
                        layer.read(next(names))
                    time.sleep(0.2)
            proxy.remove(fault)
            back = time.monotonic()
            while True:
                try:
                    layer.read(next(names))
                    break
                except OSError:
                    time.sleep(0.05)
            recovery.append(round(time.monotonic() - back, 3))
        print(f"  recovery: first read served {recovery} s after the registry was back", flush=True)
    finally:
        layer.stop()
    return {"down_reads": down_reads, "down_served": served, "down_fail_s": fails,
            "down_requests": down_requests, "recovery_s": recovery}


def trickle(work: Path, ref: str, proxy: FaultProxy, sums: dict[str, str], files: dict[str, int]
            ) -> dict[str, Any]:
    layer = Layer(work, "root-trickle", ref)
    name = max(files, key=lambda n: files[n])
    results: list[str] = []
    mark = len(proxy.requests)
    proxy.add(Fault("trickle", method="GET", path_contains=BLOBS, after_bytes=10, interval=1.0))

    def read() -> None:
        t0 = time.monotonic()
        try:
            ok = hashlib.sha256(layer.read(name)).hexdigest() == sums[name]
            results.append(f"{'ok' if ok else 'WRONG'} {time.monotonic() - t0:.1f} s")
        except OSError as err:
            results.append(f"{errno.errorcode.get(err.errno or 0, err)} {time.monotonic() - t0:.1f} s")

    try:
        threads = [threading.Thread(target=read) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        layer.stop()
    faults = [r.fault for r in blob_requests(proxy, mark)]
    print(f"  trickle (1 byte/s after 10 bytes), 3 readers of {name}: {results}; blob requests {faults}",
          flush=True)
    return {"file": name, "readers": results, "requests": faults}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=300, help="files in the image's layer (1-16 KiB)")
    parser.add_argument("--rates", default="0.01,0.05,0.2", help="fault rates, comma-separated")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"of {', '.join(KINDS)}")
    parser.add_argument("--down-reads", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=5, help="down/up cycles for the recovery time")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lazypull-faults-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sums: dict[str, str] = {}
    sizes: dict[str, int] = {}
    with tarfile.open(fileobj=io.BytesIO(_tar(args.files))) as tar:
        for member in tar:
            if member.isfile() and member.name.startswith("data/"):
                data = tar.extractfile(member)
                assert data is not None
                body = data.read()
                sums[member.name], sizes[member.name] = hashlib.sha256(body).hexdigest(), len(body)
    result: dict[str, Any] = {"files": args.files}
    with bench_registry(work / "registry", work / "registry-storage") as registry:
        push(build_image(work, args.files), f"{registry.host}/faults/busybox:esgz")
        proxy = FaultProxy(registry).start()
        ref = f"{proxy.host}/faults/busybox:esgz"
        try:
            print(f"fault rates: every file of /data ({args.files}) read once per run")
            result["rates"] = fault_rates(work, ref, proxy, sums, args.kinds.split(","),
                                          [float(r) for r in args.rates.split(",")])
            print("registry down, then up")
            result["down"] = down_and_up(work, ref, proxy, sums, args.down_reads, args.cycles)
            print("trickle")
            result["trickle"] = trickle(work, ref, proxy, sums, sizes)
        finally:
            proxy.stop()
    rec = result["down"]["recovery_s"]
    if rec:
        result["down"]["recovery_median_s"] = statistics.median(rec)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    bad = sum(r["eio"] + r["wrong"] + r["other_errors"] for r in result["rates"])
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
