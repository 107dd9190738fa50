"""The top-level command loads subcommand modules on demand (start-up cost), yet knows them all."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import click
from click.testing import CliRunner

import lazypull.cli as cli_pkg
from lazypull.cli.main import COMMAND_MODULES, cli


def _module_commands() -> dict[str, set[str]]:
    """Command name -> the cli modules whose COMMANDS hold it (or whose import adds it to a group)."""
    found: dict[str, set[str]] = {}
    for info in pkgutil.iter_modules(cli_pkg.__path__):
        if info.name.startswith("_") or info.name == "main":
            continue
        module = importlib.import_module(f"lazypull.cli.{info.name}")
        for command in module.COMMANDS:
            assert command.name is not None
            found.setdefault(command.name, set()).add(info.name)
    return found


def test_command_modules_match_the_modules() -> None:
    found = _module_commands()
    assert set(found) == set(COMMAND_MODULES)
    for name, modules in found.items():
        assert modules <= set(COMMAND_MODULES[name]), name
    image = _module_commands()["image"]
    assert image == {"image"}
    group = importlib.import_module("lazypull.cli.image").image_group
    assert isinstance(group, click.Group) and "optimize" in group.commands
    assert "optimize" in COMMAND_MODULES["image"]


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(COMMAND_MODULES)


def test_unknown_command() -> None:
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_version_and_stats_do_not_import_heavy_modules() -> None:
    code = ("import sys\nfrom lazypull.cli.main import main\nsys.argv = ['lazypull', 'stats', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('httpx', 'rich', 'lazypull.format', 'lazypull.runtime',"
            " 'lazypull.cli.run', 'lazypull.cli.image') if m in sys.modules)\nprint('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out


def test_image_optimize_help() -> None:
    result = CliRunner().invoke(cli, ["image", "optimize", "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
