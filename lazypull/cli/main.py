"""Entry point of the ``lazypull`` command."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from lazypull import __version__
from lazypull.cli._options import get_options, global_options
from lazypull.errors import LazypullError

# Subcommand name -> the cli modules to import for it (in order). Only the invoked command's modules
# are imported: importing all of them (httpx, rich, the format and runtime packages) cost ~0.4 s of
# CPU on every start, three times per container start. tests/cli/test_main checks this against
# the modules' COMMANDS.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "create": ("run",), "daemon": ("daemon",), "image": ("image", "optimize"), "images": ("image",),
    "layer": ("layer",), "login": ("login",), "logout": ("login",), "logs": ("run",), "ps": ("run",),
    "pull": ("pull",), "push": ("image",), "rm": ("run",), "rmi": ("image",), "run": ("run",),
    "start": ("run",), "stats": ("stats",), "stop": ("run",), "tag": ("image",),
}


def _is_reported(err: Exception) -> bool:
    """A LazypullError or a FormatError (whose module is loaded if one was raised)."""
    if isinstance(err, LazypullError):
        return True
    fmt = sys.modules.get("lazypull.format")
    return fmt is not None and isinstance(err, fmt.FormatError)


class _Group(click.Group):
    """Loads subcommand modules on demand; reports lazypull's own errors as one line on stderr and
    exit status 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            for module in COMMAND_MODULES.get(cmd_name, ()):
                _load_module(module)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as err:
            if not _is_reported(err):
                raise
            if get_options(ctx).debug:
                logging.getLogger("lazypull").exception("failed")
            click.echo(f"lazypull: error: {err}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("lazypull: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lazypull")
@global_options
def cli() -> None:
    """Lazy pulling of container images: run before the image is downloaded."""
    opts = get_options()
    logging.basicConfig(
        level=logging.DEBUG if opts.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _load_module(name: str) -> None:
    """Import ``lazypull.cli.<name>`` and add its COMMANDS (once)."""
    module = importlib.import_module(f"lazypull.cli.{name}")
    for command in getattr(module, "COMMANDS", []):
        if command.name not in cli.commands:
            cli.add_command(command)


def main() -> None:
    """Console script."""
    cli(prog_name="lazypull")


if __name__ == "__main__":
    main()
