"""Issue 9, finding 1: the store is root's alone.

A hostile image holds a setuid-root program (mode 04755, uid 0) and a 0666 character device. After a
pull (lazy or full), the local user ``nobody`` must not get euid 0 from the program, open the device,
read cached chunks or blobs, nor list the store. Layer mounts are nosuid,nodev (checked through a file
descriptor that bypasses the 0700 directories); a container still sees setuid and devices work, as
under docker, because overlayfs honours its own mount's flags. A store left 0755 by older versions is
narrowed by the next command or server start.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import Entry, busybox_entries, make_tar
from tests.snapshot.layerkit import push_image

REPO_ROOT = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
NOBODY_STATUS = 65534 & 0xFF        # the probe's exit status when its euid is nobody's
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
PRIVATE = ("content", "snapshots", "cache", "containers", "run")     # and the root itself


def euid_probe() -> bytes:
    """A static ELF program that exits with its effective uid (mod 256): 0 means it ran as root."""
    machine = platform.machine()
    if machine in ("x86_64", "amd64"):
        e_machine = 62      # mov eax,107 (geteuid); syscall; mov edi,eax; mov eax,60 (exit); syscall
        code = bytes.fromhex("b86b000000" "0f05" "89c7" "b83c000000" "0f05")
    elif machine in ("aarch64", "arm64"):
        e_machine = 183     # mov x8,#175 (geteuid); svc 0; mov x8,#93 (exit); svc 0
        code = b"".join(struct.pack("<I", word) for word in (0xD28015E8, 0xD4000001, 0xD2800BA8, 0xD4000001))
    else:
        pytest.skip(f"no euid probe for {machine}")
    base, start = 0x400000, 64 + 56
    size = start + len(code)
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 2, e_machine, 1, base + start, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return header + program + code


@pytest.fixture(scope="module")
def hostile_image(registry: RegistryServer) -> str:
    """An eStargz image: busybox, ``/probe`` setuid root, ``/srv/null`` a 0666 char device (1:3)."""
    from lazypull.format import BuildOptions, build

    tar = make_tar(busybox_entries(extra=[
        Entry("probe", data=euid_probe(), mode=0o4755),
        Entry("srv", "dir"),
        Entry("srv/null", "char", mode=0o666, devmajor=1, devminor=3),
    ]))
    out = io.BytesIO()
    result = build(io.BytesIO(tar), out, BuildOptions())
    push_image(registry.url, "security/store", "hostile",
               [(out.getvalue(), OCI_GZIP, dict(result.annotations), result.diff_id)])
    return f"{registry.host}/security/store:hostile"


def lazypull(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    return subprocess.run([sys.executable, "-m", "lazypull", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=timeout)


def as_nobody(*argv: str, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``argv`` run by user nobody. Through ``sh``: setpriv itself execs with root's capabilities still
    in effect (so it could walk into 0700 directories), a shell it started has none."""
    return subprocess.run([*NOBODY, "sh", "-c", 'exec "$0" "$@"', *argv], capture_output=True, text=True,
                          pass_fds=pass_fds, timeout=60)


def _stop(root: Path) -> None:
    from lazypull.runtime.overlay import mountpoints, unmount
    from lazypull.snapshot import MountClient

    if (root / "run" / "lazypull.sock").exists():
        with contextlib.suppress(Exception):
            MountClient(root, autostart=False).shutdown()
    for point in sorted((m for m in mountpoints() if m.startswith(str(root) + "/")), key=len, reverse=True):
        with contextlib.suppress(Exception):
            unmount(Path(point))


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is 0700, which would hide the store)."""
    path = Path(tempfile.mkdtemp(prefix="lazypull-security-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    for root in path.iterdir():
        _stop(root)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def stopped(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for root in tmp_path.iterdir():
        if root.is_dir():
            _stop(root)


def _layer_dirs(root: Path) -> list[Path]:
    return [p / "fs" for p in (root / "snapshots").iterdir() if (p / "fs" / "probe").exists()]


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode)
            for p in [root, *(root / name for name in PRIVATE)] if p.exists()}


@pytest.mark.parametrize("snapshotter", ["stargz", "overlayfs"])
def test_nobody_cannot_reach_a_pulled_store(open_dir: Path, hostile_image: str, snapshotter: str) -> None:
    root = open_dir / "root"
    pulled = lazypull(root, f"--snapshotter={snapshotter}", "pull", hostile_image)
    assert pulled.returncode == 0, pulled.stderr
    (layer,) = _layer_dirs(root)
    probe = layer / "probe"
    assert stat.S_IMODE(probe.stat().st_mode) == 0o4755 and probe.stat().st_uid == 0
    assert probe.read_bytes() == euid_probe()        # lazily: brings the chunk into the cache

    listing = as_nobody("ls", str(root))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    run = as_nobody(str(probe))
    assert run.returncode != 0 and "Permission denied" in run.stderr
    device = as_nobody("sh", "-c", f"echo x > {layer / 'srv' / 'null'}")
    assert device.returncode != 0 and "Permission denied" in device.stderr
    stored = [Path(d, f) for top in ("cache", "content") for d, _, names in os.walk(root / top)
              for f in names]
    assert stored, "the pull stored nothing to try"
    for path in stored:
        read = as_nobody("cat", str(path))
        assert read.returncode != 0 and "Permission denied" in read.stderr, path
    assert set(_modes(root).values()) == {0o700}, _modes(root)


def test_layer_mounts_are_nosuid_nodev_containers_keep_setuid(stopped: Path, hostile_image: str) -> None:
    """Through a file descriptor (as if a path leaked out of the store) the layer's setuid program runs
    without privilege and its device does not open; in a container both work as under docker."""
    root = stopped / "root"
    pulled = lazypull(root, "--snapshotter=stargz", "pull", hostile_image)
    assert pulled.returncode == 0, pulled.stderr
    (layer,) = _layer_dirs(root)
    options = next(line.split()[5] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                   if line.split()[4] == str(layer))
    assert {"ro", "nosuid", "nodev"} <= set(options.split(",")), options

    probe_fd = os.open(layer / "probe", os.O_PATH)
    device_fd = os.open(layer / "srv" / "null", os.O_PATH)
    try:
        leaked = as_nobody(f"/proc/self/fd/{probe_fd}", pass_fds=(probe_fd,))
        assert leaked.returncode == NOBODY_STATUS, leaked.stderr
        opened = as_nobody("sh", "-c", f"echo x > /proc/self/fd/{device_fd}", pass_fds=(device_fd,))
        assert opened.returncode != 0 and "Permission denied" in opened.stderr
    finally:
        os.close(probe_fd)
        os.close(device_fd)

    inside = lazypull(root, "run", "--rm", "-u", "65534", hostile_image, "/probe")
    assert inside.returncode == 0, inside.stderr       # euid 0 inside, as docker runs it
    written = lazypull(root, "run", "--rm", "-u", "65534", hostile_image,
                       "sh", "-c", "echo x > /srv/null && echo written")
    assert (written.returncode, written.stdout) == (0, "written\n"), written.stderr


def _widen(root: Path) -> None:
    """What today's code left: the root and its directories 0755, files 0644."""
    for name in ("content/blobs/sha256", "snapshots/0123/fs", "cache/chunks", "containers", "run"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "cache" / "chunks" / "ab").write_bytes(b"secret chunk")
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)


def test_a_wide_store_is_narrowed_at_start(open_dir: Path) -> None:
    root = open_dir / "root"
    _widen(root)
    assert as_nobody("cat", str(root / "cache" / "chunks" / "ab")).stdout == "secret chunk"
    listed = lazypull(root, "images")                  # any command opening the store
    assert listed.returncode == 0, listed.stderr
    assert set(_modes(root).values()) == {0o700}, _modes(root)
    read = as_nobody("cat", str(root / "cache" / "chunks" / "ab"))
    assert read.returncode != 0 and "Permission denied" in read.stderr

    _widen(root)                                        # the mount server's start narrows it too
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    server = subprocess.Popen([sys.executable, "-m", "lazypull", "daemon"], env=env, cwd=REPO_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (root / "run" / "lazypull.sock").exists() and server.poll() is None:
            assert time.monotonic() < deadline, "the mount server did not start"
            time.sleep(0.05)
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        assert set(_modes(root).values()) == {0o700}, _modes(root)
    finally:
        _stop(root)
        server.wait(30)
