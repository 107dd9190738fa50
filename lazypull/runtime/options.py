"""What ``lazypull run`` was asked for, parsed and checked once, before anything is mounted."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.errors import ContainerError
from lazypull.runtime.confinement import Confinement
from lazypull.smallfile import read_small

NETWORK_MODES = ("host", "none")
# An --env-file is a few KEY=VALUE lines; a bound keeps `--env-file /dev/zero` from eating memory.
MAX_ENV_FILE = 1 << 20
# Dot-separated labels of letters, digits and underscores with inner hyphens (1-63 characters); at most
# 64 in all, what the kernel's sethostname accepts (__NEW_UTS_LEN). The kernel and runc take any bytes and
# Docker passes underscores through (``my_app``, a compose service's name): RFC 1123 without ``_`` refused
# names that work everywhere else. Refused still: what would add names or lines to the container's
# /etc/hosts (spaces, newlines, ``#``) or is no name at all (empty labels, edge hyphens, other symbols).
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
MAX_HOSTNAME = 64


@dataclass(frozen=True)
class Volume:
    """A bind mount ``-v SRC:DST[:ro]`` (host path into the container)."""

    source: Path
    destination: str
    readonly: bool = False


@dataclass(frozen=True)
class ContainerOptions:
    """Settings of one container; each default is what ``lazypull run`` uses without the flag.

    ``command``: replaces the image's Cmd (default: the image's Cmd).
    ``entrypoint``: replaces the image's Entrypoint and drops its Cmd (default: the image's).
    ``env``: ``KEY=VALUE`` added after the image's Env, later ones win (default: none).
    ``workdir``: working directory (default: the image's WorkingDir, else ``/``).
    ``user``: ``name|uid[:group|gid]`` (default: the image's User, else root).
    ``tty``/``stdin``: ``-t`` allocates a pseudo-terminal, ``-i`` passes stdin (default: neither).
    ``network``: ``host`` shares the host's network namespace (the default, like nerdctl's
    ``--net=host``: lazypull sets up no bridge), ``none`` gives a new one with loopback only.
    ``hostname``: default the container id's first 12 characters (``none``), the host's name (``host``).
    ``volumes``: bind mounts (default: none). ``read_only``: read-only rootfs (default: writable).
    ``volatile``: the writable layer need not survive a host crash (``--rm``, as podman does): the
    overlay is mounted ``volatile``, so its unmount does not sync the whole upper filesystem (which
    holds the chunk cache's fresh writes too). Default false.
    ``confinement``: capabilities, seccomp, no_new_privs, masked paths (default: Docker's).
    """

    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    stdin: bool = False
    network: str = "host"
    hostname: str | None = None
    volumes: tuple[Volume, ...] = ()
    read_only: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    volatile: bool = False
    confinement: Confinement = field(default_factory=Confinement)

    def __post_init__(self) -> None:
        if self.hostname is not None:
            check_hostname(self.hostname)


def check_hostname(name: str) -> str:
    """``name`` if it is a valid host name (RFC 1123 and ``_``, at most 64 characters), else ContainerError.

    It is written into the container's /etc/hosts and /etc/hostname: a newline or a space there
    would add lines or names of the caller's choosing.
    """
    if not name or len(name) > MAX_HOSTNAME or not all(
            _HOSTNAME_LABEL.fullmatch(label) for label in name.split(".")):
        shown = repr(name) if len(name) <= 80 else repr(name[:80]) + "..."
        raise ContainerError(f"invalid hostname {shown}: use letters, digits, '_', '-' and '.', "
                             f"at most {MAX_HOSTNAME} characters")
    return name


def parse_volume(text: str) -> Volume:
    """``SRC:DST[:ro|rw]`` with an existing absolute (or relative to cwd) host path."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ContainerError(f"invalid volume {text!r}: expected SRC:DST[:ro]")
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise ContainerError(f"invalid volume {text!r}: mode must be ro or rw, not {mode!r}")
    if not parts[1].startswith("/"):
        raise ContainerError(f"invalid volume {text!r}: destination must be an absolute path")
    if not (parts[0].startswith("/") or parts[0].startswith(".")):
        raise ContainerError(f"invalid volume {text!r}: named volumes are not supported, give a host path")
    source = Path(parts[0]).resolve()
    if not source.exists():
        raise ContainerError(f"invalid volume {text!r}: {source} does not exist")
    return Volume(source=source, destination=os.path.normpath(parts[1]), readonly=mode == "ro")


def parse_env(values: Iterable[str], env_files: Iterable[str | Path] = (),
              host_env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """``-e K=V``/``-e K`` (value from our environment, dropped if unset) and ``--env-file`` lines."""
    host_env = os.environ if host_env is None else host_env
    result: list[str] = []

    def add(item: str, where: str) -> None:
        key, sep, _ = item.partition("=")
        if not key or any(c.isspace() for c in key):
            raise ContainerError(f"invalid environment variable {item!r} ({where})")
        if sep:
            result.append(item)
        elif key in host_env:
            result.append(f"{key}={host_env[key]}")

    for path in env_files:
        for number, line in enumerate(read_env_file(path).splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                add(line, f"{path}:{number}")
    for item in values:
        add(item, "-e")
    return tuple(result)


def read_env_file(path: str | Path) -> str:
    """The text of an ``--env-file``: a regular file or a pipe (``<(...)``), UTF-8 without NUL bytes,
    at most :data:`MAX_ENV_FILE` bytes."""
    data = read_small(path, MAX_ENV_FILE, "env file", ContainerError, pipes=True)
    if data is None:
        raise ContainerError(f"cannot read env file {path}: No such file or directory")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ContainerError(f"env file {path} is not UTF-8 text (byte {err.start})") from err
    if "\x00" in text:
        raise ContainerError(f"env file {path} contains a NUL byte (not a text file)")
    return text


def merge_env(base: Iterable[str], extra: Iterable[str]) -> list[str]:
    """``base`` with ``extra`` applied: same key replaces in place, new keys appended."""
    order: list[str] = []
    values: dict[str, str] = {}
    for item in [*base, *extra]:
        key = item.partition("=")[0]
        if key not in values:
            order.append(key)
        values[key] = item
    return [values[key] for key in order]
