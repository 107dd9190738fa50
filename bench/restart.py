"""Kill -9 the mount server again and again while a container and a host process read lazily (issue 10
item 9): the reads go on with the right bytes once the next server serves the kept connections.

A container (``lazypull run -d``, overlayfs over the lazy layer) hashes every file of ``/data`` in
passes and prints one digest per pass; a host process reads the layer mount directly, one file at a
time with its page cache dropped after each read, checking every byte and noting the longest gap
between two reads. ``--kills`` times: SIGKILL the server, start the next one (a client request starts
it), wait until it serves the layers again, drop the page cache (so the container reads through the
new server), wait for both readers to make progress. Reports per kill the time until the new server
had restored the mounts and the readers' stall; at the end, wrong or failed reads, the keeper's fds.

``--no-resend``: the servers do not ask the kernel to resend what a killed one had read and not
answered (FUSE_NOTIFY_RESEND, Linux 6.9+) but answer it from the request journal, the path of older
kernels (``LAZYPULL_FUSE_RESEND=0``); the results then count the requests taken up that way.

    python bench/restart.py --kills 50 --json restart.json
    python bench/restart.py --kills 50 --no-resend --json restart-noresend.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.soak import _tar, build_image, lazypull, push, server_pid  # noqa: E402
from devtools.registry import bench_registry  # noqa: E402

# Reads data/ file by file from the layer mount (page cache dropped after each read), checks the bytes
# against the sums given, and keeps its counters and the gaps between reads in a status file.
HOST_READER = """
import json, os, sys, time, hashlib
top, sums_file, status, stop = sys.argv[1:5]
sums = json.load(open(sums_file))
names = sorted(sums)
done, bad, last, gaps = 0, [], time.monotonic(), []
while not os.path.exists(stop):
    name = names[done % len(names)]
    try:
        fd = os.open(os.path.join(top, name), os.O_RDONLY)
        try:
            data = b""
            while chunk := os.read(fd, 1 << 20):
                data += chunk
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        if hashlib.sha256(data).hexdigest() != sums[name]:
            bad.append(name + ": wrong content")
        now = time.monotonic()
        gaps.append([round(time.time(), 3), round(now - last, 4)])
        gaps = sorted(gaps, key=lambda g: -g[1])[:200]
        last = now
    except OSError as err:
        bad.append("%s: %s" % (name, err))
        time.sleep(0.05)
    done += 1
    if done % 20 == 0 or bad:
        with open(status + ".tmp", "w") as f:
            json.dump({"done": done, "bad": bad[:50], "nbad": len(bad), "gaps": gaps}, f)
        os.replace(status + ".tmp", status)
"""

CONTAINER_LOOP = "n=0; while :; do n=$((n+1)); echo pass $n $(sha256sum /data/* | sha256sum); sleep 0.2; done"


def _status(path: Path) -> dict[str, Any]:
    with contextlib.suppress(FileNotFoundError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {"done": 0, "bad": [], "nbad": 0, "gaps": []}


def _passes(root: Path, name: str) -> list[str]:
    out = lazypull(root, "logs", name, timeout=60).stdout
    return [line for line in out.splitlines() if line.startswith("pass ")]


def _wait(predicate: Any, seconds: float = 120.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _gone(pid: int) -> bool:
    """Whether process ``pid`` exited (a zombie counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _fuse_fds(pid: int) -> int:
    return sum(1 for fd in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(fd) == "/dev/fuse")


def _journal_counts(root: Path) -> tuple[int, int]:
    """From the servers' log: (requests answered from the journal, requests answered EIO there)."""
    from lazypull.snapshot.paths import RunPaths

    taken = failed = 0
    with contextlib.suppress(FileNotFoundError):
        for line in RunPaths(root).logfile.read_text(errors="replace").splitlines():
            if "requests the previous server had read and not answered" in line:
                taken += int(line.split(": answering ")[1].split()[0])
            elif "answered EIO: read by a server" in line or "unreadable in the journal" in line:
                failed += 1
    return taken, failed


def run(work: Path, kills: int, files: int, resend: bool = True) -> dict[str, Any]:
    import io
    import tarfile

    from lazypull.snapshot import MountClient
    from lazypull.snapshot.keeper import keeper_pid
    from lazypull.snapshot.paths import RunPaths

    root = work / "root"
    sums: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(_tar(files))) as tar:
        for member in tar:
            if member.isfile() and member.name.startswith("data/"):
                data = tar.extractfile(member)
                assert data is not None
                sums[member.name] = hashlib.sha256(data.read()).hexdigest()
    listing = "".join(f"{sums[n]}  /{n}\n" for n in sorted(sums))
    want_pass = hashlib.sha256(listing.encode()).hexdigest()
    (work / "sums.json").write_text(json.dumps(sums))
    result: dict[str, Any] = {"kills": kills, "files": files, "resend": resend, "per_kill": []}
    with bench_registry(work / "registry", work / "registry-storage") as registry:
        ref = f"{registry.host}/restart/busybox:esgz"
        push(build_image(work, files), ref)
        started = lazypull(root, "--insecure-registry", "run", "-d", "--name", "reader", ref,
                           "sh", "-c", CONTAINER_LOOP)
        if started.returncode != 0:
            raise SystemExit(f"run -d failed: {started.stderr}")
        status, stop = work / "status.json", work / "stop"
        with MountClient(root) as mc:
            top = next(m.path for m in mc.list_mounts())
        host = subprocess.Popen([sys.executable, "-I", "-c", HOST_READER, str(top), str(work / "sums.json"),
                                 str(status), str(stop)])
        try:
            _wait(lambda: len(_passes(root, "reader")) >= 1 and _status(status)["done"] > 100)
            for k in range(kills):
                pid = server_pid(root)
                assert pid is not None
                host_before, passes_before = _status(status)["done"], len(_passes(root, "reader"))
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                _wait(lambda p=pid: _gone(p))
                with MountClient(root) as mc:
                    mounts = len(mc.list_mounts())         # the next server, once it restored
                restored = time.monotonic() - killed
                Path("/proc/sys/vm/drop_caches").write_text("1")   # the container reads via the new server
                host_ok = _wait(lambda b=host_before: _status(status)["done"] > b + 40)
                host_after = time.monotonic() - killed
                cont_ok = _wait(lambda b=passes_before: len(_passes(root, "reader")) >= b + 2)
                keeper = keeper_pid(RunPaths(root))
                taken, _ = _journal_counts(root)
                row = {"kill": k + 1, "restored_s": round(restored, 3),
                       "host_reads_on_s": round(host_after, 3), "host_went_on": host_ok,
                       "container_went_on": cont_ok, "mounts": mounts,
                       "keeper_fuse_fds": _fuse_fds(keeper) if keeper else 0, "journal_taken_so_far": taken}
                result["per_kill"].append(row)
                print(f"  kill {k + 1:3d}: restored after {restored:.2f} s, host reads on after "
                      f"{host_after:.2f} s, container {'on' if cont_ok else 'STUCK'}, "
                      f"keeper fds {row['keeper_fuse_fds']}, from the journal so far {taken}", flush=True)
        finally:
            stop.touch()
            host.wait(timeout=120)
            passes = _passes(root, "reader")
            lazypull(root, "rm", "-f", "reader", timeout=120)
            lazypull(root, "daemon", "stop", timeout=60)
    final = _status(status)
    wrong = [p for p in passes if p.split()[2] != want_pass]
    times = [float(r["restored_s"]) for r in result["per_kill"]]
    taken, failed = _journal_counts(root)
    result.update(journal_taken=taken, journal_eio=failed,
                  container_passes=len(passes), container_wrong_passes=wrong[:5],
                  container_nwrong=len(wrong), host_reads=final["done"], host_bad=final["bad"][:10],
                  host_nbad=final["nbad"], host_longest_gaps_s=[g[1] for g in final["gaps"][:10]],
                  restored_median_s=statistics.median(times) if times else None,
                  restored_max_s=max(times) if times else None)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--files", type=int, default=1000, help="files in the image's layer")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--no-resend", action="store_true",
                        help="answer a killed server's unanswered requests from the journal (kernels < 6.9)")
    args = parser.parse_args()
    if args.no_resend:      # inherited by every server this run starts (through the CLI or MountClient)
        os.environ["LAZYPULL_FUSE_RESEND"] = "0"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lazypull-restart-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result = run(work, args.kills, args.files, resend=not args.no_resend)
    print(f"container: {result['container_passes']} passes, {result['container_nwrong']} wrong; host: "
          f"{result['host_reads']} reads, {result['host_nbad']} wrong or failed; restore median "
          f"{result['restored_median_s']} s, max {result['restored_max_s']} s; longest host gaps "
          f"{result['host_longest_gaps_s'][:5]}; requests answered from the journal "
          f"{result['journal_taken']}, answered EIO there {result['journal_eio']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    stuck = any(not (r["host_went_on"] and r["container_went_on"]) for r in result["per_kill"])
    sys.exit(1 if result["container_nwrong"] or result["host_nbad"] or stuck else 0)


if __name__ == "__main__":
    main()
