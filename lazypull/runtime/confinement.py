"""What confines a container's processes: capabilities, seccomp, no_new_privs, masked /proc and /sys
paths, devices; the defaults Docker and nerdctl give, and their flags to change them.

lazypull runs containers as root on shared nodes, so a container gets Docker's default confinement
unless asked otherwise: Docker's 14 capabilities, its default seccomp profile (resolved against those
capabilities), its masked and read-only paths, and only the default devices. ``--cap-add``/
``--cap-drop``, ``--security-opt seccomp=|no-new-privileges|systempaths=`` and ``--privileged`` change
that the way ``docker run``/``nerdctl run`` do, with their error texts for bad values
(``apparmor=unconfined`` and ``label=disable`` are accepted: no LSM profile is applied anyway).
"""

from __future__ import annotations

import functools
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lazypull.errors import ContainerError
from lazypull.runtime.seccomp import SeccompProfile, default_profile, load_profile, resolve

# Linux capabilities by number (linux/capability.h).
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
    "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
# Docker's (and nerdctl's) default set.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
    "CAP_KILL", "CAP_AUDIT_WRITE",
)
# Docker's masked paths (an empty file or tmpfs is mounted over them) and read-only ones.
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats",
    "/sys/devices/virtual/powercap", "/sys/firmware",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# Host /dev entries a privileged container does not get as devices (runc's own list).
_SKIPPED_DEV_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})
_TRUE = ("1", "t", "T", "TRUE", "true", "True")      # what Go's strconv.ParseBool reads, as nerdctl
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
# --security-opt values asking for no AppArmor profile or SELinux label: what every container gets here.
_NO_LSM = frozenset({("apparmor", "unconfined"), ("label", "disable")})
ALL = "ALL"


@dataclass(frozen=True)
class Confinement:
    """How a container is confined; each default is Docker's.

    ``cap_add``/``cap_drop``: canonical names (``CAP_...``) or ``ALL``. ``seccomp``: a profile read from a
    file, ``unconfined``, or ``builtin`` (the default profile, read when a spec needs it; refused on a
    machine it does not cover). ``system_paths``: mask and make read-only
    Docker's /proc and /sys paths (``systempaths=unconfined`` turns it off). ``privileged``: every
    capability, no seccomp, no masked paths, /sys and cgroups writable, every host device.
    """

    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    seccomp: SeccompProfile | Literal["builtin", "unconfined"] = "builtin"
    no_new_privileges: bool = False
    system_paths: bool = True

    def capabilities(self) -> list[str]:
        """The container's capability set (bounding, effective and permitted), as Docker computes it."""
        if self.privileged:
            return available_capabilities()
        if ALL in self.cap_add:
            return [c for c in available_capabilities() if c not in self.cap_drop]
        base = [] if ALL in self.cap_drop else [c for c in DEFAULT_CAPABILITIES if c not in self.cap_drop]
        return base + [c for c in dict.fromkeys(self.cap_add) if c not in base]

    def seccomp_spec(self, capabilities: Iterable[str]) -> dict[str, Any] | None:
        """``linux.seccomp`` for a container holding ``capabilities``; None when unconfined."""
        if self.privileged or self.seccomp == "unconfined":
            return None
        if self.seccomp == "builtin":
            return resolve(default_profile(), set(capabilities), builtin=True)
        return resolve(self.seccomp, set(capabilities))

    def masked_paths(self) -> list[str]:
        if self.privileged or not self.system_paths:
            return []
        return [*MASKED_PATHS, *_thermal_throttle_paths()]

    def readonly_paths(self) -> list[str]:
        return [] if self.privileged or not self.system_paths else list(READONLY_PATHS)


def _thermal_throttle_paths() -> list[str]:
    """Each CPU's ``thermal_throttle`` directory that exists here (Docker masks them too: their
    counters told other containers' activity)."""
    cpus = Path("/sys/devices/system/cpu")
    try:
        names = sorted(p.name for p in cpus.iterdir() if p.name.startswith("cpu") and p.name[3:].isdigit())
    except OSError:
        return []
    return [str(cpus / n / "thermal_throttle") for n in names if (cpus / n / "thermal_throttle").exists()]


@functools.cache
def available_capabilities() -> list[str]:
    """Every capability this kernel has and this process may pass on (its bounding set)."""
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = len(CAPABILITIES) - 1
    bounding = (1 << (last + 1)) - 1
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapBnd:"):
                bounding = int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return [name for number, name in enumerate(CAPABILITIES[:last + 1]) if bounding >> number & 1]


def normalize_capabilities(values: Iterable[str]) -> tuple[str, ...]:
    """``--cap-add``/``--cap-drop`` values (comma-separated lists too) as ``CAP_`` names or ``ALL``.

    Case does not matter and ``CAP_`` may be left out, as with Docker; an unknown name, or one this
    kernel lacks, is refused with Docker's text.
    """
    result: list[str] = []
    for value in values:
        for item in value.split(","):
            name = item.strip().upper()
            if not name:
                continue
            if name != ALL and not name.startswith("CAP_"):
                name = "CAP_" + name
            if name != ALL and name not in CAPABILITIES:
                raise ContainerError(f"unknown capability: {_quoted(name)}")
            if name != ALL and name not in available_capabilities():
                raise ContainerError("capability not supported by your kernel or not available in the "
                                     f"current environment: {_quoted(name)}")
            result.append(name)
    return tuple(dict.fromkeys(result))


def parse_security_opts(values: Iterable[str]) -> dict[str, str | None]:
    """``--security-opt KEY[=VALUE]`` as a mapping (the last one given for a key wins, as nerdctl);
    a key given without a value maps to None.

    ``KEY:VALUE`` is read as Docker reads it (its older separator, still written by compose files)
    when the option holds no ``=``. ``apparmor=unconfined`` and ``label=disable`` ask for no LSM
    profile, which is what every container here gets: accepted, and left out of the mapping; any
    other AppArmor profile or SELinux label is refused, as there is no LSM to apply it.
    """
    options: dict[str, str | None] = {}
    for value in values:
        separator = "=" if "=" in value else ":"
        key, found, rest = value.partition(separator)
        if (key, rest) in _NO_LSM:
            continue
        if key in ("apparmor", "label"):
            raise ContainerError(f"unsupported security-opt: {_quoted(value)} (lazypull applies no "
                                 "AppArmor or SELinux profile: only apparmor=unconfined and label=disable)")
        if key not in ("seccomp", "no-new-privileges", "systempaths"):
            raise ContainerError(f"unknown security-opt: {_quoted(key)} (lazypull supports seccomp=, "
                                 "no-new-privileges, systempaths=unconfined, apparmor=unconfined and "
                                 "label=disable)")
        options[key] = rest if found else None
    return options


def parse_confinement(*, privileged: bool = False, cap_add: Iterable[str] = (), cap_drop: Iterable[str] = (),
                      security_opts: Iterable[str] = ()) -> Confinement:
    """The :class:`Confinement` that ``run``/``create`` flags ask for (the seccomp profile file is read
    and checked here, before anything is pulled)."""
    options = parse_security_opts(security_opts)
    seccomp: SeccompProfile | Literal["builtin", "unconfined"] = "builtin"
    value = options.get("seccomp", "builtin")
    if not value:       # seccomp= and a bare seccomp
        raise ContainerError('invalid security-opt "seccomp"')
    if value not in ("builtin", "unconfined"):
        seccomp = load_profile(value)
    elif value == "unconfined":
        seccomp = "unconfined"
    nnp_value = options.get("no-new-privileges", "false")
    if nnp_value in _FALSE:
        no_new_privileges = False
    elif nnp_value is None or nnp_value in _TRUE:     # a bare no-new-privileges means true
        no_new_privileges = True
    else:       # what Go's ParseBool refuses, the empty value of no-new-privileges= too
        raise ContainerError(f'invalid "no-new-privileges" value: {_quoted(nnp_value)}: use true or false')
    system_paths = True
    if "systempaths" in options:
        if options["systempaths"] != "unconfined":
            raise ContainerError('invalid security-opt "systempaths=unconfined"')
        system_paths = False
    return Confinement(privileged=privileged, cap_add=normalize_capabilities(cap_add),
                       cap_drop=normalize_capabilities(cap_drop), seccomp=seccomp,
                       no_new_privileges=no_new_privileges, system_paths=system_paths)


def host_devices(top: Path = Path("/dev")) -> list[dict[str, Any]]:
    """The host's character and block devices under ``top`` as runtime-spec devices (``--privileged``),
    skipping what runc skips (pts, shm, mqueue, fd, /dev/console)."""
    devices = []
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                if entry.name not in _SKIPPED_DEV_DIRS:
                    pending.append(path)
                continue
            if path == top / "console" or not (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)):
                continue
            devices.append({"path": str(path), "type": "c" if stat.S_ISCHR(info.st_mode) else "b",
                            "major": os.major(info.st_rdev), "minor": os.minor(info.st_rdev),
                            "fileMode": stat.S_IMODE(info.st_mode), "uid": info.st_uid, "gid": info.st_gid})
    return devices


def _quoted(text: str) -> str:
    """``text`` in double quotes, as Go's %q writes the names nerdctl and Docker quote."""
    return json.dumps(text if len(text) <= 80 else text[:80] + "...")


__all__ = ["CAPABILITIES", "DEFAULT_CAPABILITIES", "MASKED_PATHS", "READONLY_PATHS", "Confinement",
           "available_capabilities", "host_devices", "normalize_capabilities", "parse_confinement",
           "parse_security_opts"]
