"""The OCI runtime spec (runc's ``config.json``) of a container, from the image config and run options.

Mounts follow runc's own default spec (``runc spec``); capabilities, seccomp, no_new_privs, masked
and read-only paths and devices are Docker's defaults or what the run flags ask
(:mod:`lazypull.runtime.confinement`). No LSM profile (AppArmor, SELinux) is applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lazypull.errors import ContainerError
from lazypull.image.runconfig import RunConfig
from lazypull.runtime.confinement import host_devices
from lazypull.runtime.options import ContainerOptions, merge_env
from lazypull.runtime.users import ProcessUser

OCI_VERSION = "1.0.2-dev"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _default_mounts(privileged: bool) -> list[dict[str, Any]]:
    """runc's default mounts; /sys and the cgroup tree are read-only unless privileged (as Docker)."""
    ro = [] if privileged else ["ro"]
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", *ro]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", *ro]},
    ]


def process_args(image_config: RunConfig, options: ContainerOptions) -> list[str]:
    """Entrypoint + Cmd with Docker's override rules (``--entrypoint`` drops the image's Cmd)."""
    if options.entrypoint is not None:
        entrypoint = list(options.entrypoint)
        command = list(options.command or ())
    else:
        entrypoint = list(image_config.entrypoint)
        command = list(options.command) if options.command else list(image_config.cmd)
    args = entrypoint + command
    if not args or not args[0]:
        raise ContainerError("no command specified: the image has no Entrypoint or Cmd and none was given")
    return args


def program_hint(image_config: RunConfig, options: ContainerOptions) -> dict[str, str] | None:
    """What the container will execute, where runc looks for it: ``argv0``, the process's ``PATH`` and
    working directory (for fetching the program ahead); None when there is no command."""
    try:
        argv0 = process_args(image_config, options)[0]
    except ContainerError:
        return None
    env = merge_env([DEFAULT_PATH, *image_config.env], options.env)
    path = next(item.partition("=")[2] for item in env if item.startswith("PATH="))
    return {"argv0": argv0, "path": path, "cwd": options.workdir or image_config.working_dir or "/"}


def run_request(options: ContainerOptions) -> dict[str, object]:
    """The run flags that decide what a container executes, for a mount server's ``pull_image``: it
    reads the image config it has just stored and names the program (:func:`requested_program`) in that
    same request, where a ``run`` that pulls would otherwise send ``mount_image`` again only for that."""
    return {"entrypoint": list(options.entrypoint) if options.entrypoint is not None else None,
            "command": list(options.command) if options.command is not None else None,
            "env": list(options.env), "workdir": options.workdir}


def requested_program(config: Mapping[str, Any], image: str, request: Mapping[str, object]
                      ) -> dict[str, str] | None:
    """:func:`program_hint` of an image config document and a :func:`run_request`; ContainerError (or
    the config's ImageError) naming what is malformed."""
    from lazypull.image.runconfig import run_config

    def strings(key: str) -> tuple[str, ...] | None:
        value = request.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ContainerError(f"run request: {key} must be a list of strings")
        return tuple(value)

    workdir = request.get("workdir")
    if workdir is not None and not isinstance(workdir, str):
        raise ContainerError("run request: workdir must be a string")
    options = ContainerOptions(command=strings("command"), entrypoint=strings("entrypoint"),
                               env=strings("env") or (), workdir=workdir)
    return program_hint(run_config(config, image), options)


def process_env(image_config: RunConfig, options: ContainerOptions, user: ProcessUser,
                hostname: str) -> list[str]:
    """Image Env, then our defaults where missing, then ``-e`` values."""
    env = list(image_config.env)
    keys = {item.partition("=")[0] for item in [*env, *options.env]}
    defaults = []
    if "PATH" not in keys:
        defaults.append(DEFAULT_PATH)
    defaults.append(f"HOSTNAME={hostname}")
    if "HOME" not in keys:
        defaults.append(f"HOME={user.home}")
    if options.tty and "TERM" not in keys:
        defaults.append("TERM=xterm")
    return merge_env([*env, *defaults], options.env)


def build_spec(*, image_config: RunConfig, options: ContainerOptions, user: ProcessUser,
               hostname: str, host_files: Mapping[str, Path], console_size: tuple[int, int] | None = None,
               ) -> dict[str, Any]:
    """The runtime spec for a bundle whose root filesystem is the ``rootfs`` directory next to it.

    ``host_files`` maps container paths (``/etc/hosts`` ...) to generated files bind-mounted there.
    ``console_size`` is (rows, columns) of the terminal, with ``tty``.
    """
    cwd = options.workdir or image_config.working_dir or "/"
    if not cwd.startswith("/"):
        raise ContainerError(f"working directory {cwd!r} is not an absolute path")
    confinement = options.confinement
    capabilities = confinement.capabilities()
    process: dict[str, Any] = {
        "terminal": options.tty,
        "user": {"uid": user.uid, "gid": user.gid},
        "args": process_args(image_config, options),
        "env": process_env(image_config, options, user, hostname),
        "cwd": cwd,
        "capabilities": {name: list(capabilities) for name in ("bounding", "effective", "permitted")},
        "noNewPrivileges": confinement.no_new_privileges,
    }
    if user.additional_gids:
        process["user"]["additionalGids"] = list(user.additional_gids)
    if options.tty and console_size is not None:
        process["consoleSize"] = {"height": console_size[0], "width": console_size[1]}

    mounts = _default_mounts(confinement.privileged)
    for destination, source in host_files.items():
        mounts.append({"destination": destination, "type": "bind", "source": str(source),
                       "options": ["rbind", "rprivate"]})
    for volume in options.volumes:
        opts = ["rbind", "rprivate"] + (["ro"] if volume.readonly else [])
        mounts.append({"destination": volume.destination, "type": "bind", "source": str(volume.source),
                       "options": opts})

    namespaces = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    if options.network == "none":
        namespaces.append({"type": "network"})
    elif options.network != "host":
        raise ContainerError(f"unsupported network {options.network!r}: use host or none")

    linux: dict[str, Any] = {
        "resources": {"devices": [{"allow": confinement.privileged, "access": "rwm"}]},
        "namespaces": namespaces,
        "maskedPaths": confinement.masked_paths(),
        "readonlyPaths": confinement.readonly_paths(),
    }
    if confinement.privileged:
        linux["devices"] = host_devices()
    seccomp = confinement.seccomp_spec(capabilities)
    if seccomp is not None:
        linux["seccomp"] = seccomp
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs", "readonly": options.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "annotations": dict(options.labels),
        "linux": linux,
    }
