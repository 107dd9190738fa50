"""What running an image needs from its config (``config.User``, ``Env``, ``Entrypoint``, ``Cmd``,
``WorkingDir``), decoded and type-checked once.

The config is written by the image's author, so every value is checked for its type here (one typed
decoder, msgspec) and refused with the field named (``$.config.Env[0]``) rather than failing later
as a traceback deep in the runtime. ``Entrypoint`` and ``Cmd`` given as a JSON string are one
argument, as Docker reads them (its ``StrSlice``: a string is a one-element list), never split and
never iterated character by character. NUL bytes are refused: no argument, variable or path can hold
one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from lazypull.errors import ImageError


class _ContainerConfig(msgspec.Struct, frozen=True):
    """The ``config`` object as the image spec writes it; unknown fields are ignored."""

    user: str | None = msgspec.field(default=None, name="User")
    env: list[str] | None = msgspec.field(default=None, name="Env")
    entrypoint: str | list[str] | None = msgspec.field(default=None, name="Entrypoint")
    cmd: str | list[str] | None = msgspec.field(default=None, name="Cmd")
    working_dir: str | None = msgspec.field(default=None, name="WorkingDir")


class _ImageConfig(msgspec.Struct, frozen=True):
    config: _ContainerConfig | None = None


@dataclass(frozen=True)
class RunConfig:
    """The image's defaults for a container; empty values mean "not set"."""

    user: str = ""
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""


def _args(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def run_config(config: Mapping[str, Any], what: str) -> RunConfig:
    """The :class:`RunConfig` of an image config document (``ResolvedImage.config``).

    Raises :class:`ImageError` naming ``what`` (the image) and the offending field.
    """
    try:
        decoded = msgspec.convert(config, _ImageConfig).config or _ContainerConfig()
    except msgspec.ValidationError as err:
        raise ImageError(f"{what}: malformed image config: {err}") from err
    result = RunConfig(user=decoded.user or "", env=tuple(decoded.env or ()),
                       entrypoint=_args(decoded.entrypoint), cmd=_args(decoded.cmd),
                       working_dir=decoded.working_dir or "")
    fields = {"User": [result.user], "Env": result.env, "Entrypoint": result.entrypoint,
              "Cmd": result.cmd, "WorkingDir": [result.working_dir]}
    for name, values in fields.items():
        if any("\x00" in value for value in values):
            raise ImageError(f"{what}: malformed image config: a NUL byte in `$.config.{name}`")
    return result


__all__ = ["RunConfig", "run_config"]
