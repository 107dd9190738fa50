"""The container commands people reach for: exec (-i, -e, -w, -u, exit status), logs -f / --tail,
stats (CPU/memory/pids from the cgroups, as nerdctl's) and the layer counters under fs stats."""

from __future__ import annotations

import json
from pathlib import Path

from tests.runtime.test_cli_run import busybox_image, lazypull  # noqa: F401 (fixture)

BASE = ["--snapshotter=overlayfs", "--insecure-registry"]


def test_exec_logs_tail_and_stats(tmp_path: Path, busybox_image: str) -> None:  # noqa: F811
    started = lazypull(tmp_path, *BASE, "run", "-d", "--name", "c", busybox_image,
                       "sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done; exec sleep 600")
    assert started.returncode == 0, started.stderr.decode()
    try:
        done = lazypull(tmp_path, "exec", "c", "sh", "-c", "test -f /proc/1/cmdline && exit 7")
        assert done.returncode == 7, done.stderr.decode()
        shown = lazypull(tmp_path, "exec", "-e", "A=from exec", "-w", "/srv", "-u", "0", "c",
                         "sh", "-c", 'echo "$A"; pwd; id -u')
        assert shown.stdout == b"from exec\n/srv\n0\n", shown.stderr.decode()
        alice = lazypull(tmp_path, "exec", "-u", "alice", "c", "id", "-un")
        assert alice.stdout == b"alice\n", alice.stderr.decode()
        piped = lazypull(tmp_path, "exec", "-i", "c", "cat", stdin=b"through stdin\n")
        assert piped.stdout == b"through stdin\n"
        assert lazypull(tmp_path, "exec", "c", "cat", stdin=b"not passed\n").stdout == b"", "no -i: no stdin"
        bad = lazypull(tmp_path, "exec", "-e", "=x", "c", "true")
        assert bad.returncode == 1 and b"invalid environment variable" in bad.stderr

        assert lazypull(tmp_path, "logs", "--tail", "2", "c").stdout == b"line4\nline5\n"
        assert lazypull(tmp_path, "logs", "c").stdout.count(b"\n") == 5
        assert lazypull(tmp_path, "logs", "--tail", "0", "c").stdout == b""

        table = lazypull(tmp_path, "stats", "--no-stream").stdout.decode().splitlines()
        assert table[0].split()[:3] == ["CONTAINER", "ID", "NAME"] and "MEM USAGE / LIMIT" in table[0]
        assert len(table) == 2 and table[1].split()[1] == "c"
        row = json.loads(lazypull(tmp_path, "stats", "--no-stream", "--format", "json", "c").stdout)
        assert row["Name"] == "c" and row["PIDs"] >= 1 and row["MemUsage"].split(" / ")[0] != "0B"
    finally:
        lazypull(tmp_path, "rm", "-f", "c")
    gone = lazypull(tmp_path, "exec", "c", "true")
    assert gone.returncode == 1 and gone.stdout == b""


def test_logs_follow_until_exit(tmp_path: Path, busybox_image: str) -> None:  # noqa: F811
    started = lazypull(tmp_path, *BASE, "run", "-d", "--name", "f", busybox_image,
                       "sh", "-c", "echo first; sleep 2; echo second")
    assert started.returncode == 0, started.stderr.decode()
    followed = lazypull(tmp_path, "logs", "-f", "f")
    assert followed.stdout == b"first\nsecond\n", "followed to the end, then returned"
    stopped = lazypull(tmp_path, "exec", "f", "true")
    assert stopped.returncode == 1 and b"not running" in stopped.stderr
    assert lazypull(tmp_path, "rm", "f").returncode == 0


def test_layer_counters_moved_to_fs_stats(tmp_path: Path) -> None:
    moved = lazypull(tmp_path, "fs", "stats", "--json")
    assert json.loads(moved.stdout) == {"layers": {}, "running": False}
    assert json.loads(lazypull(tmp_path, "stats", "--json").stdout) == {"layers": {}, "running": False}
    assert b"fs stats" in lazypull(tmp_path, "stats", "--help").stdout
