"""Every container start runs ``lazypull create`` and ``start --attach`` as fresh processes: they must
import only what they use (no httpx, rich, format writer, conversion or FUSE server), or each pays
0.1-0.3 s before doing anything.

The commands run for real (registry, mount server, FUSE, runc) under a probe that reports, at exit,
which of the heavy modules the process had imported.
"""

from __future__ import annotations

import ast
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from lazypull.cli.main import COMMAND_MODULES, COMMAND_SUMMARIES, cli, short_help
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import busybox_specs, push_lazy_image

REPO_ROOT = Path(__file__).resolve().parents[2]

# What only pull, push, convert or the mount server need. Measured before these were kept out:
# httpx ~90 ms (it loads rich for its own CLI), rich ~40 ms, format writer + conversion ~35 ms.
HEAVY = (
    "httpx", "rich", "lazypull.format.writer", "lazypull.image.convert", "lazypull.image.pull",
    "lazypull.registry._client", "lazypull.fs.fuse.session", "lazypull.fs.layer", "lazypull.runtime.extract",
)

# What `pull` needs is httpx, but not httpx's own command line (rich, pygments) nor progress bars
# when stderr is not a terminal.
PULL_HEAVY = ("rich", "pygments", "lazypull.format.writer", "lazypull.image.convert",
              "lazypull.fs.fuse.session")

_PROBE = """
import atexit, sys

watched = sys.argv.pop(1).split(",")

def _report() -> None:
    loaded = sorted(m for m in watched if m in sys.modules)
    sys.stderr.write(f"\\nHEAVY-MODULES {loaded}\\n")
    sys.stderr.flush()

atexit.register(_report)
from lazypull.cli.main import main
sys.argv = ["lazypull", *sys.argv[1:]]
main()
"""


def _run(root: Path, *args: str, probe: bool = True,
         heavy: tuple[str, ...] = HEAVY) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``lazypull ARGS`` in a fresh process; with the probe, also which of ``heavy`` it imported."""
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    argv = ([sys.executable, "-c", _PROBE, ",".join(heavy), *args] if probe
            else [sys.executable, "-m", "lazypull", *args])
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
    if not probe:
        return result, []
    marker = [line for line in result.stderr.splitlines() if line.startswith("HEAVY-MODULES ")]
    assert marker, f"the probe did not report (exit {result.returncode}): {result.stderr}"
    return result, ast.literal_eval(marker[-1].removeprefix("HEAVY-MODULES "))


def test_missing_image_fails_before_anything_heavy(tmp_path: Path) -> None:
    """``create --pull=never`` of an absent image: the store lookup alone, and a clear error."""
    result, heavy = _run(tmp_path, "create", "--pull=never", "example.com/absent:1", "true")
    assert result.returncode == 1
    assert "example.com/absent:1 is not in the store" in result.stderr
    assert heavy == []
    assert not (tmp_path / "run" / "daemon.pid").exists(), "a mount server was started for nothing"


def test_lazy_create_start_ps_rm_import_only_what_they_use(tmp_path: Path, registry: RegistryServer) -> None:
    name, _ = push_lazy_image(tmp_path / "build", f"{registry.host}/lazypull-cli/import-cost:esgz",
                              [busybox_specs()])
    root = tmp_path / "root"
    root.mkdir()
    pulled, heavy = _run(root, "--insecure-registry", "pull", "--snapshotter=stargz", name, heavy=PULL_HEAVY)
    assert pulled.returncode == 0, pulled.stderr
    assert heavy == [], f"pull imported {heavy}"
    try:
        created, heavy = _run(root, "--insecure-registry", "create", "--name", "cheap", name,
                              "/bin/busybox", "echo", "hi")
        assert created.returncode == 0, created.stderr
        assert heavy == [], f"create imported {heavy}"
        assert len(created.stdout.strip()) == 64

        listed, heavy = _run(root, "ps", "-a")
        assert listed.returncode == 0 and "cheap" in listed.stdout, listed.stderr
        assert heavy == [], f"ps imported {heavy}"

        started, heavy = _run(root, "start", "--attach", "cheap")
        assert (started.returncode, started.stdout) == (0, "hi\n"), started.stderr
        assert heavy == [], f"start imported {heavy}"

        removed, heavy = _run(root, "rm", "cheap")
        assert removed.returncode == 0, removed.stderr
        assert heavy == [], f"rm imported {heavy}"
    finally:
        from lazypull.snapshot import MountClient

        _run(root, "rm", "-f", "cheap", probe=False)
        with contextlib.suppress(Exception):
            MountClient(root, autostart=False).shutdown()


def test_lazy_run_pulls_through_the_server_importing_only_what_it_uses(tmp_path: Path,
                                                                      registry: RegistryServer) -> None:
    """``run --rm`` of a lazy image not in the store: the mount server pulls it (as ``pull`` asks it
    to), so ``run``, one process for pull, create and start, costs no more than ``create``."""
    name, _ = push_lazy_image(tmp_path / "build", f"{registry.host}/lazypull-cli/import-cost:run",
                              [busybox_specs()])
    root = tmp_path / "root"
    root.mkdir()
    try:
        ran, heavy = _run(root, "--insecure-registry", "run", "--rm", name, "/bin/busybox", "echo", "hi")
        assert (ran.returncode, ran.stdout) == (0, "hi\n"), ran.stderr
        assert heavy == [], f"run imported {heavy}"
        assert "fetching sha256:" in ran.stderr         # nerdctl's lines, off a terminal, as before
    finally:
        from lazypull.snapshot import MountClient

        with contextlib.suppress(Exception):
            MountClient(root, autostart=False).shutdown()


def test_run_refused_before_its_layers_are_asked_for_starts_no_server(tmp_path: Path,
                                                                    registry: RegistryServer) -> None:
    """A pulled image run for a platform it is not for: refused from the store alone, and no mount
    server is started to release a hold nobody took."""
    from lazypull.snapshot import daemon_pid

    name, _ = push_lazy_image(tmp_path / "build", f"{registry.host}/lazypull-cli/import-cost:platform",
                              [busybox_specs()])
    root = tmp_path / "root"
    root.mkdir()
    pulled, _ = _run(root, "--insecure-registry", "pull", name, probe=False)
    assert pulled.returncode == 0, pulled.stderr
    stopped, _ = _run(root, "daemon", "stop", probe=False)
    assert stopped.returncode == 0 and daemon_pid(root) is None, stopped.stdout + stopped.stderr
    ran, _ = _run(root, "run", "--rm", "--pull=never", "--platform", "linux/s390x", name, "true", probe=False)
    assert ran.returncode == 1 and "no match for platform" in ran.stderr, ran.stderr
    assert daemon_pid(root) is None, "a mount server was started for nothing"


@pytest.mark.parametrize("package", ["lazypull.image", "lazypull.registry", "lazypull.runtime",
                                     "lazypull.format", "lazypull.fs", "lazypull.fs.fuse"])
def test_lazy_packages_resolve_every_name_to_its_submodule(package: str) -> None:
    """Importing a package loads none of its submodules; each public name then comes from the
    submodule the package's table names (the same object), and unknown names still fail."""
    code = (
        "import importlib, sys\n"
        f"pkg = importlib.import_module({package!r})\n"
        f"loaded = sorted(m for m in sys.modules if m.startswith({package + '.'!r}))\n"
        "assert loaded == [], loaded\n"
        "for name in pkg.__all__:\n"
        "    source = importlib.import_module(pkg._SOURCES[name], pkg.__name__)\n"
        "    assert getattr(pkg, name) is getattr(source, name), name\n"
        "assert set(pkg._SOURCES) == set(pkg.__all__) <= set(dir(pkg))\n"
        "try:\n"
        "    pkg.no_such_name\n"
        "except AttributeError as err:\n"
        f"    assert 'no_such_name' in str(err) and {package!r} in str(err)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


def test_registry_client_loads_httpx_without_its_command_line() -> None:
    """httpx's own CLI (rich, pygments) is replaced by a placeholder that says why it is missing;
    a process that imported httpx itself first keeps the real one."""
    code = (
        "import sys\n"
        "import lazypull.registry._client\n"
        "import httpx\n"
        "assert 'rich' not in sys.modules and 'pygments' not in sys.modules, sys.modules.keys()\n"
        "assert httpx.Client is lazypull.registry._client.httpx.Client\n"
        "try:\n"
        "    httpx.main()\n"
        "except SystemExit as err:\n"
        "    assert 'lazypull.registry' in str(err), err\n"
        "else:\n"
        "    raise AssertionError('the placeholder main returned')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    code = ("import sys, httpx\nimport lazypull.registry._client\n"
            "assert 'lazypull' not in (sys.modules['httpx._main'].__doc__ or ''), 'placeholder used'\n"
            "assert 'rich' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


def test_help_lists_commands_without_importing_them() -> None:
    """``lazypull --help`` lists every command from COMMAND_SUMMARIES, importing no command module,
    and the list is what click itself prints once every command is loaded."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from lazypull.cli.main import cli\n"
        "result = CliRunner().invoke(cli, ['--help'], terminal_width=80)\n"
        "assert result.exit_code == 0, result.output\n"
        "print(result.output, end='')\n"
        "print('LOADED', sorted(m for m in sys.modules if m.startswith('lazypull.cli.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                         check=True).stdout
    listing, _, loaded = out.rpartition("LOADED ")
    assert ast.literal_eval(loaded.strip()) == ["lazypull.cli._options", "lazypull.cli.main"]
    listed = [line.split()[0] for line in listing.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == sorted(COMMAND_MODULES)

    for width in (60, 80, 120):
        ours, clicks = click.HelpFormatter(width=width), click.HelpFormatter(width=width)
        ctx = click.Context(cli, info_name="lazypull")
        cli.format_commands(ctx, ours)
        click.Group.format_commands(cli, ctx, clicks)       # loads every command module
        assert ours.getvalue() == clicks.getvalue(), width
        if width == 80:
            assert ours.getvalue() in listing


@pytest.mark.parametrize("name", sorted(COMMAND_SUMMARIES))
def test_command_summaries_are_the_commands_own(name: str) -> None:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    for limit in (2, 5, 20, 33, 45, 60, 74, 200):
        assert short_help(COMMAND_SUMMARIES[name], limit) == command.get_short_help_str(limit), (name, limit)


def test_every_command_has_a_summary() -> None:
    assert set(COMMAND_SUMMARIES) == set(COMMAND_MODULES)
