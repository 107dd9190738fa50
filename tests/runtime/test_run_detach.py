"""``run -d`` prints an id only for a container that ran: any failure before it runs is an error (the
supervisor says so on a pipe, whatever the failure and even when ``--rm`` removed its log)."""

from __future__ import annotations

from pathlib import Path

from tests.runtime.test_cli_run import busybox_image, lazypull, mounts_under  # noqa: F401 (fixture)

BASE = ["--snapshotter=overlayfs", "--insecure-registry"]


def _containers(root: Path) -> list[str]:
    return [p.name for p in (root / "containers").iterdir() if p.name != ".lock"]


def test_failed_start_with_rm_is_an_error(tmp_path: Path, busybox_image: str) -> None:  # noqa: F811
    """--rm removes the container (and its log) at once: the failure still reaches run -d."""
    broken = lazypull(tmp_path, *BASE, "run", "-d", "--rm", busybox_image, "/no/such/binary")
    assert broken.returncode == 1 and broken.stdout == b"", broken.stdout
    err = broken.stderr.decode()
    assert "did not start" in err and "/no/such/binary" in err, err
    assert mounts_under(tmp_path) == [] and _containers(tmp_path) == []


def test_a_quick_command_counts_as_started(tmp_path: Path, busybox_image: str) -> None:  # noqa: F811
    """A container that ran and exited before run -d looked is a success, whatever its status."""
    quick = lazypull(tmp_path, *BASE, "run", "-d", "--name", "quick", busybox_image, "sh", "-c", "exit 3")
    assert quick.returncode == 0 and len(quick.stdout.strip()) == 64, quick.stderr.decode()
    rm = lazypull(tmp_path, *BASE, "run", "-d", "--rm", busybox_image, "true")
    assert rm.returncode == 0 and len(rm.stdout.strip()) == 64, rm.stderr.decode()
    assert lazypull(tmp_path, "rm", "-f", "quick").returncode == 0


def test_start_of_a_broken_container_is_an_error(tmp_path: Path, busybox_image: str) -> None:  # noqa: F811
    """start (detached) of a created container whose bundle lost its spec: the reason comes back."""
    created = lazypull(tmp_path, *BASE, "create", "--name", "c", busybox_image, "true")
    assert created.returncode == 0, created.stderr.decode()
    (tmp_path / "containers" / created.stdout.decode().strip() / "config.json").unlink()
    started = lazypull(tmp_path, "start", "c")
    assert started.returncode == 1 and started.stdout == b""
    assert "container c did not start" in started.stderr.decode(), started.stderr.decode()
    assert lazypull(tmp_path, "rm", "-f", "c").returncode == 0
