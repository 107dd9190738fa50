"""Entry point of the ``lazypull`` command."""

from __future__ import annotations

import importlib
import logging
import re
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
    "build": ("build",),
    "create": ("run",), "daemon": ("daemon",), "exec": ("run",), "fs": ("stats",),
    "image": ("image", "optimize"), "images": ("image",),
    "layer": ("layer",), "login": ("login",), "logout": ("login",), "logs": ("run",), "ps": ("run",),
    "pull": ("pull",), "push": ("image",), "rm": ("run",), "rmi": ("image",), "run": ("run",),
    "start": ("run",), "stats": ("container_stats",), "stop": ("run",), "store": ("store",),
    "tag": ("image",),
}

# What `lazypull --help` lists for each command (its help's first sentence), so that listing them
# imports none of their modules: that took ~0.3 s. tests/cli/test_import_cost checks these against
# the commands' own help.
COMMAND_SUMMARIES: dict[str, str] = {
    "build": "Build an image from a Dockerfile; its FROM images are mounted lazily.",
    "create": "Create a container of IMAGE (pulled, mounted, ready to start) and print its id.",
    "daemon": "Run the mount server that keeps lazy layers mounted (foreground).",
    "exec": "Run COMMAND in a running container; exits with its status.",
    "fs": "The lazy filesystems: fs stats shows per-layer fetch counters.",
    "image": "Manage images: convert, ls, inspect, rm, tag, push, pull, prune.",
    "images": "List images in the local store.",
    "layer": "Inspect, verify and convert single eStargz / zstd:chunked layer blobs.",
    "login": "Log in to a registry (default Docker Hub) and save the credentials.",
    "logout": "Remove saved credentials for a registry (default Docker Hub).",
    "logs": "Print the output of a container started in the background (run -d, start).",
    "ps": "List containers.",
    "pull": "Pull an image (lazily with --snapshotter=stargz: metadata now, layers on demand).",
    "push": "Push an image from the store to its registry (and its -esgztoc TOC image, if any).",
    "rm": "Remove containers: their writable layer, bundle and layer mounts.",
    "rmi": "Remove images (their blobs go when no image needs them).",
    "run": "Run COMMAND (default: the image's) in a new container of IMAGE; exits with its status.",
    "start": ("Start a created container: in the background (output in ``lazypull logs``), "
              "or attached with -a."),
    "stats": "Show CPU, memory and process counts of running containers (from their cgroups).",
    "stop": "Stop running containers: SIGTERM, then SIGKILL after the grace period.",
    "store": "Serve lazy layers to podman and buildah as an additional layer store mounted at MOUNTPOINT.",
    "tag": "Give the image SOURCE another name TARGET.",
}


def short_help(summary: str, limit: int) -> str:
    """``summary`` cut to ``limit`` characters the way click shortens a command's help."""
    if len(summary) <= limit:
        return summary
    if limit < len("..."):
        return "..."
    import textwrap

    return textwrap.shorten(summary, limit, placeholder="...", break_on_hyphens=False)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _is_reported(err: Exception) -> bool:
    """A LazypullError, a FormatError (whose module is loaded if one was raised) or an OSError (a file
    or directory the command could not use: an unwritable ``--root``, a full disk)."""
    if isinstance(err, (LazypullError, OSError)):
        return True
    fmt = sys.modules.get("lazypull.format")
    return fmt is not None and isinstance(err, fmt.FormatError)


def error_line(err: Exception) -> str:
    """The one line reporting ``err``: an OSError as ``PATH: reason`` (its str() is ``[Errno N] ...``)."""
    if isinstance(err, OSError) and err.strerror:
        where = ": ".join(str(name) for name in (err.filename, err.filename2) if name is not None)
        text = f"{where}: {err.strerror}" if where else err.strerror
    else:
        text = str(err) or type(err).__name__
    # One line, even if a message quotes a newline it was given; other control characters (a
    # terminal escape in a registry's error message) are shown escaped, never sent raw.
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], " ".join(text.split()))


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

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from COMMAND_SUMMARIES, importing no command module (unlike click's)."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            command = self.commands.get(name)
            if command is None and name not in COMMAND_SUMMARIES:
                command = self.get_command(ctx, name)
            if command is not None and command.hidden:
                continue
            rows.append((name, command.get_short_help_str(limit) if command is not None
                         else short_help(COMMAND_SUMMARIES[name], limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as err:
            if not _is_reported(err):
                raise
            if get_options(ctx).debug:
                logging.getLogger("lazypull").exception("failed")
            click.echo(f"lazypull: error: {error_line(err)}", err=True)
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
