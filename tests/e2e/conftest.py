"""Fixtures for the acceptance tests that walk docs' seed (lazy-pulling-with-stargz.md) command by command.

Everything goes through the real ``lazypull`` command (a fresh process per command, as a user types
it), Debian's docker-registry, real FUSE, overlayfs and runc. One busybox-based image of three
layers is built and pushed once per package (the seed's ``example.com/foo``); a "build" store root
holds it, as ``nerdctl build -t`` would leave it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.images import TarEntrySpec, directory, file, make_oci_layout
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import busybox_specs

REPO_ROOT = Path(__file__).resolve().parents[2]
LAZYPULL = Path(sys.executable).parent / "lazypull"
MOTD = b"hello from layer 2\n"
BIG_SIZE = 2 << 20


def lazypull_binary() -> Path:
    """The console script installed in the virtualenv (what users run)."""
    if not LAZYPULL.is_file():
        pytest.fail(f"the lazypull console script is not installed at {LAZYPULL}")
    return LAZYPULL


def run_lazypull(root: Path, *args: str, stdin: bytes | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``lazypull --root ROOT ARGS...`` in a new process; text output."""
    proc = subprocess.run([str(lazypull_binary()), "--root", str(root), *args], input=stdin,
                          capture_output=True, cwd=REPO_ROOT, timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


def cli(root: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """``lazypull --root ROOT ARGS...`` in this process with click's runner (for commands that need no
    terminal, FUSE or child process of their own: convert, push, images, inspect...)."""
    from click.testing import CliRunner

    from lazypull.cli.main import cli as lazypull_cli

    argv = ["--root", str(root), *args]
    result = CliRunner().invoke(lazypull_cli, argv, input=stdin, prog_name="lazypull")
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["lazypull", *argv], result.exit_code, result.stdout, stderr)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """``result`` if it exited 0, else a failure showing what it printed."""
    assert result.returncode == 0, (f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
                                    f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result


def run_on_terminal(argv: Sequence[str], typed: bytes, *, until: bytes, timeout: float = 60,
                    ) -> tuple[int, bytes]:
    """Run ``argv`` with a pseudo-terminal (80x24) as stdin/stdout/stderr, type ``typed`` once the
    output shows ``until``, and return the exit status and everything it printed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave, cwd=REPO_ROOT,
                            start_new_session=True)
    os.close(slave)
    output = b""
    typed_yet = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not typed_yet and until in output:
                os.write(master, typed)
                typed_yet = True
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:          # EIO: every holder of the slave side has closed it
                    chunk = b""
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{' '.join(argv)} did not finish in {timeout}s; it printed: {output!r}")
    finally:
        os.close(master)
    return code, output


def lazypull_mount_lines(root: Path) -> list[str]:
    """``mount | grep lazypull``, restricted to one store root (other tests may mount alongside)."""
    out = subprocess.run(["mount"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "lazypull" in line and f"{root}/" in line]


def mounts_under(root: Path) -> list[str]:
    """Every mount point (FUSE, overlay, bind) below ``root``."""
    from lazypull.runtime.overlay import mountpoints

    return sorted(m for m in mountpoints() if m.startswith(f"{root}/"))


def clean_root(root: Path) -> None:
    """Stop the root's mount server and runc containers and unmount whatever is left below it."""
    from lazypull.runtime.overlay import unmount
    from lazypull.snapshot import MountClient
    from lazypull.snapshot.client import daemon_pid

    if (root / "run" / "lazypull.sock").exists():
        pid = daemon_pid(root)
        with contextlib.suppress(Exception):
            MountClient(root, autostart=False).shutdown()
        # shutdown only asks: the server unmounts its layers and exits on its own time
        deadline = time.monotonic() + 10
        while pid is not None and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    state = root / "runc"
    if state.is_dir():
        ids = subprocess.run(["runc", "--root", str(state), "list", "-q"], capture_output=True,
                             text=True).stdout.split()
        for container_id in ids:
            subprocess.run(["runc", "--root", str(state), "delete", "-f", container_id], capture_output=True)
    for point in sorted(mounts_under(root), key=len, reverse=True):
        with contextlib.suppress(Exception):
            unmount(Path(point))


@dataclass
class Roots:
    """Fresh store roots (each one a machine that has pulled nothing), cleaned up afterwards."""

    base: Path
    made: list[Path] = field(default_factory=list)

    def new(self, name: str, *, config: str | None = None) -> Path:
        root = self.base / name
        root.mkdir(parents=True)
        if config is not None:
            (root / "config.toml").write_text(config)
        self.made.append(root)
        return root

    def cleanup(self) -> None:
        for root in self.made:
            clean_root(root)


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[Roots]:
    made = Roots(tmp_path)
    yield made
    made.cleanup()


@dataclass(frozen=True)
class SeedImage:
    """The image the walk-through starts from, and what is in it."""

    registry: RegistryServer
    ref: str                      # HOST/e2e/foo:latest: Docker manifest list (amd64, arm64), gzip layers
    repo: str                     # HOST/e2e
    tars: list[bytes]             # the layers' uncompressed tars, bottom first
    diff_ids: list[str]
    layer_digests: list[str]
    config_digest: str            # of the linux/amd64 image
    manifest_digest: str          # of the linux/amd64 image
    root_digest: str              # of the manifest list: the image's digest
    build_root: Path              # a store root that holds ``ref`` (pulled with overlayfs)
    big_file: bytes               # /data/big.bin, incompressible, never read by the tests' commands

    @property
    def host(self) -> str:
        return self.registry.host


def seed_layers(big: bytes) -> list[list[TarEntrySpec]]:
    """busybox; a layer with /srv/motd; a layer with a big incompressible file nobody reads."""
    return [
        busybox_specs(),
        [directory("srv"), file("srv/motd", MOTD), directory("etc"), file("etc/hello", "hi\n")],
        [directory("data"), file("data/big.bin", big), file("data/small.txt", "small\n" * 100)],
    ]


@pytest.fixture(scope="package")
def seed_image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeedImage]:
    """``HOST/e2e/foo:latest`` pushed to the registry, and a store root where it was "built".

    The tests assume this machine is linux/amd64 (the platform every command picks by default).
    """
    from lazypull.image import Layout, Store, copy_into_store
    from lazypull.image.push import push_image
    from lazypull.registry import RegistryClient

    work = tmp_path_factory.mktemp("e2e-seed")
    big = os.urandom(BIG_SIZE)
    ref = f"{registry.host}/e2e/foo:latest"
    # like the seed's ghcr.io images: a list of platforms (the same layers, one config each)
    built = make_oci_layout(work / "layout", seed_layers(big), tag="v1", docker=True,
                            platforms=["linux/amd64", "linux/arm64/v8"],
                            config={"config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]}})
    assert built.image.platform == "linux/amd64"
    layout = Layout(built.path)
    staging = Store(Path(tempfile.mkdtemp(dir=work)))
    copy_into_store(staging, layout.root("v1"), layout, ref, source=None, platforms=None)
    with RegistryClient(insecure=True) as client:
        push_image(staging, client, ref)
    shutil.rmtree(staging.root, ignore_errors=True)
    build_root = work / "build-root"
    build_root.mkdir()
    ok(cli(build_root, "--insecure-registry", "pull", "--snapshotter=overlayfs", ref))
    image = built.image
    yield SeedImage(registry, ref, f"{registry.host}/e2e", image.tars, image.diff_ids, image.layer_digests,
                    image.config_digest, image.manifest_digest, built.root_digest, build_root, big)
    clean_root(build_root)
