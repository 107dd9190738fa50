"""``lazypull run`` is one client process (issue 14 item 3): the lazy pull (sent to the mount server),
create, start and the wait for the container run in the interpreter the user started; its only
children are runc and the container. ``run -d`` leaves one supervisor, which outlives the command.
Checked on the processes themselves (``/proc``) while the container waits on a file the test creates.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lazypull.snapshot import MountClient
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import busybox_specs, push_lazy_image
from tests.runtime.test_cli_run import REPO_ROOT, lazypull, mounts_under

WAIT = "echo ready; while [ ! -e /gate/go ]; do sleep 0.05; done; echo done"


def _is_lazypull(argv: list[str]) -> bool:
    """``python ... -m lazypull[.module] ...`` or a ``lazypull`` console script."""
    if argv and argv[0].endswith("/lazypull"):
        return True
    return any(arg == "-m" and i + 1 < len(argv) and argv[i + 1].split(".")[0] == "lazypull"
               for i, arg in enumerate(argv))


def _argv(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]
    except OSError:
        return None


def lazypull_processes(below: int | None = None) -> list[list[str]]:
    """The argv of every lazypull interpreter running; with ``below``, of those descending from it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == below:
                return True
        return False

    found = []
    for pid in parents:
        argv = _argv(pid)
        if argv and _is_lazypull(argv) and (below is None or descends(pid)):
            found.append(argv)
    return found


@pytest.fixture
def lazy_image(registry: RegistryServer, tmp_path: Path) -> str:
    name, _ = push_lazy_image(tmp_path / "build", f"{registry.host}/lazypull-runtime/one-process:esgz",
                              [busybox_specs()], config={"config": {"Env": ["PATH=/bin"]}})
    return name


def _read_until(fd: int, needle: bytes, deadline: float) -> bytes:
    out = b""
    while needle not in out and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


@pytest.mark.parametrize("tty", [False, True], ids=["rm", "it-rm"])
def test_foreground_run_is_one_interpreter(tmp_path: Path, lazy_image: str, tty: bool) -> None:
    """``run --rm`` (and ``-it --rm`` on a terminal) of an image not yet pulled: while the container
    runs, no lazypull interpreter descends from the command's (the mount server was running)."""
    root, gate = tmp_path / "root", tmp_path / "gate"
    root.mkdir()
    gate.mkdir()
    MountClient(root).ping()        # a server the command did not start: not one of its children
    argv = [sys.executable, "-m", "lazypull", "--insecure-registry", "run", "--rm",
            *(["-it"] if tty else []), "-v", f"{gate}:/gate", lazy_image, "sh", "-c", WAIT]
    env = dict(os.environ, LAZYPULL_ROOT=str(root), TERM="xterm")
    if tty:
        import pty

        master, slave = pty.openpty()
        proc = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdin=slave, stdout=slave, stderr=slave,
                                start_new_session=True)
        os.close(slave)
        out_fd = master
    else:
        proc = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        out_fd = proc.stdout.fileno()
    try:
        output = _read_until(out_fd, b"ready", time.monotonic() + 120)
        assert b"ready" in output, (output, proc.poll())
        assert lazypull_processes(below=proc.pid) == []
        (gate / "go").touch()
        output += _read_until(out_fd, b"done", time.monotonic() + 60)
        assert proc.wait(timeout=60) == 0, output
        assert b"done" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if tty:
            os.close(master)
        MountClient(root, autostart=False).shutdown()
    assert mounts_under(root) == []


def test_detached_run_leaves_one_supervisor(tmp_path: Path, lazy_image: str) -> None:
    """``run -d --rm``: the command returns; one supervisor (``start --attach``) waits for the container
    and removes it when it exits; no other lazypull interpreter is left for it."""
    root, gate = tmp_path / "root", tmp_path / "gate"
    root.mkdir()
    gate.mkdir()
    MountClient(root).ping()
    try:
        started = lazypull(root, "--insecure-registry", "run", "-d", "--rm", "-v", f"{gate}:/gate",
                           lazy_image, "sh", "-c", WAIT)
        assert started.returncode == 0, started.stderr.decode()
        container_id = started.stdout.decode().strip()
        mine = [argv for argv in lazypull_processes() if container_id in argv]
        assert len(mine) == 1 and "start" in mine[0] and "--attach" in mine[0], mine
        (gate / "go").touch()       # the supervisor removes the container (--rm), then exits
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and [argv for argv in lazypull_processes() if container_id in argv]:
            time.sleep(0.1)
        assert [argv for argv in lazypull_processes() if container_id in argv] == []
        assert not (root / "containers" / container_id).exists()
    finally:
        MountClient(root, autostart=False).shutdown()
    assert mounts_under(root) == []
