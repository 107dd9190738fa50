"""``contrib/systemd/lazypull.service``: systemd accepts it (``systemd-analyze verify``: no running
systemd needed) and every lazypull command line in it parses with the CLI's own argument parser, with the
unit's environment (``LAZYPULL_ROOT``)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from lazypull.cli.main import cli

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "contrib" / "systemd" / "lazypull.service"
#: Where the unit expects the console script (its README says to adjust it to ``command -v lazypull``).
INSTALLED = "/usr/local/bin/lazypull"

def _service_settings(text: str) -> list[tuple[str, str]]:
    """(key, value) of the unit's [Service] section in order, continuation lines joined."""
    out: list[tuple[str, str]] = []
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def _verify(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` (Debian's systemd package, scripts/install-deps.sh) of the unit
    ``text``, its lazypull path pointing at this checkout's console script (what an install puts at
    INSTALLED)."""
    script = Path(sys.executable).with_name("lazypull")
    assert script.is_file(), f"{script}: the package's console script is not installed"
    units = tmp_path / "units"
    units.mkdir(exist_ok=True)
    unit = units / "lazypull.service"
    unit.write_text(text.replace(INSTALLED, str(script)))
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """No error and no warning (an unknown key or a bad value is only a warning to systemd)."""
    done = _verify(UNIT.read_text(), tmp_path)
    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).strip() == ""


@pytest.mark.parametrize(("change", "message"), [
    (("KillMode=process", "KillMode=proces"), "Failed to parse kill mode"),
    (("Restart=on-failure", "Restrat=on-failure"), "Unknown key 'Restrat'"),
    (("Type=notify", "Type=notifi"), "Failed to parse service type"),
    ((INSTALLED + " daemon \\", "/usr/local/bin/lazypul daemon \\"), "is not executable"),
])
def test_verify_catches_a_broken_unit(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    """The check above can fail: the same unit with one mistake is reported, naming it."""
    text = UNIT.read_text()
    assert change[0] in text
    done = _verify(text.replace(change[0], change[1], 1), tmp_path)
    assert message in done.stdout + done.stderr, (done.stdout, done.stderr)


def _parse(argv: list[str]) -> click.Context:
    """The innermost context of ``lazypull ARGV`` as the console script parses it (nothing runs)."""
    ctx = cli.make_context("lazypull", list(argv))
    command: click.Command = cli
    while isinstance(command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:
            break
        name, sub, args = command.resolve_command(ctx, rest)
        assert name is not None and sub is not None
        ctx = sub.make_context(name, args, parent=ctx)
        command = sub
    return ctx


def _lazypull_commands(settings: list[tuple[str, str]]) -> dict[str, list[str]]:
    """ExecStart=/ExecStop=... lines that run lazypull: setting -> argv after the program."""
    out = {}
    for key, value in settings:
        if key.startswith("Exec"):
            argv = shlex.split(value.lstrip("-@:+!"))
            if argv[0] == INSTALLED:
                out[key] = argv[1:]
            else:
                assert Path(argv[0]).is_absolute() and Path(argv[0]).exists(), f"{key}: {argv[0]}"
    return out


def test_the_units_command_lines_parse_with_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """ExecStart starts the server with the socket and metrics address the README documents; ExecStop
    keeps the mounts (running containers go on reading across `systemctl restart`); the root is the
    unit's LAZYPULL_ROOT."""
    settings = _service_settings(UNIT.read_text())
    for key, value in settings:
        if key == "Environment":
            name, _, env_value = value.partition("=")
            monkeypatch.setenv(name, env_value)
    commands = _lazypull_commands(settings)
    assert sorted(commands) == ["ExecStart", "ExecStop"]
    start = _parse(commands["ExecStart"])
    assert start.command.name == "daemon"
    assert start.params["containerd_socket"] == "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock"
    assert start.params["metrics_address"] == "127.0.0.1:9810"
    stop = _parse(commands["ExecStop"])
    assert (stop.command.name, stop.params["keep_mounts"], stop.params["force"]) == ("stop", True, False)
    from lazypull.cli._options import get_options

    with stop:
        assert str(get_options(stop).root) == "/var/lib/lazypull"


def test_the_parser_check_can_fail() -> None:
    """A misspelt flag or a stray argument is refused by the same parse."""
    with pytest.raises(click.NoSuchOption):
        _parse(["daemon", "stop", "--keep-mount"])
    with pytest.raises(click.UsageError):
        _parse(["daemon", "--metrics-address"])
