"""The systems compared: lazypull (lazy ``stargz`` or full-pull ``overlayfs`` snapshotter) and containerd.

Each turns one cold sample into commands for the pull / create / run phases (:mod:`bench.sample`)
and knows how to get back to cold: the store root wiped, the mount server stopped, every mount
below the root removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

from bench.sample import Phase
from bench.workloads import Workload
from devtools.containerd import bench_containerd, unmount_below

LAZYPULL = [sys.executable, "-m", "lazypull"]


@cache
def lazypull_commands() -> frozenset[str]:
    """Subcommands the installed lazypull offers (from ``lazypull --help``)."""
    out = subprocess.run([*LAZYPULL, "--help"], capture_output=True, text=True)
    names = set()
    in_commands = False
    for line in out.stdout.splitlines():
        if line.strip().lower().startswith("commands:"):
            in_commands = True
            continue
        if in_commands and line.startswith("  ") and line.strip():
            names.add(line.split()[0])
    return frozenset(names)


def _help(*sub: str) -> str:
    return subprocess.run([*LAZYPULL, *sub, "--help"], capture_output=True, text=True).stdout


class LazypullSystem:
    """``lazypull pull --snapshotter=S`` then ``lazypull run --rm`` (or create + start when offered).

    ``one_command``: ``lazypull run --rm`` alone (it pulls), all of it timed as the run phase;
    ``warm_server`` False: the mount server is not started before the clock (the command starts it);
    ``python``: the interpreter running lazypull, and so which lazypull (another tree's, to compare;
    default ``LAZYPULL``'s, the pinned snapshot's when bench/run.py pinned one)."""

    def __init__(self, root: Path, snapshotter: str, *, config: str = "", name: str | None = None,
                 keep: tuple[str, ...] = (), one_command: bool = False, warm_server: bool = True,
                 python: str | None = None) -> None:
        self.root = root
        self.one_command = one_command
        self.warm_server = warm_server
        # -I: that interpreter's own lazypull, not the PYTHONPATH of a pinned run (bench/run.py); and
        # neither for what it starts: trees from before the mount server was started with -I ran the
        # server from the current directory or PYTHONPATH, i.e. the pinned tree instead of their own
        self.interpreter = (["env", "-u", "PYTHONPATH", "-C", "/", python] if python is not None
                            else LAZYPULL[:1])
        self.lazypull = [*self.interpreter, "-I", "-m", "lazypull"] if python is not None else LAZYPULL
        # what is kept of the root from one sample to the next (globs under it, a directory with its
        # files): e.g. the node's learned store for an image removed and pulled again, everything
        # else wiped as for a first start
        self.keep = keep
        self.snapshotter = snapshotter
        self.config = config          # <root>/config.toml of the mount server ("" = defaults)
        self.name = name or ("lazypull-lazy" if snapshotter == "stargz" else f"lazypull-{snapshotter}")
        commands = lazypull_commands()
        self.has_create = {"create", "start"} <= commands
        self.has_stats = "stats" in commands

    def _base(self, *args: str) -> list[str]:
        return [*self.lazypull, "--root", str(self.root), "--insecure-registry", *args]

    def reset_cold(self) -> None:
        """Wipe the store, caches and mounts, then start a fresh mount server (untimed, as
        stargz-snapshotter's benchmark restarts its snapshotter before each sample)."""
        stop_lazypull(self.root, keep=self.keep)
        os.sync()       # the previous sample's dirty pages (a full pull writes ~400 MB) are not this one's
        self.root.mkdir(parents=True, exist_ok=True)
        if self.config:
            (self.root / "config.toml").write_text(self.config)
        if self.snapshotter == "stargz" and self.warm_server:   # by this system's own lazypull
            # warm: answered once its warm-up is done, as a server started long before the pull (a
            # server warms up after its first request or 1 s); a tree whose server warmed up before it
            # listened has no such ping (TypeError) and any ping finds it warm
            ping = ("import sys\nfrom lazypull.snapshot import MountClient\nc = MountClient(sys.argv[1])\n"
                    "try:\n    c.ping(warm=True)\nexcept TypeError:\n    c.ping()")
            subprocess.run([*self.interpreter, "-I", "-c", ping, str(self.root)], check=True)

    def pull(self, ref: str) -> Phase | None:
        if self.one_command:
            return None
        return Phase(self._base("pull", f"--snapshotter={self.snapshotter}", ref))

    def create(self, ref: str, cid: str, workload: Workload) -> Phase | None:
        if not self.has_create or self.one_command:
            return None
        return Phase(self._base("create", f"--snapshotter={self.snapshotter}", "--name", cid, ref,
                                *workload.command))

    def run(self, ref: str, cid: str, workload: Workload) -> Phase:
        if self.has_create and not self.one_command:
            return Phase(self._base("start", "--attach", cid), until=workload.ready)
        return Phase(self._base("run", "--rm", f"--snapshotter={self.snapshotter}", "--name", cid, ref,
                                *workload.command), until=workload.ready)

    def cleanup(self, cid: str) -> None:
        if "rm" in lazypull_commands():
            subprocess.run(self._base("rm", "-f", cid), capture_output=True, timeout=60)

    def stats(self) -> dict[str, Any] | None:
        if not self.has_stats:
            return None
        proc = subprocess.run(self._base("stats", "--json"), capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip()[-500:]}
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            return {"error": f"not JSON: {proc.stdout[:200]!r}"}
        return data if isinstance(data, dict) else {"value": data}

    def quiesce(self) -> None:
        """Stop everything this system left running (the mount server's background fetch would
        otherwise compete with the next sample)."""
        stop_lazypull(self.root, keep=self.keep)

    def close(self) -> None:
        stop_lazypull(self.root)


def stop_lazypull(root: Path, keep: tuple[str, ...] = ()) -> None:
    """Stop the mount server of ``root`` (its pid file names it), unmount everything below ``root``
    and remove the directory, but for what the globs ``keep`` name under it (a directory: its files)."""
    if not root.exists():
        return
    with contextlib.suppress(Exception):
        from lazypull.snapshot import MountClient

        with MountClient(root, autostart=False, timeout=30) as mc:
            mc.shutdown(unmount=True)
    pidfile = root / "run" / "daemon.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):     # (emptied by a server that stopped)
        pid = int(pidfile.read_text().split()[0])
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if not _alive(pid):
                break
    _kill_runc_containers(root)
    unmount_below(root)
    saved = {}
    for pattern in keep:
        for path in root.glob(pattern):
            for file in (p for p in path.rglob("*") if p.is_file()) if path.is_dir() else (path,):
                saved[file.relative_to(root)] = file.read_bytes()
    shutil.rmtree(root, ignore_errors=True)
    for rel, data in saved.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        (root / rel).write_bytes(data)
        (root / rel).chmod(0o600)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


def _kill_runc_containers(root: Path) -> None:
    """Containers lazypull's runc state dirs under ``root`` still list (our own leftovers)."""
    for state_dir in root.glob("**/runc-state"):
        _runc_cleanup(state_dir)
    for state_dir in (root / "runc", root / "run" / "runc"):
        if state_dir.is_dir():
            _runc_cleanup(state_dir)


def _runc_cleanup(state_dir: Path) -> None:
    out = subprocess.run(["runc", "--root", str(state_dir), "list", "-q"], capture_output=True, text=True)
    for cid in out.stdout.split():
        subprocess.run(["runc", "--root", str(state_dir), "delete", "-f", cid], capture_output=True)


class ContainerdSystem:
    """containerd 1.6 with overlayfs: ``ctr image pull``, ``ctr container create``, ``ctr task start``."""

    name = "containerd"

    def __init__(self, base: Path) -> None:
        self.daemon = bench_containerd(base)

    def reset_cold(self) -> None:
        self.daemon.restart_cold()
        os.sync()       # as for lazypull: no writeback left from an earlier sample

    def pull(self, ref: str) -> Phase:
        return Phase(self.daemon.ctr("image", "pull", "--plain-http", "--snapshotter", "overlayfs", ref))

    def create(self, ref: str, cid: str, workload: Workload) -> Phase | None:
        # "--": the workload's own flags (python3 -c) must not be read as ctr's (-c is --config).
        return Phase(self.daemon.ctr("container", "create", "--snapshotter", "overlayfs", ref, cid, "--",
                                     *workload.command))

    def run(self, ref: str, cid: str, workload: Workload) -> Phase:
        return Phase(self.daemon.ctr("task", "start", cid), until=workload.ready)

    def cleanup(self, cid: str) -> None:
        self.daemon.remove_containers()

    def stats(self) -> dict[str, Any] | None:
        return None

    def quiesce(self) -> None:
        """Stop the daemon (its pulls and containers) until the next sample restarts it."""
        self.daemon.halt()

    def close(self) -> None:
        self.daemon.stop()      # also removes its directory
