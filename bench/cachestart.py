"""How long a mount server's chunk cache takes to open over a big cache directory (reliability).

Synthesizes ``--files`` small chunk files (``--layers`` namespaces, ``--size`` bytes each, valid
``<layer hex>/<chunk hex>`` names) under ``--dir`` once, then opens :class:`DirectoryCache` over it
``--runs`` times in fresh interpreters (so nothing of a previous open is in the process) and prints,
per run, the seconds until the constructor returned (the server can serve) and until the directory's
index was complete (``wait_scanned``, where the cache has it). The page cache is warm after the first
run (the inodes were just written): a cold disk only makes the walk longer.

    python -m bench.cachestart --dir /tmp/cache --files 100000 --runs 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = """
import sys, time
sys.path.insert(0, sys.argv[2])
from lazypull.fs.cache import DirectoryCache
t0 = time.perf_counter()
cache = DirectoryCache(__import__("pathlib").Path(sys.argv[1]), max_bytes=1 << 40)
t1 = time.perf_counter()
wait = getattr(cache, "wait_scanned", None)
if wait is not None:
    wait()
t2 = time.perf_counter()
print(t1 - t0, t2 - t0, cache.stats()["chunks"])
"""


def synthesize(directory: Path, files: int, layers: int, size: int) -> None:
    """``files`` chunk files spread over ``layers`` namespaces (skipped when already there)."""
    marker = directory / ".synthesized"
    if marker.exists() and marker.read_text() == f"{files} {layers} {size}":
        return
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for i in range(files):
        layer = hashlib.sha256(b"layer %d" % (i % layers)).hexdigest()
        data = (b"%d " % i).ljust(size, b".")
        (directory / layer).mkdir(exist_ok=True, mode=0o700)
        (directory / layer / hashlib.sha256(data).hexdigest()).write_bytes(data)
    marker.write_text(f"{files} {layers} {size}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    synthesize(args.dir, args.files, args.layers, args.size)
    repo = Path(__file__).resolve().parents[1]
    ready, indexed = [], []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-I", "-c", _CHILD, str(args.dir), str(repo)],
                             check=True, capture_output=True, text=True).stdout.split()
        ready.append(float(out[0]))
        indexed.append(float(out[1]))
        print(f"constructor returned {float(out[0]):.3f} s, index complete {float(out[1]):.3f} s, "
              f"{out[2]} chunks", flush=True)
    print(json.dumps({"files": args.files, "ready_median_s": round(statistics.median(ready), 3),
                      "indexed_median_s": round(statistics.median(indexed), 3),
                      "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
