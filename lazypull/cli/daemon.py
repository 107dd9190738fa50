"""``lazypull daemon``: run the mount server in the foreground (for systemd, or started by the CLI);
``lazypull daemon status|stop`` for the one of a store root, ``daemon ls`` / ``stop --all`` for all.

The systemd units and notes are in ``contrib/systemd/`` (see its README).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import click

from lazypull.cli._options import DEFAULT_ROOT, get_options, global_options


@click.group("daemon", invoke_without_command=True)
@click.option("--containerd-socket", type=click.Path(dir_okay=False), default=None,
              help="Also serve containerd's snapshots API here: a [proxy_plugins.stargz] entry of "
                   "type \"snapshot\" in containerd's config.toml (any plugin name works; use it as "
                   "--snapshotter), e.g. /run/containerd-stargz-grpc/containerd-stargz-grpc.sock.")
@click.option("--cri-image-service", type=click.Path(dir_okay=False), default=None,
              help="Also serve the CRI image service here (the kubelet's --image-service-endpoint), "
                   "forwarding to containerd and keeping each pull's credentials for its lazy reads; "
                   "needs --containerd-socket. E.g. /run/lazypull/cri.sock.")
@click.option("--cri-containerd-socket", type=click.Path(dir_okay=False),
              default="/run/containerd/containerd.sock", show_default=True,
              help="containerd's CRI socket the image service forwards to.")
@click.option("--metrics-address", default=None, metavar="HOST:PORT",
              help="Serve Prometheus metrics (fetched bytes, misses, wait latency, cache size, errors) "
                   "at http://HOST:PORT/metrics, e.g. 127.0.0.1:9810.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Filesystem settings (TOML); default <root>/config.toml, else /etc/lazypull/config.toml.")
@click.option("--store", "stores", multiple=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Also serve an additional layer store for podman and buildah at DIR (as `lazypull "
                   "store DIR`; repeatable; docs/podman.md).")
@global_options
def daemon_command(containerd_socket: str | None, cri_image_service: str | None, cri_containerd_socket: str,
                   metrics_address: str | None, config_file: str | None, stores: tuple[str, ...]) -> None:
    """Run the mount server that keeps lazy layers mounted (foreground).

    With a subcommand: ``status`` or ``stop`` the server of the store root instead.
    """
    if click.get_current_context().invoked_subcommand is not None:
        return
    if cri_image_service and not containerd_socket:
        raise click.UsageError("--cri-image-service needs --containerd-socket (the snapshotter it serves)")
    opts = get_options()
    from lazypull.cli._serve import serve

    serve(opts.root, debug=opts.debug, insecure=opts.insecure_registries,
          config_file=Path(config_file) if config_file else None,
          containerd_socket=Path(containerd_socket) if containerd_socket else None,
          cri=(Path(cri_image_service), Path(cri_containerd_socket)) if cri_image_service else None,
          metrics_address=metrics_address, stores=stores)


def _duration(seconds: float) -> str:
    value = int(seconds)
    parts = [(value // 86400, "d"), (value // 3600 % 24, "h"), (value // 60 % 60, "m"), (value % 60, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n] or ["0s"]
    return " ".join(shown[:2])


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


@daemon_command.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@global_options
def status_command(as_json: bool) -> None:
    """Show the store root's mount server: pid, uptime, mounted layers, cache size (exit 1: none runs)."""
    from lazypull.errors import MountError
    from lazypull.snapshot import MountClient

    root = get_options().root
    try:
        with MountClient(root, autostart=False) as client:
            status = client.status()
            mounts = client.list_mounts()
    except MountError:
        if as_json:
            click.echo(json.dumps({"running": False, "root": str(root)}))
        else:
            click.echo(f"no mount server is running for {root}")
        click.get_current_context().exit(1)
    if as_json:
        status["running"] = True
        status["mounts"] = [m.to_json() for m in mounts]
        click.echo(json.dumps(status, indent=1))
        return
    totals = status.get("totals") or {}
    holders = {h for m in mounts for h in m.holders}
    rows = [
        ("pid", str(status.get("pid"))),
        ("root", str(status.get("root"))),
        ("uptime", _duration(float(status.get("uptime") or 0))),
        ("mounted layers", f"{len(mounts)} (held by {len(holders)} containers or images)"),
        ("cache", f"{_size(int(status.get('cache_bytes') or 0))} in {status.get('cache_dir')}"),
        ("fetched", f"{_size(int(totals.get('bytes_fetched') or 0))} in {totals.get('requests', 0)} "
                    f"requests, {totals.get('read_errors', 0)} read errors"),
        ("metrics", f"http://{status['metrics']}/metrics" if status.get("metrics") else "off"),
    ]
    for name, value in rows:
        click.echo(f"{name + ':':<16}{value}")


@daemon_command.command("ls")
@global_options
def ls_command() -> None:
    """List the mount servers running on this machine, one per store root."""
    from lazypull.errors import MountError
    from lazypull.snapshot import MountClient

    rows = [["PID", "ROOT", "UPTIME", "LAYERS", "HOLDERS"]]
    for pid, root in find_servers():
        uptime, layers, holders = "?", "?", "?"
        try:
            with MountClient(root, autostart=False, timeout=10.0) as client:
                uptime = _duration(float(client.status().get("uptime") or 0))
                mounts = client.list_mounts()
            layers, holders = str(len(mounts)), str(len({h for m in mounts for h in m.holders}))
        except MountError:
            pass                # starting, stopping or wedged: still listed
        rows.append([str(pid), str(root), uptime, layers, holders])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


@daemon_command.command("stop")
@click.option("--all", "every", is_flag=True, help="Stop every mount server of this machine (daemon ls).")
@click.option("-f", "--force", is_flag=True,
              help="Stop even while running containers read from its layers (their reads then fail).")
@click.option("--keep-mounts", is_flag=True,
              help="Leave the layer mounts: their reads wait for the next server, which serves them "
                   "again (an upgrade with running containers).")
@click.option("-t", "--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the server to exit.")
@global_options
def stop_command(every: bool, force: bool, keep_mounts: bool, timeout: float) -> None:
    """Stop the mount server of the store root (unmounting its layers) and wait until it is gone.

    Refused while running containers use its layers, unless --force or --keep-mounts.
    """
    from lazypull.errors import MountError
    from lazypull.snapshot import daemon_pid

    if every:
        failed = []
        for server_pid, server_root in find_servers():
            try:
                _stop(server_root, server_pid, force=force, keep_mounts=keep_mounts, timeout=timeout)
            except MountError as err:
                click.echo(f"lazypull: error: {err}", err=True)
                failed.append(server_root)
        if failed:
            click.get_current_context().exit(1)
        return
    root = get_options().root
    pid = daemon_pid(root)
    if pid is None:
        click.echo(f"no mount server is running for {root}")
        return
    _stop(root, pid, force=force, keep_mounts=keep_mounts, timeout=timeout)


def _stop(root: Path, pid: int, *, force: bool, keep_mounts: bool, timeout: float) -> None:
    import time

    from lazypull.errors import MountError
    from lazypull.snapshot import MountClient

    with MountClient(root, autostart=False) as client:
        if not force and not keep_mounts:      # kept mounts go on serving the containers' reads
            running = _running_holders(root, {h for m in client.list_mounts() for h in m.holders})
            if running:
                raise MountError(f"{len(running)} running container(s) of {root} read from the mount "
                                 f"server's layers ({', '.join(c[:12] for c in running)}): stop them "
                                 f"first, or use --force")
        client.shutdown(unmount=not keep_mounts)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise MountError(f"the mount server (pid {pid}) of {root} did not exit within {timeout:.0f}s")
        time.sleep(0.05)
    click.echo(f"stopped the mount server (pid {pid}) of {root}")


def _running_holders(root: Path, holders: set[str]) -> list[str]:
    """The holders that are containers of ``root`` running (or paused) now."""
    from lazypull.runtime import Containers

    ids = sorted(h for h in holders if re.fullmatch(r"[0-9a-f]{64}", h))
    if not ids:
        return []
    runc = Containers(root).runc
    return [c for c in ids if runc.status(c) in ("running", "paused")]


def find_servers() -> list[tuple[int, Path]]:
    """(pid, store root) of every mount server on this machine: processes running ``lazypull daemon``
    (any other subcommand is not a server) whose root's pidfile names them."""
    from lazypull.snapshot import daemon_pid

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        root = _server_root(int(entry), argv)
        if root is not None and daemon_pid(root) == int(entry):
            found.append((int(entry), root))
    return sorted(found, key=lambda item: str(item[1]))


def _server_root(pid: int, argv: list[str]) -> Path | None:
    """The store root of ``lazypull [...] daemon [...]`` from its arguments or environment."""
    names = [i for i, arg in enumerate(argv) if arg == "lazypull" or arg.endswith("/lazypull")]
    if not names or "daemon" not in argv[names[0] + 1:]:
        return None
    for i, arg in enumerate(argv):
        if arg == "--root" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--root="):
            return Path(arg.removeprefix("--root="))
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"LAZYPULL_ROOT="):
            return Path(item.removeprefix(b"LAZYPULL_ROOT=").decode(errors="replace"))
    return Path(DEFAULT_ROOT)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie whose threads are gone does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


COMMANDS = [daemon_command]
