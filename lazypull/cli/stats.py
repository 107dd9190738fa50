"""``lazypull fs stats``: what the mount server fetched, served from cache and prefetched, per layer.

(``lazypull stats`` is the containers' CPU and memory, as nerdctl's; ``stats --json`` still prints
these counters for scripts written before the move.)"""

from __future__ import annotations

import json
from typing import Any

import click

from lazypull.cli._options import get_options, global_options
from lazypull.errors import MountError


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def _background(data: dict[str, Any]) -> str:
    total = int(data.get("background_total") or 0)
    done = int(data.get("background_done") or 0)
    state = str(data.get("background_state", "?"))
    return f"{state} {100 * done // total}%" if total else state


@click.group("fs")
def fs_group() -> None:
    """The lazy filesystems: fs stats shows per-layer fetch counters."""


@fs_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the raw counters as JSON.")
@global_options
def stats_command(as_json: bool) -> None:
    """Per-layer counters of the lazy filesystems: bytes and requests fetched, cache hits, prefetch."""
    layer_stats(as_json)


def layer_stats(as_json: bool) -> None:
    """Print the mount server's per-layer counters (table, or JSON)."""
    from rich.console import Console
    from rich.table import Table

    from lazypull.snapshot import MountClient

    opts = get_options()
    client = MountClient(opts.root, autostart=False)
    try:
        stats = client.stats()
    except MountError as err:
        if as_json:
            click.echo(json.dumps({"layers": {}, "running": False}))
            return
        raise MountError(f"no mount server is running for {opts.root}") from err
    finally:
        client.close()
    if as_json:
        click.echo(json.dumps(stats, indent=2, sort_keys=True))
        return
    table = Table(title=f"lazy layers ({opts.root})")
    for column in ("layer", "fetched", "requests", "cache hits", "misses waited", "errors", "prefetch",
                   "background"):
        table.add_column(column, justify="left" if column in ("layer", "prefetch", "background") else "right")
    for digest, data in sorted(stats.get("layers", {}).items()):
        seconds = data.get("prefetch_seconds")
        prefetch = str(data.get("prefetch_state", "?"))
        if seconds is not None and prefetch == "done":
            prefetch += f" {seconds:.2f}s {_size(int(data.get('prefetch_bytes') or 0))}"
        table.add_row(digest.removeprefix("sha256:")[:12], _size(int(data.get("bytes_fetched") or 0)),
                      str(data.get("requests", 0)), str(data.get("cache_hits", 0)),
                      str(data.get("misses_waited", 0)), str(data.get("read_errors", 0)), prefetch,
                      _background(data))
    console = Console()
    if not console.is_terminal:     # piped: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(table)
    for digest, data in sorted(stats.get("layers", {}).items()):
        for line in data.get("last_errors") or []:
            console.print(f"{digest.removeprefix('sha256:')[:12]}: {line}", markup=False, highlight=False)


COMMANDS = [fs_group]
