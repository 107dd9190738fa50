"""The mount server as a long-running node daemon: no memory kept per container, one server per root,
a clean stop, start-up clean-up of what a dead server or a killed pull left (issue 10)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lazypull.fs.mount import lazypull_mounts
from lazypull.registry import RegistryClient, parse_manifest
from lazypull.snapshot import MountClient, daemon_pid
from lazypull.snapshot.keeper import keeper_pid
from lazypull.snapshot.paths import RunPaths
from tests.helpers.registry import Fault, FaultProxy
from tests.reliability.kit import REPO_ROOT, Gate, gone, lazy_root, wait_until


@pytest.fixture
def root(tmp_path: Path, lazy_image: str) -> Iterator[Path]:
    """A store root holding the image's metadata (a lazy pull), without background fetch."""
    root = lazy_root(tmp_path / "root", lazy_image)
    yield root
    MountClient(root, autostart=False).shutdown()


def test_released_layer_trees_are_freed(root: Path, lazy_image: str) -> None:
    """30 containers' worth of mount/read/release: every released layer's tree is freed (the server kept
    each one as uncollected cyclic garbage: ~13 MB per container, RSS growing without bound)."""
    with MountClient(root) as mc:
        for i in range(30):
            layers = mc.mount_image(lazy_image, insecure=True, holder=f"c{i:02d}", wait_prefetch=False)
            top = layers[-1].path
            assert top is not None and (top / "data/0007.txt").read_bytes() == b"file 7\n" * 20
            mc.release_image(lazy_image, holder=f"c{i:02d}")
            assert mc.list_mounts() == []
        released = mc.stats()["released_trees"]
        assert released["released"] == 60, released

        def all_freed() -> bool:
            return bool(mc.stats()["released_trees"]["alive"] == 0)

        wait_until(all_freed, "the released layer trees to be freed")


def test_sigterm_stops_at_once_and_no_second_server_starts_meanwhile(
        lazy_image: str, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    """SIGTERM while a container's read waits on a registry request that does not answer: the server
    unmounts and exits without waiting for that request (it lingered until the fetch's deadline, 30 s
    and more), and a command meanwhile does not start a second server on the same root: the next
    server starts once the old one is gone (both held the root before: the pidfile was unlinked)."""
    image = lazy_image.replace(lazy_image.split("/")[0], fault_proxy.host, 1)
    root = lazy_root(tmp_path / "root", image, "read_deadline = 100.0\nprefetch = false\n")
    release = Gate()
    try:
        with MountClient(root) as mc:
            bottom = mc.mount_image(image, insecure=True, holder="c1", wait_prefetch=False)[0].path
            assert bottom is not None
            old = daemon_pid(root)
            assert old is not None
            fault_proxy.add(Fault("hold", method="GET", path_contains="/blobs/", times=-1, release=release))
            errors: list[OSError] = []

            def read() -> None:
                try:
                    (bottom / "bin/busybox").read_bytes()
                except OSError as err:
                    errors.append(err)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            wait_until(release.waiting.is_set, "the read to reach the registry")
            os.kill(old, signal.SIGTERM)
            pid = MountClient(root).ping()["pid"]       # a command right after: waits for the old one
            assert gone(old), "a second server started while the first still ran"
            assert pid != old and not release.is_set()
            reader.join(60)
            assert errors, "the stopped server's pending read must fail"
            release.set()
            assert [m.holders for m in mc.list_mounts()] == [["c1"], ["c1"]], "the new server restores"
            assert (bottom / "bin/busybox").read_bytes()[:4] == b"\x7fELF"
            mc.release_image(image, holder="c1")
    finally:
        release.set()
        MountClient(root, autostart=False).shutdown()
    wait_until(lambda: lazypull_mounts(root) == [], "the layer mounts to go (none kept by the keeper)")


def test_partial_extractions_of_killed_pulls_are_removed(lazy_image: str, fault_proxy: FaultProxy,
                                                         tmp_path: Path) -> None:
    """A full pull killed while it extracts a layer leaves ``snapshots/<hex>/.fs.partial-*`` (hundreds
    of MB each, kept forever): the next pull of that layer and the next server start remove those of
    dead processes, and leave one that a live process is writing."""
    image = lazy_image.replace(lazy_image.split("/")[0], fault_proxy.host, 1)
    root = tmp_path / "root"
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    gate = Gate()
    with RegistryClient(insecure=True) as client:
        raw, media_type, _ = client.resolve_image(image)
    for layer in parse_manifest(raw, media_type).layers:     # the layers' downloads never answer
        fault_proxy.add(Fault("hold", method="GET", path_contains=layer.digest, times=-1, release=gate))
    pull = subprocess.Popen([sys.executable, "-m", "lazypull", "--insecure-registry",
                             "--snapshotter=overlayfs", "pull", image], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: bool(list(root.glob("snapshots/*/.fs.partial-*"))) or pull.poll() is not None,
                   "a partial extraction")
    finally:
        pull.kill()
        pull.wait()
        gate.set()
    left = list(root.glob("snapshots/*/.fs.partial-*"))
    assert left, "the killed pull was extracting a layer"
    layer_dir = left[0].parent
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        in_progress = layer_dir / f".fs.partial-{sleeper.pid}-inprogress"
        in_progress.mkdir()
        old_style = layer_dir / ".fs.partial-k1x2v9"              # named before pids were
        old_style.mkdir()
        with MountClient(root) as mc:
            mc.list_mounts()        # a server start cleans up before it serves (a ping may come first)
            assert list(root.glob("snapshots/*/.fs.partial-*")) == [in_progress]
            fault_proxy.clear()
            # and a re-pull of the layer, with no server start in between
            (layer_dir / f".fs.partial-{_dead_pid()}-again").mkdir()
            again = subprocess.run([sys.executable, "-m", "lazypull", "--insecure-registry",
                                    "--snapshotter=overlayfs", "pull", image], env=env, cwd=REPO_ROOT,
                                   capture_output=True)
            assert again.returncode == 0, again.stderr.decode()
            assert list(root.glob("snapshots/*/.fs.partial-*")) == [in_progress]
            assert (layer_dir / "fs").is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
        MountClient(root, autostart=False).shutdown()


def _dead_pid() -> int:
    """The pid of a process that has exited (not reused within a test, pids are handed out in turn)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_commands_work_while_mounts_are_stale(lazy_image: str, tmp_path: Path) -> None:
    """The server and the keeper of its connections killed (-9) after a lazy pull: its FUSE mounts
    answer ENOTCONN. ``images`` and ``ps`` still work (``images`` failed on them), and the next server
    detaches them and mounts again."""
    root = tmp_path / "root"
    env = dict(os.environ, LAZYPULL_ROOT=str(root))

    def lazypull(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lazypull", *args], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=300)

    try:
        assert lazypull("--insecure-registry", "pull", lazy_image).returncode == 0
        pid, keeper = daemon_pid(root), keeper_pid(RunPaths(root))
        assert pid is not None and keeper is not None
        os.kill(pid, signal.SIGKILL)
        os.kill(keeper, signal.SIGKILL)         # the last fds of the connections: they end
        wait_until(lambda: gone(pid) and gone(keeper), "the killed server and keeper to be gone")
        stale = lazypull_mounts(root)
        assert len(stale) == 2
        with pytest.raises(OSError):
            os.listdir(stale[0])
        listing = lazypull("images")
        assert listing.returncode == 0, listing.stderr
        assert lazy_image.split("/", 1)[1].split(":")[0] in listing.stdout
        assert lazypull("ps", "-a").returncode == 0
        with MountClient(root) as mc:
            assert len(mc.list_mounts()) == 2, "the next server detached the dead mounts and mounted again"
        assert sorted(lazypull_mounts(root)) == sorted(stale)
        data = [p / "data/0007.txt" for p in stale if (p / "data").is_dir()]
        assert len(data) == 1 and data[0].read_bytes() == b"file 7\n" * 20
    finally:
        MountClient(root, autostart=False).shutdown()


@pytest.mark.parametrize("phase", ["mounting", "running"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["TERM", "HUP", "INT"])
def test_killed_run_rm_cli_removes_its_container(lazy_image: str, fault_proxy: FaultProxy, tmp_path: Path,
                                                 sig: signal.Signals, phase: str) -> None:
    """Like docker's ``--rm``: a ``run --rm`` whose CLI is told to go (terminal closed, kill, Ctrl-C
    sent to it alone) stops its container and removes it, with its rootfs mount and layer hold; also
    while the server is still mounting its layers (SIGTERM/SIGHUP killed the CLI there, and the hold
    the server recorded after the CLI was gone stayed for good)."""
    image = lazy_image.replace(lazy_image.split("/")[0], fault_proxy.host, 1)
    root = lazy_root(tmp_path / "root", image)
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    gate = Gate()
    if phase == "mounting":
        with RegistryClient(insecure=True) as client:
            raw, media_type, _ = client.resolve_image(image)
        for layer in parse_manifest(raw, media_type).layers:     # the layers' TOC reads wait
            fault_proxy.add(Fault("hold", method="GET", path_contains=layer.digest, times=-1, release=gate))
    MountClient(root).ping()
    proc = subprocess.Popen([sys.executable, "-m", "lazypull", "--insecure-registry", "run", "--rm",
                             image, "sleep", "600"], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        def running() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            listing = subprocess.run(["runc", "--root", str(root / "runc"), "list", "--format", "json"],
                                     capture_output=True, text=True).stdout
            return any(c["status"] == "running" for c in json.loads(listing or "null") or [])

        wait_until(gate.waiting.is_set if phase == "mounting" else running, f"the container {phase}")
        proc.send_signal(sig)
        proc.wait(timeout=120)
        gate.set()
    finally:
        gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        # 128+N, or 137 once the container ignored the forwarded signal for 5 s, or runc's own status
        # when the signal reached it while it was still starting the container
        assert proc.returncode not in (0, None), proc.stderr.read().decode() if proc.stderr else ""
        assert [p.name for p in (root / "containers").iterdir() if not p.name.startswith(".")] == []
        assert subprocess.run(["runc", "--root", str(root / "runc"), "list", "-q"], capture_output=True,
                              text=True).stdout.split() == []
        with MountClient(root, autostart=False) as mc:
            wait_until(lambda: [m.holders for m in mc.list_mounts()] == [], "the container's hold to go")
    finally:
        pid = daemon_pid(root)
        MountClient(root, autostart=False).shutdown()
    # a stopped server leaves no mount behind, not even one it was still making when told to stop
    if pid is not None:
        wait_until(lambda: gone(pid), "the server to exit")
    wait_until(lambda: lazypull_mounts(root) == [], "the layer mounts to go (none kept by the keeper)")


def test_daemon_status_metrics_and_stop(lazy_image: str, tmp_path: Path) -> None:
    """Operating the server: ``daemon status`` (pid, uptime, layers, cache), the Prometheus endpoint
    (fetched bytes, misses, wait histogram, cache size, errors, process memory), ``daemon stop``."""
    from prometheus_client.parser import text_string_to_metric_families

    root = lazy_root(tmp_path / "root", lazy_image)
    env = dict(os.environ, LAZYPULL_ROOT=str(root))

    def lazypull(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lazypull", *args], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)

    assert lazypull("daemon", "status").returncode == 1
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)      # as systemd's, for Type=notify
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(60)
    server = subprocess.Popen([sys.executable, "-m", "lazypull", "daemon", "--metrics-address",
                               "127.0.0.1:0"], env=dict(env, NOTIFY_SOCKET=str(tmp_path / "notify.sock")),
                              cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert notify.recv(4096) == f"READY=1\nMAINPID={server.pid}".encode()
        assert (root / "run" / "lazypull.sock").exists(), "ready means listening"
        with MountClient(root, autostart=False) as mc:
            top = mc.mount_image(lazy_image, insecure=True, holder="c1", wait_prefetch=False)[-1].path
            assert top is not None and (top / "data/0042.txt").read_bytes() == b"file 42\n" * 20
        shown = lazypull("daemon", "status")
        assert shown.returncode == 0, shown.stderr
        fields = dict(line.split(":", 1) for line in shown.stdout.splitlines())
        assert fields["pid"].strip() == str(server.pid) and fields["root"].strip() == str(root)
        assert fields["mounted layers"].strip().startswith("2 ")
        status = json.loads(lazypull("daemon", "status", "--json").stdout)
        assert status["running"] and status["pid"] == server.pid and len(status["mounts"]) == 2
        assert status["cache_bytes"] > 0 and status["totals"]["bytes_fetched"] > 0
        metrics = {s.name: s.value for family in text_string_to_metric_families(
            httpx.get(f"http://{status['metrics']}/metrics", timeout=30).text) for s in family.samples}
        assert metrics["lazypull_fetched_bytes_total"] == status["totals"]["bytes_fetched"]
        assert metrics["lazypull_mounted_layers"] == 2 and metrics["lazypull_holds"] == 1
        assert metrics["lazypull_read_misses_total"] >= 1 and metrics["lazypull_read_errors_total"] == 0
        assert metrics["lazypull_read_miss_wait_seconds_count"] == metrics["lazypull_read_misses_total"]
        assert metrics["lazypull_cache_size_bytes"] > 0 and metrics["process_resident_memory_bytes"] > 0
        stopped = lazypull("daemon", "stop")
        assert stopped.returncode == 0 and f"pid {server.pid}" in stopped.stdout, stopped.stderr
        assert server.wait(timeout=30) == 0
        assert notify.recv(4096) == b"STOPPING=1"
        wait_until(lambda: lazypull_mounts(root) == [], "the layer mounts to go (none kept by the keeper)")
        assert lazypull("daemon", "status").returncode == 1
        assert "no mount server" in lazypull("daemon", "stop").stdout
    finally:
        notify.close()
        if server.poll() is None:
            server.kill()
            server.wait()


def test_daemon_ls_and_stop_refused_while_containers_run(lazy_image: str, tmp_path: Path) -> None:
    """``daemon ls`` lists the servers of this machine by root (one ended up with 14 of them, with no
    way to find them); ``daemon stop`` refuses while a running container reads from its layers, and
    ``daemon stop --keep-mounts`` does not (the container goes on reading through the next server)."""
    root = lazy_root(tmp_path / "root", lazy_image)
    env = dict(os.environ, LAZYPULL_ROOT=str(root))

    def lazypull(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lazypull", *args], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)

    try:
        started = lazypull("--insecure-registry", "run", "-d", "--name", "busy", lazy_image, "sleep", "600")
        assert started.returncode == 0, started.stderr
        pid = daemon_pid(root)
        listed = [line.split() for line in lazypull("daemon", "ls").stdout.splitlines()]
        assert listed[0] == ["PID", "ROOT", "UPTIME", "LAYERS", "HOLDERS"]
        assert [str(pid), str(root)] in [row[:2] for row in listed]
        mine = next(row for row in listed if row[1] == str(root))
        assert mine[-2:] == ["2", "1"], mine
        refused = lazypull("daemon", "stop")
        assert refused.returncode == 1 and "running container" in refused.stderr
        assert pid is not None and not gone(pid) and len(lazypull_mounts(root)) == 2
        # keeping the mounts (what the systemd unit's ExecStop does) breaks no container: not refused
        mounts = sorted(lazypull_mounts(root))
        kept = lazypull("daemon", "stop", "--keep-mounts")
        assert kept.returncode == 0, kept.stderr
        assert gone(pid) and sorted(lazypull_mounts(root)) == mounts
        assert MountClient(root).list_mounts()        # the next server (started on demand) serves them
        busy_reads = lazypull("exec", "busy", "cat", "/data/0123.txt")
        assert busy_reads.returncode == 0, busy_reads.stderr
        assert busy_reads.stdout == "file 123\n" * 20
        pid = daemon_pid(root)
        assert pid is not None, "no server serves the kept mounts"
        assert lazypull("rm", "-f", "busy").returncode == 0
        stopped = lazypull("daemon", "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert gone(pid) and lazypull_mounts(root) == []
    finally:
        lazypull("rm", "-f", "busy")
        MountClient(root, autostart=False).shutdown()
