"""The yardstick: Debian's containerd 1.6 with its overlayfs snapshotter, on a private socket and root.

:class:`Containerd` starts ``containerd --config`` with everything (root, state, sockets, log)
under one directory; :meth:`Containerd.restart_cold` stops it, removes every container, unmounts
and wipes its root, and starts it again, so each sample pulls and unpacks from nothing, as
stargz-snapshotter's ``reboot_containerd.sh`` does. The phases mirror its hello-bench: ``ctr image
pull`` (fetch + unpack), ``ctr container create``, ``ctr task start`` (to exit or to a ready line).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

_DISABLED_PLUGINS = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
]
NAMESPACE = "lazypull-bench"


class ContainerdError(RuntimeError):
    """containerd did not start, or a ctr command failed (message: command and stderr)."""


class Containerd:
    """A private containerd daemon under ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.base / "containerd.sock"

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def log(self) -> Path:
        return self.base / "containerd.log"

    def ctr(self, *args: str) -> list[str]:
        """argv of a ``ctr`` command against this daemon."""
        return ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args]

    def config_text(self) -> str:
        disabled = ", ".join(json.dumps(p) for p in _DISABLED_PLUGINS)
        return (
            "version = 2\n"
            f'root = "{self.root}"\n'
            f'state = "{self.state}"\n'
            f"disabled_plugins = [{disabled}]\n"
            "[grpc]\n"
            f'  address = "{self.socket}"\n'
            "[ttrpc]\n"
            f'  address = "{self.socket}.ttrpc"\n'
            "[debug]\n"
            f'  address = "{self.base / "debug.sock"}"\n'
            "[metrics]\n"
            '  address = ""\n'
        )

    def start(self, timeout: float = 30.0) -> Containerd:
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.toml"
        config.write_text(self.config_text())
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerdError(f"containerd exited with {self.proc.returncode}: {self._tail()}")
            if self.socket.exists():
                probe = subprocess.run(self.ctr("version"), capture_output=True, timeout=10)
                if probe.returncode == 0:
                    return self
            time.sleep(0.1)
        self.stop()
        raise ContainerdError(f"containerd did not answer on {self.socket} within {timeout}s")

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def remove_containers(self) -> None:
        """Kill and delete every task and container in the benchmark namespace."""
        if self.proc is None or self.proc.poll() is not None:
            return
        out = subprocess.run(self.ctr("containers", "list", "-q"), capture_output=True, text=True)
        for cid in out.stdout.split():
            subprocess.run(self.ctr("tasks", "kill", "-s", "SIGKILL", cid), capture_output=True)
            for _ in range(50):
                gone = subprocess.run(self.ctr("tasks", "delete", cid), capture_output=True)
                if gone.returncode == 0 or b"not found" in gone.stderr:
                    break
                time.sleep(0.1)
            subprocess.run(self.ctr("containers", "delete", cid), capture_output=True)

    def stop(self) -> None:
        """Remove containers, stop the daemon, unmount anything left under its root."""
        self.remove_containers()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        unmount_below(self.base)

    def restart_cold(self) -> None:
        """Stop, wipe root and state (content, snapshots, metadata), start again."""
        self.stop()
        for d in (self.root, self.state):
            shutil.rmtree(d, ignore_errors=True)
        self.start()

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first (from /proc/self/mountinfo)."""
    prefix = str(path.resolve())
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_below(path: Path) -> None:
    """Lazily unmount everything mounted at or below ``path`` (our own leftovers only)."""
    if not path.exists():
        return
    for point in mounts_below(path):
        subprocess.run(["umount", "-l", point], capture_output=True)
