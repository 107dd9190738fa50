"""The lazy filesystem's knobs: one frozen dataclass, read from a TOML file.

Looked up at ``<root>/config.toml``, else ``/etc/lazypull/config.toml``; a missing file means the defaults.
Keys are the field names, at the top level or under a ``[fs]`` table::

    prefetch = true
    prefetch_timeout = 10.0
    background_fetch = false
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazypull.errors import MountError

if TYPE_CHECKING:
    from lazypull.registry import NetLimits

SYSTEM_CONFIG = Path("/etc/lazypull/config.toml")


@dataclass(frozen=True)
class FsConfig:
    """Settings of the lazy layer filesystem. Each field's comment gives its default."""

    prefetch: bool = True
    """Fetch everything before ``.prefetch.landmark`` at mount, in one request. Default true."""
    prefetch_timeout: float = 10.0
    """How long a container start waits for the prefetch (with ``prefetch_wait``), in seconds. Default 10."""
    prefetch_wait: bool = False
    """``lazypull create`` / ``run`` wait for their layers' prefetch before the container starts, as
    stargz-snapshotter does. Off by default: the container starts while the prefetch downloads, and a
    read of a prefetched file waits only for the prefetch's data (one download, never a second
    request), so starting the runtime overlaps the transfer. Default false."""
    background_fetch: bool = True
    """After the prefetch, fetch the rest of each layer at low priority. Default true."""
    background_concurrency: int = 2
    """Background requests in flight at once, per layer. Default 2."""
    background_batch: int = 1 << 20
    """Compressed bytes per background request. Default 1 MiB."""
    background_pause: float = 0.5
    """Background fetching pauses while on-demand misses are served and this long after. Default 0.5 s."""
    background_quiet: float = 5.0
    """Background fetching starts (and resumes) only after this long without a mount, prefetch or
    on-demand miss of any layer in the server, as stargz-snapshotter's. Default 5 s."""
    cache_dir: str = ""
    """Chunk cache directory; empty means ``<root>/cache/chunks``. Default empty."""
    cache_max_bytes: int = 0
    """Bound of the chunk cache in bytes: past it the least recently read chunks no open file pins are
    deleted. 0: 10% of the cache's filesystem, at most 10 GiB (``lazypull.fs.cache.default_max_bytes``
    says why). Default 0."""
    read_deadline: float = 30.0
    """A read that cannot get its data from the registry within this long fails with EIO. Default 30 s."""
    retry_initial: float = 0.1
    """First retry delay of a failed fetch, doubled each time up to ``retry_max``. Default 0.1 s."""
    retry_max: float = 2.0
    """Longest delay between retries. Default 2 s."""
    merge_gap: int = 16 << 10
    """Missing ranges closer than this many compressed bytes are fetched as one range. Default 16 KiB."""
    readahead: int = 4 << 20
    """When a file is read sequentially, its following chunks up to this many bytes are fetched ahead
    (0: off). Default 4 MiB."""
    whole_file_max: int = 4 << 20
    """A file whose chunks take at most this many compressed bytes is fetched whole at its first miss,
    in the same request (0: only the chunks read). Default 4 MiB."""
    neighbour_window: int = 8 << 10
    """When a small file (up to 64 KiB compressed) misses, the small files stored within this many
    compressed bytes of it come in the same request (0: off). Default 8 KiB."""
    blob_readahead: int = 0
    """When a small file misses within 64 KiB of another recent miss (a workload walking through a
    directory), the small files stored after it within this many compressed bytes are fetched too, in a
    request of their own that the read does not wait for (``fs.layer.readahead``; at most 1/16 of the
    cache bound; 0: off). Default 0: with 512 KiB, gcc's first start on a 100 Mbit/s link was 0.2 s
    slower (its read-ahead delays cc1's own chunks), postgres's 0.07 s faster (docs/benchmarks.md)."""
    fetch_user_db: bool = True
    """At mount, fetch the layer's /etc/passwd and /etc/group (if small): every container start reads them
    (``lazypull create`` to resolve the user, then runc). Default true."""
    learn_window: float = 10.0
    """For this many seconds after a layer's first access, note which chunks are read, in order, and at
    the layer's next mount with those chunks not cached fetch them first (``fs.layer.learned``; 0: off).
    Default 10."""
    fetch_elf_deps: bool = True
    """When a program's first bytes had to be fetched, also fetch what the dynamic loader opens next (its
    interpreter, ld.so.cache, the libraries it needs, found in the image's layers), all at once.
    Default true."""
    warm_connections: int = 6
    """Keep-alive connections opened to the registry once a layer is mounted (and its prefetch done), so
    the concurrent fetches of a starting container need no handshakes (0: none). Default 6."""
    program_max: int = 64 << 20
    """A program bigger than ``whole_file_max`` that is being started (its exec read, or ``create``'s
    program hint) is fetched whole in the background when it has at most this many bytes (0: never;
    ``LayerTree._fetch_program``). Never above 1/8 of the cache bound. Default 64 MiB."""
    program_budget: int = 256 << 20
    """Bytes each layer fetches at most for programs fetched whole (``program_max``), over its mount:
    a workload starting many big executables (``file /usr/bin/*``) does not pull them all in. Never
    above 1/8 of the cache bound. Default 256 MiB."""
    fetch_workers: int = 8
    """Fetches in flight at once per layer (on-demand misses of different regions). Default 8."""
    passthrough: bool = True
    """Offer assembled local files to the FUSE server for passthrough reads. Default true."""
    net_deadline: float = 0.0
    """Seconds any registry request may take, plus its expected size at ``net_min_rate``
    (``lazypull.registry.NetLimits``, whose defaults 0 keeps: here 60). Default 0."""
    net_min_rate: float = 0.0
    """Bytes per second a registry answer must keep up (0: NetLimits' default, 4096). Default 0."""
    net_rate_window: float = 0.0
    """Seconds over which ``net_min_rate`` is measured (0: NetLimits' default, 10). Default 0."""
    net_down_failures: int = 0
    """Failures in a row that mark a registry down, failing its requests at once (0: NetLimits'
    default, 3). Default 0."""
    net_down_after: float = 0.0
    """...if they span at least this many seconds (0: NetLimits' default, 2). Default 0."""
    net_probe_interval: float = 0.0
    """Seconds between trial requests to a registry marked down (0: NetLimits' default, 0.5). Default 0."""

    def chunk_dir(self, root: Path) -> Path:
        """Where verified chunks are kept."""
        return Path(self.cache_dir) if self.cache_dir else root / "cache" / "chunks"

    def net_limits(self) -> NetLimits:
        """The mount server's registry clients' limits: the ``net_*`` settings, NetLimits' defaults
        for those left at 0."""
        from lazypull.registry import NetLimits

        given = {f.name: getattr(self, f"net_{f.name}") for f in dataclasses.fields(NetLimits)}
        return NetLimits(**{name: value for name, value in given.items() if value})

    def replace(self, **changes: Any) -> FsConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def load_config(root: Path | None = None, path: Path | None = None) -> FsConfig:
    """Read the config file (``path``, else ``<root>/config.toml``, else the system one)."""
    candidates = [path] if path else ([root / "config.toml"] if root else []) + [SYSTEM_CONFIG]
    for candidate in candidates:
        if candidate is not None and candidate.is_file():
            return parse_config(candidate.read_bytes(), str(candidate))
    return FsConfig()


def parse_config(data: bytes, where: str = "config") -> FsConfig:
    """Parse TOML text into an :class:`FsConfig`; unknown keys and wrong types are errors."""
    import tomllib  # here: `lazypull create` reads the config, usually absent (tomllib compiles regexes)

    try:
        doc = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise MountError(f"{where}: not valid TOML: {err}") from err
    fs_table = doc.get("fs", {})
    if not isinstance(fs_table, dict):
        raise MountError(f"{where}: [fs] must be a table")
    table = {k: v for k, v in doc.items() if k != "fs"} | fs_table
    fields = {f.name: f for f in dataclasses.fields(FsConfig)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise MountError(f"{where}: unknown setting {key!r}")
        default = getattr(FsConfig(), key)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise MountError(f"{where}: {key} must be a {type(default).__name__}, not {value!r}")
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise MountError(f"{where}: {key} must not be negative")
        values[key] = value
    if values.get("background_concurrency", 1) < 1 or values.get("fetch_workers", 1) < 1:
        raise MountError(f"{where}: concurrency settings must be at least 1")
    return FsConfig(**values)
