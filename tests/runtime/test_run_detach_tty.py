"""``run -dit``: a detached container with a terminal. Its supervisor keeps the console (the pty master
runc sends) and copies it to the container log, so ``logs`` shows what the container wrote on its
terminal and the terminal stays open (a shell waiting on it keeps running, ``exec`` works); ``rm -f``
removes it all. ``run -di`` keeps stdin open (not /dev/null). There is no ``attach``."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from tests.runtime.test_cli_run import busybox_image, lazypull, mounts_under  # noqa: F401 (fixture)

BASE = ["--snapshotter=overlayfs", "--insecure-registry"]


def _log_when(root: Path, name: str, text: bytes, within: float = 60) -> bytes:
    """The container log once it holds ``text`` (the copy runs in the background)."""
    deadline = time.monotonic() + within
    while True:
        out = lazypull(root, "logs", name).stdout
        if text in out or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _processes_naming(word: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if word.encode() in cmdline:
                found.append(int(entry.name))
    return found


def test_run_dit_keeps_the_terminal_and_logs_it(tmp_path: Path, busybox_image: str) -> None:  # noqa: F811
    started = lazypull(tmp_path, *BASE, "run", "-dit", "--name", "t", busybox_image,
                       "sh", "-c", "tty; echo hi; sleep 30")
    assert started.returncode == 0, started.stderr.decode()
    container_id = started.stdout.decode().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", container_id)
    try:
        log = _log_when(tmp_path, "t", b"hi")
        # a terminal turns \n into \r\n, as docker logs of a -t container show
        assert re.fullmatch(rb"/dev/pts/\d+\r\nhi\r\n", log), log
        ps = lazypull(tmp_path, "ps").stdout.decode()
        assert re.search(r"\bRunning\s+t$", ps, re.M), ps
        stdin = lazypull(tmp_path, "exec", "t", "readlink", "/proc/1/fd/0")
        assert stdin.returncode == 0, stdin.stderr.decode()
        assert re.fullmatch(rb"/dev/pts/\d+\n", stdin.stdout), "pid 1 reads its terminal"
        assert _processes_naming(container_id), "the supervisor keeps the console"
    finally:
        removed = lazypull(tmp_path, "rm", "-f", "t")
    assert removed.returncode == 0, removed.stderr.decode()
    assert lazypull(tmp_path, "ps", "-a", "-q").stdout == b""
    assert not (tmp_path / "containers" / container_id).exists()
    assert mounts_under(tmp_path / "containers") == []
    deadline = time.monotonic() + 30
    while _processes_naming(container_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_naming(container_id) == [], "the supervisor ends with its container"


def test_run_dit_shell_waits_on_its_terminal(tmp_path: Path, busybox_image: str) -> None:  # noqa: F811
    """The common use: a shell left waiting for input, to exec into later."""
    started = lazypull(tmp_path, *BASE, "run", "-dit", "--name", "sh", busybox_image, "sh")
    assert started.returncode == 0, started.stderr.decode()
    try:
        done = lazypull(tmp_path, "exec", "sh", "sh", "-c", "echo from exec")
        assert done.returncode == 0 and done.stdout == b"from exec\n", done.stderr.decode()
        assert "Running" in lazypull(tmp_path, "ps").stdout.decode()
    finally:
        assert lazypull(tmp_path, "rm", "-f", "sh").returncode == 0
    assert lazypull(tmp_path, "ps", "-a", "-q").stdout == b""


def test_run_di_keeps_stdin_open(tmp_path: Path, busybox_image: str) -> None:  # noqa: F811
    """Without -t, -i gives the container a stdin that stays open (docker's), not /dev/null: a read
    waits instead of ending at once."""
    started = lazypull(tmp_path, *BASE, "run", "-di", "--name", "r", busybox_image,
                       "sh", "-c", "echo waiting; read x; echo read returned")
    assert started.returncode == 0, started.stderr.decode()
    try:
        assert _log_when(tmp_path, "r", b"waiting") == b"waiting\n"
        alive = lazypull(tmp_path, "exec", "r", "true")
        assert alive.returncode == 0, alive.stderr.decode()
        assert lazypull(tmp_path, "logs", "r").stdout == b"waiting\n"
    finally:
        assert lazypull(tmp_path, "rm", "-f", "r").returncode == 0


def test_start_of_a_created_tty_container(tmp_path: Path, busybox_image: str) -> None:  # noqa: F811
    """``create -t`` then ``start`` (no -a): started in the background with its console kept."""
    created = lazypull(tmp_path, *BASE, "create", "-t", "--name", "c", busybox_image, "sh", "-c",
                       "tty; sleep 30")
    assert created.returncode == 0, created.stderr.decode()
    try:
        started = lazypull(tmp_path, "start", "c")
        assert started.returncode == 0 and started.stdout == b"c\n", started.stderr.decode()
        assert re.fullmatch(rb"/dev/pts/\d+\r\n", _log_when(tmp_path, "c", b"\n"))
        assert lazypull(tmp_path, "exec", "c", "true").returncode == 0
        refused = lazypull(tmp_path, "start", "-i", "c")
        assert refused.returncode == 1 and b"only created containers can start" in refused.stderr
    finally:
        assert lazypull(tmp_path, "rm", "-f", "c").returncode == 0
