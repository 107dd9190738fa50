"""What the FUSE request journal costs per request: reads/s of 4 KiB through two mounts of the same
in-memory tree (a warm layer: no network, no disk), one serving with the journal and one without,
in rounds alternating their order. Every read reaches the server (the reader drops the page cache of
each file after reading it). Prints each round with the load average, then the medians and the median
of the per-round ratio (each round runs both, back to back).

    python bench/journalcost.py --rounds 10 --seconds 3
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lazypull.fs.fuse import ROOT_INODE, Attr, FuseError, FuseMount, StatFs  # noqa: E402

FILES = 64
SIZE = 4096

READER = r"""
import os, sys, time
top, seconds, files = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
fds = [os.open(os.path.join(top, "f%02d" % i), os.O_RDONLY) for i in range(files)]
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for fd in fds:
        os.pread(fd, 4096, 0)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        n += 1
print(n / seconds)
"""


class FlatTree:
    """A directory of FILES files of SIZE bytes each, in memory (``lazypull.fs.fuse.Tree``)."""

    def __init__(self) -> None:
        self.root = Attr(ROOT_INODE, stat.S_IFDIR | 0o755, nlink=2)
        self.files = {f"f{i:02d}".encode(): Attr(ROOT_INODE + 1 + i, stat.S_IFREG | 0o444, size=SIZE)
                      for i in range(FILES)}
        self.by_ino = {a.ino: a for a in self.files.values()} | {ROOT_INODE: self.root}

    def lookup(self, parent: int, name: bytes) -> Attr | None:
        return self.files.get(name) if parent == ROOT_INODE else None

    def getattr(self, ino: int) -> Attr:
        try:
            return self.by_ino[ino]
        except KeyError:
            raise FuseError(errno.ENOENT) from None

    def readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        return list(self.files.items()) if ino == ROOT_INODE else []

    def readlink(self, ino: int) -> bytes:
        raise FuseError(errno.EINVAL)

    def getxattr(self, ino: int, name: bytes) -> bytes | None:
        return None

    def listxattr(self, ino: int) -> list[bytes]:
        return []

    def read(self, ino: int, offset: int, size: int) -> bytes:
        return bytes([ino & 0xFF]) * max(0, min(size, SIZE - offset))

    def backing_path(self, ino: int) -> str | None:
        return None

    def statfs(self) -> StatFs:
        return StatFs(files=FILES + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lazypull-journalcost-"))
    tree = FlatTree()
    mounts: dict[str, FuseMount] = {}
    results: dict[str, list[float]] = {"journal": [], "none": []}
    try:
        for name in results:
            (work / name).mkdir()
            mounts[name] = FuseMount(tree, work / name, passthrough=False, journal=name == "journal").start()
        for rnd in range(args.rounds):
            for name in (("journal", "none") if rnd % 2 == 0 else ("none", "journal")):
                out = subprocess.run([sys.executable, "-I", "-c", READER, str(work / name), str(args.seconds),
                                      str(FILES)], capture_output=True, text=True, check=True).stdout
                results[name].append(float(out))
                load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
                print(f"round {rnd + 1:2d} {name:8s} {float(out):9.0f} reads/s  load {load}", flush=True)
    finally:
        for mount in mounts.values():
            mount.stop()
        for name in results:
            os.rmdir(work / name)
        os.rmdir(work)
    for name, values in results.items():
        print(f"{name:8s} median {statistics.median(values):9.0f} reads/s (min {min(values):.0f}, "
              f"max {max(values):.0f}, {len(values)} rounds)")
    ratios = sorted(j / n for j, n in zip(results["journal"], results["none"], strict=True))
    print(f"journal/none per round: median {statistics.median(ratios):.3f} (range {ratios[0]:.3f}-"
          f"{ratios[-1]:.3f}): the noise of a shared machine is in the range")


if __name__ == "__main__":
    main()
