"""A private podman/buildah configuration (tests/podman and bench/podman.py): containers-storage with
its graphroot, runroot and tmp under one directory, the overlay driver and optionally lazypull's
additional layer store; a registries.conf marking the local registry insecure; a containers.conf
without systemd (cgroupfs, file events, host network). Nothing of the system's configuration is used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# The sandbox may lack CAP_SYS_RESOURCE: runc then cannot raise podman's default rlimits.
RUN_FLAGS = ("--net=host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")

__all__ = ["RUN_FLAGS", "remove_engine_dirs", "write_engine_config"]


def write_engine_config(work: Path, registry_host: str, store: Path | None) -> dict[str, str]:
    """storage.conf, registries.conf and containers.conf under ``work``; the environment naming them.

    The runroot and podman's tmp dir are under a short directory in /run (``work/short`` links to it;
    :func:`remove_engine_dirs` deletes it): conmon's attach socket lives in the runroot, and with a
    path longer than a unix socket's 108 bytes podman waits 20 s for every container's exit."""
    work.mkdir(parents=True, exist_ok=True)
    short = Path(tempfile.mkdtemp(prefix="lpp-", dir="/run"))
    (work / "short").symlink_to(short)
    graph, run, tmp = work / "graph", short / "run", short / "tmp"
    for d in (graph, run, tmp):
        d.mkdir(parents=True, exist_ok=True)
    options = f'additionallayerstores = ["{store}:ref"]\n' if store is not None else ""
    (work / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{graph}"\nrunroot = "{run}"\n'
        f"[storage.options]\n{options}")
    (work / "registries.conf").write_text(
        'unqualified-search-registries = []\n'
        f'[[registry]]\nlocation = "{registry_host}"\ninsecure = true\n')
    (work / "containers.conf").write_text(
        '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
        f'events_logfile_path = "{work / "events.log"}"\ntmp_dir = "{tmp}"\n'
        '[containers]\nnetns = "host"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTAINERS_", "REGISTRY_AUTH"))}
    env.update(CONTAINERS_STORAGE_CONF=str(work / "storage.conf"),
               CONTAINERS_REGISTRIES_CONF=str(work / "registries.conf"),
               CONTAINERS_CONF=str(work / "containers.conf"), TMPDIR=str(tmp),
               XDG_RUNTIME_DIR=str(work / "xdg"), HOME=str(work / "home"))
    (work / "xdg").mkdir(exist_ok=True)
    (work / "home").mkdir(exist_ok=True)
    return env


def remove_engine_dirs(work: Path) -> None:
    """Delete the short directory :func:`write_engine_config` made in /run (after podman is done)."""
    link = work / "short"
    if link.is_symlink():
        target = Path(os.readlink(link))
        subprocess.run(["umount", "-R", str(target)], capture_output=True, check=False)
        shutil.rmtree(target, ignore_errors=True)
        link.unlink()
