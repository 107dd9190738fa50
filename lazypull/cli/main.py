"""Entry point of the ``lazypull`` command."""

from __future__ import annotations

import importlib
import logging
import pkgutil

import click

import lazypull.cli as cli_pkg
from lazypull import __version__
from lazypull.cli._options import get_options, global_options
from lazypull.errors import LazypullError
from lazypull.format import FormatError


class _Group(click.Group):
    """Reports lazypull's own errors as one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (LazypullError, FormatError) as err:
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


def _load_commands() -> None:
    for info in pkgutil.iter_modules(cli_pkg.__path__):
        if info.name.startswith("_") or info.name == "main":
            continue
        module = importlib.import_module(f"{cli_pkg.__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            cli.add_command(command)


_load_commands()


def main() -> None:
    """Console script."""
    cli(prog_name="lazypull")


if __name__ == "__main__":
    main()
