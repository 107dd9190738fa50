"""``lazypull daemon``: run the mount server in the foreground (for systemd, or started by the CLI)."""

from __future__ import annotations

import logging

import click

from lazypull.cli._options import get_options, global_options


@click.command("daemon")
@global_options
def daemon_command() -> None:
    """Run the mount server that keeps lazy layers mounted (foreground)."""
    from lazypull.snapshot.server import run_daemon

    opts = get_options()
    logging.basicConfig(level=logging.DEBUG if opts.debug else logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not opts.debug:   # one line per range request is too much for the log
        logging.getLogger("httpx").setLevel(logging.WARNING)
    opts.root.mkdir(parents=True, exist_ok=True)
    run_daemon(opts.root.resolve())


COMMANDS = [daemon_command]
