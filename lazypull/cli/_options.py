"""Global flags accepted before or after the subcommand, as nerdctl does.

``lazypull --snapshotter=stargz run ...`` and ``lazypull run --snapshotter=stargz ...`` mean the same.
A flag given after the subcommand wins over the same flag given before it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

DEFAULT_ROOT = "/var/lib/lazypull"
SNAPSHOTTERS = ("stargz", "overlayfs", "native")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class GlobalOptions:
    """What the global flags say; one instance per invocation, in ``ctx.obj``."""

    root: Path = field(default_factory=lambda: Path(os.environ.get("LAZYPULL_ROOT", DEFAULT_ROOT)))
    snapshotter: str = "stargz"
    insecure_registries: bool = False
    debug: bool = False
    namespace: str = "default"


def get_options(ctx: click.Context | None = None) -> GlobalOptions:
    """The invocation's global options (created on first use)."""
    ctx = ctx or click.get_current_context()
    root_ctx = ctx.find_root()
    if not isinstance(root_ctx.obj, GlobalOptions):
        root_ctx.obj = GlobalOptions()
    return root_ctx.obj


def _setter(attr: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is None or value is False:
            return
        opts = get_options(ctx)
        if attr == "root":
            value = Path(value)
        setattr(opts, attr, value)

    return callback


def global_options(func: F) -> F:
    """Add the global flags to a group or a command."""
    decorators = [
        click.option("--root", type=click.Path(file_okay=False), default=None, expose_value=False,
                     callback=_setter("root"), is_eager=True,
                     help=f"Store root (default $LAZYPULL_ROOT or {DEFAULT_ROOT})."),
        click.option("--snapshotter", "--storage-driver", type=click.Choice(SNAPSHOTTERS), default=None,
                     expose_value=False, callback=_setter("snapshotter"),
                     help="stargz: lazy pulling (default); overlayfs: full pull."),
        click.option("--insecure-registry", is_flag=True, default=False, expose_value=False,
                     callback=_setter("insecure_registries"),
                     help="Allow plain HTTP, or TLS without verification."),
        click.option("--debug", is_flag=True, default=False, expose_value=False,
                     callback=_setter("debug"), help="Debug logging."),
        click.option("-n", "--namespace", default=None, expose_value=False,
                     callback=_setter("namespace"), help="Namespace (accepted for nerdctl compatibility)."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func
