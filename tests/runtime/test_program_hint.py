"""``create`` tells the mount server what the container will execute, so that the program (and what it
loads) downloads while the container is still being set up, before its first read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazypull.image.runconfig import RunConfig, run_config
from lazypull.runtime import ContainerOptions
from lazypull.runtime.spec import DEFAULT_PATH, program_hint
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import busybox_specs, push_lazy_image
from tests.runtime.test_cli_run import lazypull, stop_daemon


def test_program_hint_follows_the_runtime_rules() -> None:
    image = run_config({"config": {"Entrypoint": ["/docker-entrypoint.sh"], "Cmd": ["postgres"],
                                   "WorkingDir": "/data", "Env": ["PATH=/opt/bin:/bin", "LANG=C"]}}, "test")
    assert program_hint(image, ContainerOptions()) == {
        "argv0": "/docker-entrypoint.sh", "path": "/opt/bin:/bin", "cwd": "/data"}
    assert program_hint(image, ContainerOptions(entrypoint=("python3",), env=("PATH=/x",), workdir="/w")) \
        == {"argv0": "python3", "path": "/x", "cwd": "/w"}
    assert program_hint(RunConfig(cmd=("sh",)), ContainerOptions()) == {
        "argv0": "sh", "path": DEFAULT_PATH.partition("=")[2], "cwd": "/"}
    assert program_hint(RunConfig(), ContainerOptions()) is None, \
        "no command: nothing to fetch (create fails later)"


def _fetched_ahead(root: Path) -> int:
    out = lazypull(root, "fs", "stats", "--json")
    assert out.returncode == 0, out.stderr.decode()
    return sum(int(layer["fetched_ahead"]) for layer in json.loads(out.stdout)["layers"].values())


@pytest.fixture(scope="module")
def noprefetch_image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    name, _ = push_lazy_image(tmp_path_factory.mktemp("hint-image"),
                              f"{registry.host}/lazypull-runtime/hint:v1", [busybox_specs()])
    return name


@pytest.mark.parametrize(("command", "expected"), [(["busybox", "echo", "hi"], 1), (["no-such-program"], 0)],
                         ids=["program-in-image", "unknown-program"])
def test_create_fetches_the_program_ahead(tmp_path: Path, noprefetch_image: str, command: list[str],
                                          expected: int) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text("background_fetch = false\n")
    try:
        assert lazypull(root, "--insecure-registry", "pull", noprefetch_image).returncode == 0
        assert _fetched_ahead(root) == 0, "nothing is fetched ahead before a container is created"
        created = lazypull(root, "--insecure-registry", "create", "--name", "c1", "-e", "PATH=/bin",
                           noprefetch_image, *command)
        assert created.returncode == 0, created.stderr.decode()
        assert _fetched_ahead(root) == expected
        if expected:
            result = lazypull(root, "start", "--attach", "c1")
            assert (result.returncode, result.stdout) == (0, b"hi\n"), result.stderr.decode()
    finally:
        lazypull(root, "rm", "-f", "c1")
        stop_daemon(root)
