"""Seccomp profiles in Docker's format, resolved into the ``linux.seccomp`` of a runtime spec.

Docker's profile format is what users' profiles (``--security-opt seccomp=PATH``) are written in, and
the default profile (``seccomp_default.json``, beside this module) is one too: an allowlist whose rules
may apply only on some architectures (``includes.arches``, Docker's names: amd64, x86, x32, arm64,
arm, ppc64le, s390, s390x, riscv64), only when the container holds some capabilities
(``includes.caps``; ``excludes.caps`` for the opposite), or from a kernel version on
(``minKernel``). runc knows none of that, so a profile is resolved here, once the container's
capabilities are known, into the plain OCI form runc reads. A profile already in the plain OCI
form (``architectures``, no conditions) passes through unchanged.

The profile is checked when it is read (types, actions, operators, argument indexes), so a bad file
is one line naming the field, before anything is pulled or mounted, not a runc failure at start.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Collection
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from lazypull.errors import ContainerError
from lazypull.smallfile import read_small

# A profile is a few hundred rules; the bound keeps `seccomp=/dev/zero` or a huge file from eating memory.
MAX_PROFILE = 1 << 20
DEFAULT_PROFILE = "seccomp_default.json"

Action = Literal["SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
                 "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG"]
Operator = Literal["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
                   "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"]
Arch = Literal["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
               "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL",
               "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64",
               "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_RISCV64"]
Flag = Literal["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
               "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
# uname's machine -> (Docker's architecture name used by includes/excludes, the libseccomp native arch).
_MACHINES: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"), "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "i386": ("x86", "SCMP_ARCH_X86"), "i686": ("x86", "SCMP_ARCH_X86"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"), "armv6l": ("arm", "SCMP_ARCH_ARM"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"), "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
}
_U64 = msgspec.Meta(ge=0)   # at most 2^64-1: checked in _decode (msgspec bounds stop at int64)
MAX_U64 = (1 << 64) - 1
_ERRNO = msgspec.Meta(ge=0, le=4095)
_SYSCALL_NAME = msgspec.Meta(pattern=r"^[a-z0-9_]{1,64}$")
_KERNEL = re.compile(r"(\d+)\.(\d+)")


class _Arg(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    index: Annotated[int, msgspec.Meta(ge=0, le=5)]
    value: Annotated[int, _U64]
    op: Operator
    valueTwo: Annotated[int, _U64] = 0


class _Condition(msgspec.Struct, frozen=True):
    caps: list[str] | None = None
    arches: list[str] | None = None
    minKernel: Annotated[str, msgspec.Meta(pattern=r"^\d+\.\d+")] | None = None


class _Rule(msgspec.Struct, frozen=True):
    action: Action
    names: list[Annotated[str, _SYSCALL_NAME]] | None = None
    name: Annotated[str, _SYSCALL_NAME] | None = None
    args: list[_Arg] | None = None
    errnoRet: Annotated[int, _ERRNO] | None = None
    includes: _Condition | None = None
    excludes: _Condition | None = None
    comment: str = ""


class _ArchMap(msgspec.Struct, frozen=True):
    architecture: Arch
    subArchitectures: list[Arch] | None = None


class SeccompProfile(msgspec.Struct, frozen=True):
    """A profile in Docker's format (also the plain OCI form); unknown fields are ignored, as Docker does."""

    defaultAction: Action
    defaultErrnoRet: Annotated[int, _ERRNO] | None = None
    architectures: list[Arch] | None = None
    archMap: list[_ArchMap] | None = None
    flags: list[Flag] | None = None
    syscalls: list[_Rule] | None = None


def load_profile(path: str | Path) -> SeccompProfile:
    """The profile in the file at ``path`` (a regular file of at most 1 MiB), checked."""
    data = read_small(path, MAX_PROFILE, "seccomp profile", ContainerError)
    if data is None:
        raise ContainerError(f'cannot load seccomp profile "{path}": No such file or directory')
    return _decode(data, f'"{path}"')


@functools.cache
def default_profile() -> SeccompProfile:
    """lazypull's default profile (Docker's default semantics), read once from the package."""
    data = resources.files(__package__).joinpath(DEFAULT_PROFILE).read_bytes()
    return _decode(data, "(built-in)")


def _decode(data: bytes, what: str) -> SeccompProfile:
    try:
        profile = msgspec.json.decode(data, type=SeccompProfile)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise ContainerError(f"decoding seccomp profile failed {what}: {err}") from err
    if profile.architectures and profile.archMap:
        raise ContainerError(f"invalid seccomp profile {what}: both 'architectures' and 'archMap' "
                             "are given, use one")
    for number, rule in enumerate(profile.syscalls or ()):
        if rule.name is not None and rule.names:
            raise ContainerError(f"invalid seccomp profile {what}: `$.syscalls[{number}]` has both "
                                 "'name' and 'names', use one")
        for index, arg in enumerate(rule.args or ()):
            if max(arg.value, arg.valueTwo) > MAX_U64:
                raise ContainerError(f"invalid seccomp profile {what}: `$.syscalls[{number}].args[{index}]` "
                                     "holds a value over 2^64-1")
    return profile


def machine() -> str:
    """This host's machine name as uname gives it (``x86_64``, ``aarch64``)."""
    return os.uname().machine


def kernel_release() -> tuple[int, int]:
    """This host's kernel version (major, minor)."""
    return _kernel_version(os.uname().release)


def _kernel_version(text: str) -> tuple[int, int]:
    found = _KERNEL.match(text)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def resolve(profile: SeccompProfile, capabilities: Collection[str], *, host_machine: str | None = None,
            kernel: tuple[int, int] | None = None, builtin: bool = False) -> dict[str, Any]:
    """The runtime spec's ``linux.seccomp`` for a container holding ``capabilities`` (its bounding set).

    Rules whose conditions do not hold here are left out; ``archMap`` becomes the native architecture
    and its companions (x86-64 also runs i386 and x32 code, arm64 also arm, s390x also s390). With
    ``builtin``, a machine the profile has no ``archMap`` entry for is refused: its rules were written for the
    machines listed (an argument rule may differ elsewhere, as clone's does on s390).
    """
    host_machine = host_machine or machine()
    kernel = kernel or kernel_release()
    arch, native = _MACHINES.get(host_machine, (host_machine, ""))
    result: dict[str, Any] = {"defaultAction": profile.defaultAction}
    if profile.defaultErrnoRet is not None:
        result["defaultErrnoRet"] = profile.defaultErrnoRet
    if profile.archMap is not None:
        entry = next((a for a in profile.archMap if a.architecture == native), None)
        if entry is None and builtin:
            raise ContainerError(f"the default seccomp profile does not cover this machine ({host_machine}): "
                                 "give --security-opt seccomp=PATH, or seccomp=unconfined")
        if entry is not None:
            result["architectures"] = [entry.architecture, *(entry.subArchitectures or ())]
    elif profile.architectures:
        result["architectures"] = list(profile.architectures)
    if profile.flags:
        result["flags"] = list(profile.flags)
    syscalls = []
    for rule in profile.syscalls or ():
        if not _applies(rule, arch, set(capabilities), kernel):
            continue
        names = list(rule.names or ()) or ([rule.name] if rule.name else [])
        if not names:
            continue
        syscall: dict[str, Any] = {"names": names, "action": rule.action}
        if rule.errnoRet is not None:
            syscall["errnoRet"] = rule.errnoRet
        if rule.args:
            syscall["args"] = [msgspec.structs.asdict(arg) for arg in rule.args]
        syscalls.append(syscall)
    result["syscalls"] = syscalls
    return result


def _applies(rule: _Rule, arch: str, capabilities: set[str], kernel: tuple[int, int]) -> bool:
    """Docker's rule: every ``includes`` condition holds and no ``excludes`` condition does."""
    if (excludes := rule.excludes) is not None:
        if excludes.arches and arch in excludes.arches:
            return False
        if excludes.caps and capabilities.intersection(excludes.caps):
            return False
        if excludes.minKernel is not None and kernel >= _kernel_version(excludes.minKernel):
            return False
    if (includes := rule.includes) is not None:
        if includes.arches and arch not in includes.arches:
            return False
        if includes.caps and not capabilities.issuperset(includes.caps):
            return False
        if includes.minKernel is not None and kernel < _kernel_version(includes.minKernel):
            return False
    return True


__all__ = ["DEFAULT_PROFILE", "MAX_PROFILE", "SeccompProfile", "default_profile", "load_profile", "resolve"]
