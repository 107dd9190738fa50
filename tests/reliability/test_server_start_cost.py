"""What a fresh mount server does before its first mount (issue 14 item 3): no click, no registry
client (httpx) for a layer whose TOC is recorded on disk until a read misses, no ldconfig run, no
external-TOC lookup, no store code for an empty ``run/stores.json``; and its open files limit raised
to the hard limit. The connection keeper it
starts beside it does not load the mount server's client.

The server is the real one, started as the CLI starts it (``python -I -m lazypull daemon --root R``),
with ``-X importtime``: what it imported is on its stderr, in order, as it happened.
"""

from __future__ import annotations

import fcntl
import os
import resource
import subprocess
import sys
from pathlib import Path

from lazypull.lockfile import flocked
from lazypull.selfexec import python_argv
from lazypull.snapshot import MountClient, daemon_pid
from lazypull.snapshot.keeper import keeper_pid
from lazypull.snapshot.paths import RunPaths
from tests.reliability.kit import REPO_ROOT, fuse_fds, lazy_root, wait_until


def _imported(log: Path) -> set[str]:
    """The modules ``-X importtime`` reported so far."""
    names = set()
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def _spawn(root: Path, log: Path, *, nofile: int | None = None) -> subprocess.Popen[bytes]:
    def limit() -> None:
        if nofile is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-I", "-m", "lazypull", "daemon",
                                 "--root", str(root)], stdin=subprocess.DEVNULL, stdout=fh, stderr=fh,
                                cwd=REPO_ROOT, start_new_session=True, preexec_fn=limit)
    wait_until(lambda: RunPaths(root).socket.exists() and daemon_pid(root) == proc.pid,
               "the server to listen")
    return proc


def _stop(root: Path, proc: subprocess.Popen[bytes]) -> None:
    MountClient(root, autostart=False).shutdown()
    proc.wait(60)


def _recorded_root(tmp_path: Path, lazy_image: str) -> Path:
    """A root whose image was mounted once by a server now stopped with its keeper: the layers' footer,
    TOC and origins are recorded, so the next mount reads no registry."""
    root = lazy_root(tmp_path / "root", lazy_image)
    with MountClient(root) as mc:
        mc.mount_image(lazy_image, insecure=True, holder="first")
        mc.release_image(lazy_image, holder="first")
        mc.shutdown()
    wait_until(lambda: daemon_pid(root) is None and keeper_pid(RunPaths(root)) is None,
               "the first server and its keeper to exit")
    return root


def test_a_recorded_layer_mounts_without_click_or_a_registry_client(tmp_path: Path, lazy_image: str) -> None:
    root = _recorded_root(tmp_path, lazy_image)

    log = tmp_path / "server.log"
    proc = _spawn(root, log)
    try:
        with MountClient(root, autostart=False) as mc:
            layers = mc.mount_image(lazy_image, insecure=True, holder="second", wait_prefetch=False)
            imported = _imported(log)
            assert "click" not in imported
            assert "httpx" not in imported, "a registry client was made for layers recorded on disk"
            # libc's mount(2) from the process's own symbols: find_library("c") imports subprocess
            # and runs ldconfig; the external-TOC lookup (and its manifest parsers) only when a TOC is
            # in a separate image
            assert not imported & {"ctypes.util", "lazypull.image.tocimage"}
            assert "lazypull.fs.fuse.session" in imported     # (the probe sees the server's imports)
            top = layers[-1].path
            assert top is not None
            # a miss makes the client then, and the read is served through it
            assert (top / "data/0123.txt").read_bytes() == b"file 123\n" * 20
            assert "httpx" in _imported(log)
            mc.release_image(lazy_image, holder="second")
    finally:
        _stop(root, proc)


def test_an_empty_store_list_loads_no_store_code_and_the_fd_limit_is_raised(
        tmp_path: Path, lazy_image: str) -> None:
    root = lazy_root(tmp_path / "root", lazy_image)
    RunPaths(root).run_dir.mkdir(parents=True, exist_ok=True)
    RunPaths(root).stores.write_text("[]")       # what a server that served no store leaves
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    log = tmp_path / "server.log"
    proc = _spawn(root, log, nofile=256)
    try:
        with MountClient(root, autostart=False) as mc:
            assert mc.list_mounts() == []          # waits for the restore
        assert not {m for m in _imported(log) if m.startswith("lazypull.store")}
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
        soft = line.split()[3]
        want = hard if hard != resource.RLIM_INFINITY else int(Path("/proc/sys/fs/nr_open").read_text())
        assert int(soft) == want, line
    finally:
        _stop(root, proc)


def test_daemon_help_and_flags_still_go_through_the_cli(tmp_path: Path) -> None:
    """Only the plain form the CLI starts skips click: ``--help`` and the other flags work as before."""
    env = dict(os.environ, LAZYPULL_ROOT=str(tmp_path))
    run = subprocess.run([sys.executable, "-I", "-m", "lazypull", "daemon", "--help"], capture_output=True,
                         text=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert run.returncode == 0 and "--containerd-socket" in run.stdout and "--store" in run.stdout
    run = subprocess.run([sys.executable, "-I", "-m", "lazypull", "daemon", "--root", str(tmp_path),
                          "--cri-image-service", str(tmp_path / "cri.sock")], capture_output=True, text=True,
                         env=env, cwd=REPO_ROOT, timeout=60)
    assert run.returncode == 2 and "--cri-image-service needs --containerd-socket" in run.stderr
    # the plain form reports what is wrong in one line, as the CLI does
    (tmp_path / "file").write_text("")
    run = subprocess.run([sys.executable, "-I", "-m", "lazypull", "daemon", "--root", str(tmp_path / "file")],
                         capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert (run.returncode, run.stderr) == (1, f"lazypull: error: {tmp_path / 'file'} is not a directory\n")


def test_the_keeper_does_not_load_the_mount_client(tmp_path: Path) -> None:
    """The keeper starts while the server starts (same argv as the server uses), and the server's
    first mount waits for it to listen: the client, the server's protocol, the FUSE protocol tables
    (it keeps INIT's outcome as JSON), subprocess and the chunk cache are imports it never uses (~10 ms
    of its start each)."""
    root = tmp_path / "root"
    RunPaths(root).run_dir.mkdir(parents=True)
    log = tmp_path / "keeper.log"
    argv = python_argv("-m", "lazypull.snapshot.keeper", str(root))
    with open(log, "wb") as fh:
        proc = subprocess.Popen([argv[0], "-X", "importtime", *argv[1:]], stdin=subprocess.DEVNULL,
                                stdout=fh, stderr=fh, cwd=REPO_ROOT, start_new_session=True)
    try:
        wait_until(lambda: keeper_pid(RunPaths(root)) == proc.pid, "the keeper to listen")
        imported = _imported(log)
        assert "lazypull.snapshot.paths" in imported      # (the probe sees the keeper's imports)
        assert not imported & {"lazypull.snapshot.client", "lazypull.snapshot.protocol", "httpx",
                               "lazypull.fs.fuse.ops", "lazypull.fs.fuse.protocol", "subprocess",
                               # the chunk cache (snapshot.paths' digest_hex, only for layer paths)
                               "lazypull.fs.cache", "hashlib", "tempfile"}
        assert proc.wait(60) == 0       # nothing kept, no server: it exits on its own
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_with_no_keeper_running_a_mount_is_served_before_the_keeper_listens_and_kept_after(
        tmp_path: Path, lazy_image: str) -> None:
    """A fresh server whose root has no keeper running has no connection to take back: its first mount
    does not wait for the keeper's start (here held back by its start lock, as a start under way
    holds it). The mount's connection goes to the keeper once it is up: a server stopped keeping its
    mounts hands them to the next one, through a file opened before."""
    root = _recorded_root(tmp_path, lazy_image)
    paths = RunPaths(root)
    events: list[str] = []
    proc = None
    try:
        with flocked(paths.keeper_start_lock, fcntl.LOCK_EX) as held:     # no keeper may start
            assert held
            proc = _spawn(root, tmp_path / "server.log")
            with MountClient(root, autostart=False) as mc:
                layers = mc.mount_image(lazy_image, insecure=True, holder="c1", wait_prefetch=False)
            events.append("mounted")
            assert keeper_pid(paths) is None
        wait_until(lambda: keeper_pid(paths) is not None, "the keeper to start")
        events.append("keeper listens")
        keeper = keeper_pid(paths)
        assert keeper is not None
        wait_until(lambda: fuse_fds(keeper) == len(layers), "the keeper to hold both connections")
        assert events == ["mounted", "keeper listens"]
        top = next(lm.path for lm in layers if lm.path is not None and (lm.path / "data").is_dir())
        kept = os.open(top / "data/0001.txt", os.O_RDONLY)
        try:
            MountClient(root, autostart=False).shutdown(unmount=False)
            proc.wait(60)
            # the next server takes the kept connections back: the open file reads on
            with MountClient(root) as mc:
                assert [m.holders for m in mc.list_mounts()] == [["c1"], ["c1"]]
            os.posix_fadvise(kept, 0, 0, os.POSIX_FADV_DONTNEED)
            assert os.pread(kept, 4096, 0) == b"file 1\n" * 20
            assert (top / "data/0002.txt").read_bytes() == b"file 2\n" * 20
        finally:
            os.close(kept)
    finally:
        MountClient(root, autostart=False).shutdown()
        if proc is not None and proc.poll() is None:
            proc.wait(60)


def test_a_keep_mounts_stop_before_the_keeper_is_up_still_hands_it_the_mounts(
        tmp_path: Path, lazy_image: str) -> None:
    """A fresh server stopped keeping its mounts while its keeper is still starting (its start lock held
    here) waits for the keeper to take the queued connections before it exits: the next server takes
    them back, and a file opened before the stop reads on."""
    root = _recorded_root(tmp_path, lazy_image)
    paths = RunPaths(root)
    proc = None
    kept = None
    try:
        with flocked(paths.keeper_start_lock, fcntl.LOCK_EX) as held:     # no keeper may start
            assert held
            proc = _spawn(root, tmp_path / "server.log")
            with MountClient(root, autostart=False) as mc:
                layers = mc.mount_image(lazy_image, insecure=True, holder="c1", wait_prefetch=False)
            top = next(lm.path for lm in layers if lm.path is not None and (lm.path / "data").is_dir())
            kept = os.open(top / "data/0001.txt", os.O_RDONLY)
            MountClient(root, autostart=False).shutdown(unmount=False)
            assert keeper_pid(paths) is None
        proc.wait(60)       # exits only once the keeper, started after the lock's release, has them
        keeper = keeper_pid(paths)
        assert keeper is not None
        assert fuse_fds(keeper) == len(layers)
        with MountClient(root) as mc:
            assert [m.holders for m in mc.list_mounts()] == [["c1"], ["c1"]]
        os.posix_fadvise(kept, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(kept, 4096, 0) == b"file 1\n" * 20
        assert (top / "data/0002.txt").read_bytes() == b"file 2\n" * 20
    finally:
        if kept is not None:
            os.close(kept)
        MountClient(root, autostart=False).shutdown()
        if proc is not None and proc.poll() is None:
            proc.wait(60)
