"""The lazy filesystem: FUSE server (``fuse``), layer trees (``layer``), chunk cache, config, counters.

``mount_layer`` / ``unmount`` are what the mount server (``lazypull.snapshot``) calls.
"""

import typing

if typing.TYPE_CHECKING:
    from lazypull.fs.mount import clean_stale_mounts as clean_stale_mounts
    from lazypull.fs.mount import lazypull_mounts as lazypull_mounts
    from lazypull.fs.mount import mount_layer as mount_layer
    from lazypull.fs.mount import unmount as unmount

__all__ = ["clean_stale_mounts", "lazypull_mounts", "mount_layer", "unmount"]

# Public name -> the submodule defining it, imported on first use: the mount server's client needs
# lazypull.fs.cache (layer paths) without loading the FUSE server that fs.mount imports.
_SOURCES: dict[str, str] = {
    "clean_stale_mounts": ".mount",
    "lazypull_mounts": ".mount",
    "mount_layer": ".mount",
    "unmount": ".mount",
}

if not typing.TYPE_CHECKING:     # mypy sees the imports above, so a misspelt name stays an error

    def __getattr__(name: str) -> object:
        """Import the submodule defining ``name`` on first use (PEP 562) and keep the name here."""
        source = _SOURCES.get(name)
        if source is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        # __import__ rather than importlib.import_module: -X importtime then lists the submodule
        value = getattr(__import__(__name__ + source, fromlist=[name]), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    """The public API, loaded or not (PEP 562)."""
    return list(__all__)
