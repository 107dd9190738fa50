"""Containers: safe layer extraction, overlayfs root filesystems, OCI runtime specs and runc.

``Containers(root)`` creates, runs, lists and removes containers under ``<root>/containers``;
``extract_layer`` turns a non-lazy layer blob into an overlay lower directory.
"""

import typing

from lazypull._lazy import lazy_attributes as _lazy_attributes

if typing.TYPE_CHECKING:
    from lazypull.runtime.container import ContainerRecord as ContainerRecord
    from lazypull.runtime.container import Containers as Containers
    from lazypull.runtime.container import new_container_id as new_container_id
    from lazypull.runtime.extract import ExtractStats as ExtractStats
    from lazypull.runtime.extract import LayerExtractError as LayerExtractError
    from lazypull.runtime.extract import extract_layer as extract_layer
    from lazypull.runtime.extract import extract_layers as extract_layers
    from lazypull.runtime.options import ContainerOptions as ContainerOptions
    from lazypull.runtime.options import Volume as Volume
    from lazypull.runtime.options import parse_env as parse_env
    from lazypull.runtime.options import parse_volume as parse_volume
    from lazypull.runtime.runc import Runc as Runc
    from lazypull.runtime.runc import Stdio as Stdio
    from lazypull.runtime.users import ProcessUser as ProcessUser
    from lazypull.runtime.users import resolve_user as resolve_user

__all__ = [
    "ContainerOptions",
    "ContainerRecord",
    "Containers",
    "ExtractStats",
    "LayerExtractError",
    "ProcessUser",
    "Runc",
    "Stdio",
    "Volume",
    "extract_layer",
    "extract_layers",
    "new_container_id",
    "parse_env",
    "parse_volume",
    "resolve_user",
]

# Public name -> the submodule defining it, imported on first use: start, ps and rm need the container
# records and runc, not layer extraction (zstandard, isal, tarfile).
_SOURCES: dict[str, str] = {
    "ContainerOptions": ".options",
    "ContainerRecord": ".container",
    "Containers": ".container",
    "ExtractStats": ".extract",
    "LayerExtractError": ".extract",
    "ProcessUser": ".users",
    "Runc": ".runc",
    "Stdio": ".runc",
    "Volume": ".options",
    "extract_layer": ".extract",
    "extract_layers": ".extract",
    "new_container_id": ".container",
    "parse_env": ".options",
    "parse_volume": ".options",
    "resolve_user": ".users",
}

if not typing.TYPE_CHECKING:     # mypy sees the imports above, so a misspelt name stays an error
    __getattr__, __dir__ = _lazy_attributes(__name__, globals(), _SOURCES, __all__)
