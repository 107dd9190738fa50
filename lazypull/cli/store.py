"""``lazypull store``: serve an additional layer store for podman, buildah and CRI-O (docs/podman.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from lazypull.cli._options import get_options, global_options
from lazypull.errors import MountError


@click.command("store")
@click.argument("mountpoint", required=False, type=click.Path(file_okay=False))
@click.option("--stop", is_flag=True, help="Stop serving the store at MOUNTPOINT (unmount it).")
@click.option("--list", "list_", is_flag=True, help="List the stores served, with their layers' use counts.")
@click.option("--grace", type=click.FloatRange(0, 86400), default=60.0, show_default=True,
              help="Seconds a layer podman released stays mounted.")
@global_options
def store_command(mountpoint: str | None, stop: bool, list_: bool, grace: float) -> None:
    """Serve lazy layers to podman and buildah as an additional layer store mounted at MOUNTPOINT."""
    from lazypull.snapshot import MountClient
    from lazypull.store.auth import auth_files

    opts = get_options()
    if list_:
        with MountClient(opts.root, autostart=False) as client:
            click.echo(json.dumps(client.store_request("list_stores"), indent=2, sort_keys=True))
        return
    if mountpoint is None:
        raise click.UsageError("MOUNTPOINT is required")
    point = os.path.abspath(mountpoint)
    if ":" in point or "," in point:
        raise MountError(f"store mountpoint {point!r} contains ':' or ',' (storage.conf cannot name it)")
    if stop:
        with MountClient(opts.root, autostart=False) as client:
            client.store_request("stop_store", mountpoint=point)
        return
    files = [str(f) for f in auth_files()]
    with MountClient(opts.root) as client:
        client.store_request("serve_store", mountpoint=point, insecure=opts.insecure_registries,
                             auth_files=files, grace=grace)
    click.echo(f"serving the additional layer store at {point}; add to the [storage.options] of "
               f"storage.conf (driver \"overlay\"):")
    click.echo(f'additionallayerstores = ["{Path(point)}:ref"]')


COMMANDS = [store_command]
