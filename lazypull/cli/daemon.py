"""``lazypull daemon``: run the mount server in the foreground (for systemd, or started by the CLI)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from lazypull.cli._options import get_options, global_options


@click.command("daemon")
@click.option("--containerd-socket", type=click.Path(dir_okay=False), default=None,
              help="Also serve containerd's snapshots API here (proxy plugin `lazypull`), e.g. "
                   "/run/containerd-lazypull-grpc/containerd-lazypull-grpc.sock.")
@click.option("--cri-image-service", type=click.Path(dir_okay=False), default=None,
              help="Also serve the CRI image service here (the kubelet's --image-service-endpoint), "
                   "forwarding to containerd and keeping each pull's credentials for its lazy reads; "
                   "needs --containerd-socket. E.g. /run/lazypull/cri.sock.")
@click.option("--cri-containerd-socket", type=click.Path(dir_okay=False),
              default="/run/containerd/containerd.sock", show_default=True,
              help="containerd's CRI socket the image service forwards to.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Filesystem settings (TOML); default <root>/config.toml, else /etc/lazypull/config.toml.")
@global_options
def daemon_command(containerd_socket: str | None, cri_image_service: str | None, cri_containerd_socket: str,
                   config_file: str | None) -> None:
    """Run the mount server that keeps lazy layers mounted (foreground)."""
    if cri_image_service and not containerd_socket:
        raise click.UsageError("--cri-image-service needs --containerd-socket (the snapshotter it serves)")
    from lazypull.fs.config import load_config
    from lazypull.image.rootdir import prepare_root
    from lazypull.snapshot.server import run_daemon

    opts = get_options()
    logging.basicConfig(level=logging.DEBUG if opts.debug else logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not opts.debug:   # one line per range request is too much for the log
        logging.getLogger("httpx").setLevel(logging.WARNING)
    prepare_root(opts.root)     # 0700 from the start (the server narrows an older store again)
    config = load_config(opts.root, Path(config_file) if config_file else None)
    socket = Path(containerd_socket) if containerd_socket else None
    cri = (Path(cri_image_service), Path(cri_containerd_socket)) if cri_image_service else None
    run_daemon(opts.root.resolve(), config, containerd_socket=socket,
               insecure_registries=opts.insecure_registries, cri_image_service=cri)


COMMANDS = [daemon_command]
