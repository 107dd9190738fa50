"""``lazypull stats``: CPU, memory and process counts of running containers, read from their cgroups
(as ``nerdctl stats``). The lazy layers' fetch counters are ``lazypull fs stats``."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from lazypull.cli._options import get_options, global_options
from lazypull.errors import ContainerError

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Sample:
    """One reading of a container's cgroup counters."""

    cpu_ns: int           # CPU time used so far, all threads
    memory: int           # bytes charged now
    limit: int | None     # memory limit (None: unlimited)
    pids: int
    when: float           # time.monotonic() of the reading


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def cgroup_paths(pid: int) -> dict[str, str]:
    """controller -> cgroup path of ``pid`` (``""`` is the unified v2 hierarchy)."""
    paths: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def sample(pid: int) -> Sample:
    """The counters of the cgroup(s) ``pid`` is in: cgroup v2, or v1's cpuacct/memory/pids."""
    paths = cgroup_paths(pid)
    v1 = "memory" in paths and (CGROUP_ROOT / "memory").is_dir()
    if v1:
        cpu = _read_int(CGROUP_ROOT / "cpuacct" / paths.get("cpuacct", "/").lstrip("/") / "cpuacct.usage")
        mem_dir = CGROUP_ROOT / "memory" / paths["memory"].lstrip("/")
        memory = _read_int(mem_dir / "memory.usage_in_bytes")
        limit = _read_int(mem_dir / "memory.limit_in_bytes")
        if limit is not None and limit >= 1 << 62:   # v1 says "unlimited" with a huge number
            limit = None
        pids = _read_int(CGROUP_ROOT / "pids" / paths.get("pids", "/").lstrip("/") / "pids.current")
    else:
        base = CGROUP_ROOT / paths.get("", "/").lstrip("/")
        cpu_us = None
        try:
            for line in (base / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    cpu_us = int(value)
        except OSError:
            pass
        cpu = cpu_us * 1000 if cpu_us is not None else None
        memory = _read_int(base / "memory.current")
        limit = _read_int(base / "memory.max")     # "max" is not a number: unlimited
        pids = _read_int(base / "pids.current")
    return Sample(cpu or 0, memory or 0, limit, pids or 0, time.monotonic())


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.2f}{unit}"
        n /= 1024
    return str(n)


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _rows(first: dict[str, Sample], second: dict[str, Sample], names: dict[str, str],
          no_trunc: bool) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for cid, now in second.items():
        before = first.get(cid)
        elapsed = now.when - before.when if before else 0.0
        cpu = 100.0 * (now.cpu_ns - before.cpu_ns) / (elapsed * 1e9) if before and elapsed > 0 else 0.0
        limit = now.limit or _host_memory()
        rows.append({"ID": cid if no_trunc else cid[:12], "Name": names[cid], "CPUPerc": f"{cpu:.2f}%",
                     "MemUsage": f"{_size(now.memory)} / {_size(limit)}",
                     "MemPerc": f"{100.0 * now.memory / limit:.2f}%" if limit else "0.00%",
                     "PIDs": now.pids})
    return rows


@click.command("stats")
@click.option("--no-stream", is_flag=True, help="One reading, then exit (the default off a terminal).")
@click.option("--no-trunc", is_flag=True, help="Do not truncate container ids.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              help="table, or one JSON object per container.")
@click.option("--json", "layers_json", is_flag=True, hidden=True,
              help="(moved) the lazy layers' counters as JSON: use `lazypull fs stats --json`.")
@global_options
@click.argument("containers_", metavar="[NAME|ID...]", nargs=-1)
def stats_command(no_stream: bool, no_trunc: bool, fmt: str, layers_json: bool,
                  containers_: Sequence[str]) -> None:
    """Show CPU, memory and process counts of running containers (from their cgroups).

    The lazy layers' fetch counters, which this command showed before, are `lazypull fs stats`.
    """
    if layers_json:           # scripts written before the move
        from lazypull.cli.stats import layer_stats

        layer_stats(True)
        return
    from lazypull.runtime import Containers

    containers = Containers(get_options().root)
    records = [containers.find(c) for c in containers_] if containers_ else containers.records()
    stream = not no_stream and sys.stdout.isatty()
    while True:
        pids: dict[str, int] = {}
        names: dict[str, str] = {}
        for record in records:
            state = containers.runc.state(record.id)
            if state and state.get("status") == "running" and int(state.get("pid") or 0) > 0:
                pids[record.id] = int(state["pid"])
                names[record.id] = record.name
            elif containers_:
                raise ContainerError(f"container {record.name} is not running")
        first = {cid: sample(pid) for cid, pid in pids.items() if _alive(pid)}
        time.sleep(0.5)     # CPU % is CPU time over a wall-clock interval, as nerdctl measures it
        second = {cid: sample(pid) for cid, pid in pids.items() if _alive(pid)}
        rows = _rows(first, second, names, no_trunc)
        if stream:
            click.echo("\x1b[2J\x1b[H", nl=False)
        if fmt == "json":
            for row in rows:
                click.echo(json.dumps(row))
        else:
            _print_table(rows)
        if not stream:
            return


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _print_table(rows: list[dict[str, object]]) -> None:
    header = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS"]
    table = [header] + [[str(r["ID"]), str(r["Name"]), str(r["CPUPerc"]), str(r["MemUsage"]),
                         str(r["MemPerc"]), str(r["PIDs"])] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


COMMANDS = [stats_command]
