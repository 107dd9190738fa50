"""``lazypull run/ps/rm`` end to end: a busybox image pushed to Debian's docker-registry, run by the CLI."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from lazypull.runtime.overlay import mountpoints
from tests.helpers.containerd import Ctr, write_oci_archive
from tests.helpers.images import TarEntrySpec
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import Entry, busybox_specs, busybox_tar, push_image_layers, push_lazy_image

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def busybox_image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``host/lazypull-runtime/busybox:legacy``: one gzip layer plus a small second layer, user alice."""
    name = f"{registry.host}/lazypull-runtime/busybox:legacy"
    top = busybox_specs(extra=[Entry("srv/motd", data=b"from the image\n")])
    config = {"config": {"Env": ["PATH=/bin", "GREETING=hello"], "User": "alice",
                         "Cmd": ["sh", "-c", "echo $GREETING; id -un"], "WorkingDir": "/home/alice"}}
    return push_image_layers(tmp_path_factory.mktemp("busybox-image"), name, [top], config=config)


def lazypull(root: Path, *args: str, stdin: bytes | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """The real command, as a user types it (a fresh process each time)."""
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    return subprocess.run([sys.executable, "-m", "lazypull", *args], input=stdin, capture_output=True,
                          env=env, cwd=REPO_ROOT, timeout=timeout)


def mounts_under(root: Path) -> list[str]:
    return [m for m in mountpoints() if m.startswith(str(root))]


def stop_daemon(root: Path) -> None:
    from lazypull.snapshot import MountClient

    MountClient(root, autostart=False).shutdown()


@pytest.mark.parametrize("argv", [
    ["--insecure-registry", "--snapshotter=overlayfs", "run", "--rm"],
    ["run", "--snapshotter=overlayfs", "--insecure-registry", "--rm"],
], ids=["global-flags-first", "global-flags-after"])
def test_run_rm_full_pull(tmp_path: Path, busybox_image: str, argv: Sequence[str]) -> None:
    result = lazypull(tmp_path, *argv, busybox_image, "/bin/busybox", "echo", "hi")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"hi\n"
    assert mounts_under(tmp_path) == []
    assert [p.name for p in (tmp_path / "containers").iterdir() if p.name != ".lock"] == []


def test_image_defaults_exit_status_and_flags(tmp_path: Path, busybox_image: str) -> None:
    base = ["--snapshotter=overlayfs", "--insecure-registry", "run", "--rm"]
    result = lazypull(tmp_path, *base, busybox_image)
    assert (result.returncode, result.stdout) == (0, b"hello\nalice\n"), result.stderr.decode()
    result = lazypull(tmp_path, *base, "-e", "GREETING=bye", "-u", "root", "-w", "/srv", busybox_image,
                      "sh", "-c", "echo $GREETING; id -un; cat motd; exit 42")
    assert (result.returncode, result.stdout) == (42, b"bye\nroot\nfrom the image\n")
    result = lazypull(tmp_path, *base, "--entrypoint", "/bin/cat", busybox_image, "/srv/motd")
    assert result.stdout == b"from the image\n"
    result = lazypull(tmp_path, *base, "-i", busybox_image, "cat", stdin=b"piped\n")
    assert result.stdout == b"piped\n"
    result = lazypull(tmp_path, *base, "--net=none", busybox_image, "ls", "/sys/class/net")
    assert result.stdout == b"lo\n"
    (tmp_path / "env").write_text("# settings\nGREETING=from-file\nOTHER=x\n")
    (tmp_path / "vol").mkdir()
    (tmp_path / "vol" / "data").write_text("mounted\n")
    result = lazypull(tmp_path, *base, "--env-file", str(tmp_path / "env"), "-e", "OTHER=y",
                      "-v", f"{tmp_path / 'vol'}:/mnt/vol:ro", busybox_image,
                      "sh", "-c", "echo $GREETING $OTHER; cat /mnt/vol/data")
    assert result.stdout == b"from-file y\nmounted\n", result.stderr.decode()
    assert mounts_under(tmp_path) == []


def test_ps_and_rm(tmp_path: Path, busybox_image: str) -> None:
    base = ["--snapshotter=overlayfs", "--insecure-registry"]
    result = lazypull(tmp_path, *base, "run", "--name", "kept", "-u", "0", busybox_image,
                      "sh", "-c", "echo x > /f; exit 3")
    assert result.returncode == 3, result.stderr.decode()
    assert lazypull(tmp_path, "ps").stdout.decode().splitlines()[1:] == []
    listing = lazypull(tmp_path, "ps", "-a").stdout.decode().splitlines()
    assert listing[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]
    assert len(listing) == 2 and "Exited (3)" in listing[1] and listing[1].endswith("kept")
    duplicate = lazypull(tmp_path, *base, "run", "--name", "kept", busybox_image, "true")
    assert duplicate.returncode == 1 and b"already in use" in duplicate.stderr
    assert mounts_under(tmp_path) == [], "a stopped container keeps no mounts"
    (container_dir,) = [p for p in (tmp_path / "containers").iterdir() if p.name != ".lock"]
    assert (container_dir / "upper" / "f").read_text() == "x\n"
    assert lazypull(tmp_path, "rm", "kept").returncode == 0
    assert not container_dir.exists()
    missing = lazypull(tmp_path, "rm", "kept")
    assert missing.returncode == 1 and b"no such container: kept" in missing.stderr


def test_pull_never_and_bad_volume(tmp_path: Path, busybox_image: str) -> None:
    result = lazypull(tmp_path, "run", "--pull=never", "--rm", busybox_image, "true")
    assert result.returncode == 1 and b"--pull=never" in result.stderr
    result = lazypull(tmp_path, "run", "-v", "relative:/x", "--rm", busybox_image, "true")
    assert result.returncode == 1 and b"named volumes are not supported" in result.stderr


def test_stargz_snapshotter_with_legacy_layers(tmp_path: Path, busybox_image: str) -> None:
    """The default snapshotter on a non-eStargz image: metadata pulled, layers fetched and extracted."""
    try:
        result = lazypull(tmp_path, "--insecure-registry", "run", "--rm", busybox_image,
                          "/bin/busybox", "echo", "hi")
        assert (result.returncode, result.stdout) == (0, b"hi\n"), result.stderr.decode()
        assert mounts_under(tmp_path) == []
    finally:
        stop_daemon(tmp_path)


def lazypull_mount_lines(root: Path) -> list[str]:
    """``mount | grep lazypull`` restricted to this test's store root (other tests may run alongside)."""
    out = subprocess.run(["mount"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "lazypull" in line and str(root) in line]


@pytest.mark.parametrize("compression", ["gzip", "zstd"], ids=["estargz", "zstd-chunked"])
def test_lazy_run_from_empty_store(tmp_path: Path, registry: RegistryServer, compression: str) -> None:
    big = Entry("srv/big.bin", data=os.urandom(3 << 20))  # never read: must not be fetched
    ref = f"{registry.host}/lazypull-runtime/lazy:{compression}"
    name, digests = push_lazy_image(tmp_path / "build", ref, [busybox_specs(extra=[big])],
                                    compression="zstd" if compression == "zstd" else "gzip")
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text("background_fetch = false\n")  # so only what is read is fetched
    mark = registry.log_mark()
    try:
        result = lazypull(root, "--snapshotter=stargz", "run", "--insecure-registry", "--rm", name,
                          "/bin/busybox", "echo", "hi")
        assert (result.returncode, result.stdout) == (0, b"hi\n"), result.stderr.decode()
        assert lazypull_mount_lines(root) == []
        assert mounts_under(root) == []
        blob_hex = digests[0].removeprefix("sha256:")
        assert not (root / "content" / "blobs" / "sha256" / blob_hex).exists(), "layer was downloaded whole"
        fetched = sum(e.bytes for e in registry.access_log(mark)
                      if blob_hex in e.path and e.method == "GET")
        assert 0 < fetched < (3 << 20), f"fetched {fetched} bytes of the layer"

        # Without --rm the container holds the lazy layer until `rm`.
        result = lazypull(root, "--insecure-registry", "run", "--name", "held", name, "true")
        assert result.returncode == 0, result.stderr.decode()
        assert len(lazypull_mount_lines(root)) == 1
        assert lazypull(root, "rm", "held").returncode == 0
        assert lazypull_mount_lines(root) == []

        # A pulled image keeps its layers mounted while it is in the store: run --rm leaves them.
        assert lazypull(root, "--insecure-registry", "pull", name).returncode == 0
        result = lazypull(root, "--insecure-registry", "run", "--rm", name, "/bin/busybox", "echo", "again")
        assert (result.returncode, result.stdout) == (0, b"again\n"), result.stderr.decode()
        assert len(lazypull_mount_lines(root)) == 1
    finally:
        stop_daemon(root)


@pytest.mark.parametrize("zstdchunked", [False, True], ids=["estargz", "zstd-chunked"])
def test_lazy_run_of_ctr_remote_image(tmp_path: Path, registry: RegistryServer, containerd: Ctr,
                                      zstdchunked: bool) -> None:
    """An image converted by Debian's ctr-remote (stargz-snapshotter 0.12), pushed by ctr, runs lazily."""
    layer = tmp_path / "layer.tar"
    layer.write_bytes(busybox_tar())
    kind = "zstdchunked" if zstdchunked else "estargz"
    local = f"docker.io/lazypull-runtime/ctr-{kind}:org"
    write_oci_archive([layer], tmp_path / "archive.tar", local)
    containerd.import_archive(tmp_path / "archive.tar")
    converted = local.replace(":org", ":converted")
    containerd.convert(local, converted, zstdchunked=zstdchunked)
    remote = f"{registry.host}/lazypull-runtime/ctr:{kind}"
    containerd.run(["images", "push", "--plain-http", remote, converted])
    root = tmp_path / "root"
    try:
        result = lazypull(root, "--insecure-registry", "run", "--rm", remote, "/bin/busybox", "echo", "hi")
        assert (result.returncode, result.stdout) == (0, b"hi\n"), result.stderr.decode()
        assert lazypull_mount_lines(root) == [] and mounts_under(root) == []
        assert not list((root / "snapshots").glob("*/fs/bin")), "the layer was extracted, not mounted lazily"
    finally:
        stop_daemon(root)


@pytest.mark.parametrize("tty", [False, True], ids=["plain", "tty"])
def test_sigterm_stops_the_container_and_cleans_up(tmp_path: Path, busybox_image: str, tty: bool) -> None:
    """pid 1 ignores SIGTERM (no handler): run forwards it, then kills the container after a grace."""
    env = dict(os.environ, LAZYPULL_ROOT=str(tmp_path))
    argv = ["--snapshotter=overlayfs", "--insecure-registry", "run", "--rm", *(["-t"] if tty else []),
            busybox_image, "sleep", "600"]
    proc = subprocess.Popen([sys.executable, "-m", "lazypull", *argv], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = subprocess.run(["runc", "--root", str(tmp_path / "runc"), "list", "-q"],
                                    capture_output=True, text=True).stdout.split()
            if states:
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.02)    # soon after runc lists it: runc may not have returned yet (tty)
        else:
            pytest.fail("the container never started")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 128 + signal.SIGKILL
    assert mounts_under(tmp_path) == []
    assert [p.name for p in (tmp_path / "containers").iterdir() if p.name != ".lock"] == []


def test_create_then_start(tmp_path: Path, busybox_image: str) -> None:
    base = ["--snapshotter=overlayfs", "--insecure-registry"]
    created = lazypull(tmp_path, *base, "create", "--rm", "--name", "later", busybox_image,
                       "sh", "-c", "echo started; exit 4")
    assert created.returncode == 0, created.stderr.decode()
    container_id = created.stdout.decode().strip()
    assert len(container_id) == 64
    listing = lazypull(tmp_path, "ps", "-a").stdout.decode().splitlines()
    assert "Created" in listing[1] and listing[1].startswith(container_id[:12])
    started = lazypull(tmp_path, "start", "--attach", "later")
    assert (started.returncode, started.stdout) == (4, b"started\n"), started.stderr.decode()
    assert mounts_under(tmp_path) == []
    assert not (tmp_path / "containers" / container_id).exists(), "created with --rm: removed after start"
    created = lazypull(tmp_path, *base, "create", "--name", "never-started", busybox_image, "true")
    assert created.returncode == 0 and len(mounts_under(tmp_path)) == 1, "a created container's rootfs"
    assert lazypull(tmp_path, "rm", "never-started").returncode == 0
    assert mounts_under(tmp_path) == []


@pytest.mark.parametrize("snapshotter", ["stargz", "overlayfs"])
def test_whiteouts_and_opaque_dirs_through_the_cli(tmp_path: Path, registry: RegistryServer,
                                                   snapshotter: str) -> None:
    """The same three-layer eStargz image shows the same merged tree lazily (FUSE lowers) and extracted."""
    lower = [TarEntrySpec("etc/", "dir"), TarEntrySpec("etc/old", content=b"old"),
             TarEntrySpec("etc/keep", content=b"keep"), TarEntrySpec("var/", "dir"),
             TarEntrySpec("var/dir/", "dir"), TarEntrySpec("var/dir/a", content=b"a"),
             TarEntrySpec("var/dir/sub/", "dir"), TarEntrySpec("var/dir/sub/b", content=b"b")]
    upper = [TarEntrySpec("etc/", "dir"), TarEntrySpec("etc/old", "whiteout"), TarEntrySpec("var/", "dir"),
             TarEntrySpec("var/dir/", "dir"), TarEntrySpec("var/dir", "opaque"),
             TarEntrySpec("var/dir/c", content=b"c")]
    name, _ = push_lazy_image(tmp_path / "build", f"{registry.host}/lazypull-runtime/whiteouts:{snapshotter}",
                              [busybox_specs(), lower, upper])
    root = tmp_path / "root"
    script = "ls -a /var/dir; ls /etc | grep -e old -e keep; cat /var/dir/c"
    try:
        result = lazypull(root, f"--snapshotter={snapshotter}", "--insecure-registry", "run", "--rm", name,
                          "sh", "-c", script)
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode().split() == [".", "..", "c", "keep", "c"]
    finally:
        stop_daemon(root)


def test_hostile_layer_from_a_registry_is_refused(tmp_path: Path, registry: RegistryServer) -> None:
    """A pulled layer whose tar climbs out of its directory fails the run, naming the layer and member."""
    bad = [*busybox_specs(), TarEntrySpec("../../../../escaped", content=b"pwned")]
    name = push_image_layers(tmp_path / "build", f"{registry.host}/lazypull-runtime/hostile:v1", [bad])
    root = tmp_path / "root"
    result = lazypull(root, "--snapshotter=overlayfs", "--insecure-registry", "run", "--rm", name, "true")
    assert result.returncode == 1
    message = result.stderr.decode()
    assert "layer sha256:" in message and "'../../../../escaped'" in message and "'..'" in message
    assert not list(tmp_path.glob("**/escaped")) and not Path("/escaped").exists()
    assert not (root / "snapshots").exists() or not list((root / "snapshots").glob("*/fs"))
    assert mounts_under(root) == []
    assert [p.name for p in (root / "containers").glob("*") if p.name != ".lock"] == []


def test_rm_of_a_running_container(tmp_path: Path, busybox_image: str) -> None:
    env = dict(os.environ, LAZYPULL_ROOT=str(tmp_path))
    argv = ["--snapshotter=overlayfs", "--insecure-registry", "run", "--name", "busy", busybox_image,
            "sleep", "600"]
    proc = subprocess.Popen([sys.executable, "-m", "lazypull", *argv], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while b"Running" not in lazypull(tmp_path, "ps").stdout:
            assert time.monotonic() < deadline and proc.poll() is None, "the container never ran"
            time.sleep(0.3)
        refused = lazypull(tmp_path, "rm", "busy")
        assert refused.returncode == 1 and b"is running" in refused.stderr
        assert lazypull(tmp_path, "rm", "-f", "busy").returncode == 0
        assert proc.wait(timeout=30) == 128 + signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert mounts_under(tmp_path) == []
    assert [p.name for p in (tmp_path / "containers").iterdir() if p.name != ".lock"] == []


def test_interactive_tty(tmp_path: Path, busybox_image: str) -> None:
    """``run -it`` from a terminal: keystrokes reach the shell, its output and status come back."""
    import pty

    master, slave = pty.openpty()
    env = dict(os.environ, LAZYPULL_ROOT=str(tmp_path), TERM="xterm")
    argv = ["--snapshotter=overlayfs", "--insecure-registry", "run", "-it", "--rm", "-u", "0",
            busybox_image, "sh"]
    proc = subprocess.Popen([sys.executable, "-m", "lazypull", *argv], env=env, cwd=REPO_ROOT,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    output = b""
    try:
        os.write(master, b"test -t 0 && echo tty-$((6*7)); exit 3\n")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    output += os.read(master, 4096)
                except OSError:
                    break
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert code == 3, output.decode(errors="replace")
    assert b"tty-42" in output
    assert mounts_under(tmp_path) == []


def test_detached_run_logs_stop(tmp_path: Path, busybox_image: str) -> None:
    base = ["--snapshotter=overlayfs", "--insecure-registry"]
    started = lazypull(tmp_path, *base, "run", "-d", "--name", "bg", busybox_image,
                       "sh", "-c", "echo started; exec sleep 600")
    assert started.returncode == 0, started.stderr.decode()
    assert len(started.stdout.decode().strip()) == 64
    deadline = time.monotonic() + 30
    while b"started" not in lazypull(tmp_path, "logs", "bg").stdout:
        assert time.monotonic() < deadline, "no output in the log"
        time.sleep(0.3)
    assert "Running" in lazypull(tmp_path, "ps").stdout.decode()
    assert lazypull(tmp_path, "stop", "-t", "1", "bg").returncode == 0
    deadline = time.monotonic() + 30
    while "Exited (137)" not in lazypull(tmp_path, "ps", "-a").stdout.decode():
        assert time.monotonic() < deadline, "the supervisor did not record the exit"
        time.sleep(0.3)
    assert mounts_under(tmp_path) == []
    assert lazypull(tmp_path, "rm", "bg").returncode == 0

    # -d --rm: gone once it exited; a failing start is reported.
    quick = lazypull(tmp_path, *base, "run", "-d", "--rm", busybox_image, "true")
    assert quick.returncode == 0, quick.stderr.decode()
    deadline = time.monotonic() + 30
    while [p for p in (tmp_path / "containers").iterdir() if p.name != ".lock"]:
        assert time.monotonic() < deadline, "run -d --rm left the container"
        time.sleep(0.3)
    broken = lazypull(tmp_path, *base, "run", "-d", busybox_image, "/no/such/binary")
    assert broken.returncode == 1 and b"did not start" in broken.stderr
    assert mounts_under(tmp_path) == []
