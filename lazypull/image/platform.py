"""Platforms of images: parsing ``--platform``, this machine's default, what a config declares.

The ``Platform`` type itself is the registry package's (``os/arch[/variant]``, containerd matching).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lazypull.errors import ImageError
from lazypull.registry import Platform, default_platform


def parse_platform(text: str) -> Platform:
    """Parse ``linux/amd64``, ``linux/arm64/v8`` or ``arm64``; ImageError names a bad value."""
    try:
        return Platform.parse(text)
    except ValueError as err:
        raise ImageError(str(err)) from err


def host_platform() -> Platform:
    """This machine's platform (what ``--platform`` defaults to)."""
    return default_platform()


def config_platform(config: dict[str, Any]) -> Platform:
    """The platform an image config declares (unknown fields stay empty; os defaults to linux)."""
    os_ = config.get("os") if isinstance(config.get("os"), str) else ""
    arch = config.get("architecture") if isinstance(config.get("architecture"), str) else ""
    variant = config.get("variant") if isinstance(config.get("variant"), str) else None
    return Platform(os_ or "linux", arch or "", variant or None)


def platform_label(platform: Platform) -> str:
    """``linux/amd64`` as ``nerdctl images`` prints it; ``linux`` when the architecture is unknown."""
    return "/".join(p for p in (platform.os, platform.architecture, platform.variant or "") if p)


def check_config_platform(config: dict[str, Any], wanted: Sequence[Platform], manifest_digest: str) -> None:
    """Refuse a single-manifest image whose config is for none of the ``wanted`` platforms, as
    containerd does ("no match for platform in manifest"); an index already chose by its entries.

    A config without an architecture cannot be judged and is accepted.
    """
    from lazypull.image.errors import PlatformNotFoundError

    have = config_platform(config)
    if not have.architecture or any(p.matches(have) for p in wanted):
        return
    names = ", ".join(platform_label(p) for p in wanted)
    raise PlatformNotFoundError(f"no match for platform in manifest {manifest_digest}: the image is "
                                f"{platform_label(have)}, not {names}")
