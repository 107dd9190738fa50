"""Containers: safe layer extraction, overlayfs root filesystems, OCI runtime specs and runc.

``Containers(root)`` creates, runs, lists and removes containers under ``<root>/containers``;
``extract_layer`` turns a non-lazy layer blob into an overlay lower directory.
"""

from lazypull.runtime.container import ContainerRecord, Containers, new_container_id
from lazypull.runtime.extract import ExtractStats, LayerExtractError, extract_layer, extract_layers
from lazypull.runtime.options import ContainerOptions, Volume, parse_env, parse_volume
from lazypull.runtime.runc import Runc, Stdio
from lazypull.runtime.users import ProcessUser, resolve_user

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
