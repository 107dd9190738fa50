"""A lazy ``create``/``run`` asks the mount server once: a pull carries the container's run flags, so the
server names the program to fetch ahead itself (no ``mount_image`` after it only for that); an image
already stored is mounted with the program in that one request. Counted on the real client's requests,
in a fresh process under a probe, against the real server, registry and runc."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lazypull.errors import ContainerError
from lazypull.image.runconfig import RunConfig
from lazypull.runtime import ContainerOptions
from lazypull.runtime.spec import program_hint, requested_program, run_request
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import busybox_specs, push_lazy_image
from tests.runtime.test_cli_run import REPO_ROOT, lazypull, stop_daemon

_PROBE = """
import atexit, sys
from lazypull.snapshot.client import MountClient

ops = []
real = MountClient._call

def _call(self, op, **args):
    ops.append(op)
    return real(self, op, **args)

MountClient._call = _call
atexit.register(lambda: sys.stderr.write(f"\\nMOUNT-REQUESTS {ops}\\n"))
from lazypull.cli.main import main
sys.argv = ["lazypull", *sys.argv[1:]]
main()
"""


def _requests(root: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``lazypull ARGS`` in a fresh process; the mount server requests it sent, in order."""
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    result = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, timeout=120)
    marker = [line for line in result.stderr.splitlines() if line.startswith("MOUNT-REQUESTS ")]
    assert marker, f"the probe did not report (exit {result.returncode}): {result.stderr}"
    return result, ast.literal_eval(marker[-1].removeprefix("MOUNT-REQUESTS "))


def _fetched_ahead(root: Path) -> int:
    out = lazypull(root, "fs", "stats", "--json")
    assert out.returncode == 0, out.stderr.decode()
    return sum(int(layer["fetched_ahead"]) for layer in json.loads(out.stdout)["layers"].values())


@pytest.fixture(scope="module")
def image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    name, _ = push_lazy_image(tmp_path_factory.mktemp("requests-image"),
                              f"{registry.host}/lazypull-runtime/requests:v1", [busybox_specs()])
    return name


def test_a_pulling_create_is_one_request_that_fetches_the_program(tmp_path: Path, image: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text("background_fetch = false\n")
    try:
        created, ops = _requests(root, "--insecure-registry", "create", "--name", "c1", "-e", "PATH=/bin",
                                 image, "busybox", "echo", "hi")
        assert created.returncode == 0, created.stderr
        assert ops == ["pull_image"]
        assert _fetched_ahead(root) == 1, "the program was named in the pull's request"
        started = lazypull(root, "start", "--attach", "c1")
        assert (started.returncode, started.stdout) == (0, b"hi\n"), started.stderr.decode()

        again, ops = _requests(root, "--insecure-registry", "create", "--name", "c2", image, "true")
        assert again.returncode == 0, again.stderr
        assert ops == ["mount_image"], "a stored image: mounted (and its program named) in one request"
    finally:
        lazypull(root, "rm", "-f", "c1", "c2")
        stop_daemon(root)


def test_the_run_request_gives_the_program_hint() -> None:
    config = {"config": {"Env": ["PATH=/opt/bin"], "Entrypoint": ["tini"], "Cmd": ["app"],
                         "WorkingDir": "/srv"}}
    image = RunConfig(env=("PATH=/opt/bin",), entrypoint=("tini",), cmd=("app",), working_dir="/srv")
    for options in (ContainerOptions(), ContainerOptions(command=("sh",), env=("PATH=/x",), workdir="/w"),
                    ContainerOptions(entrypoint=("python3",), command=("-c", "1"))):
        request = json.loads(json.dumps(run_request(options)))      # as it crosses the socket
        assert requested_program(config, "img", request) == program_hint(image, options)
    assert requested_program({}, "img", run_request(ContainerOptions())) is None, "no command: nothing"
    with pytest.raises(ContainerError, match=r"^run request: env must be a list of strings$"):
        requested_program(config, "img", {"env": "PATH=/x"})
    with pytest.raises(ContainerError, match=r"^run request: workdir must be a string$"):
        requested_program(config, "img", {"workdir": 1})
