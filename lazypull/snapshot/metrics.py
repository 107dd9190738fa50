"""The mount server's Prometheus endpoint (``lazypull daemon --metrics-address HOST:PORT``).

Text exposition format served by ``prometheus_client`` on its own thread. Values are read from the
server at each scrape (no second set of counters to keep in step): the layers' counters summed over
the server's life (``LayerManager.totals``), the cache-miss wait histogram (``LayerFs.miss_wait``),
the chunk cache's size, and the process's own memory and CPU (``process_*``, for leak watching).
As stargz-snapshotter's ``--metrics-address``, it is meant for a loopback or node-local address.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lazypull.errors import MountError

if TYPE_CHECKING:
    from lazypull.snapshot.manager import LayerManager

# metric name, help, LayerManager.totals() key
_COUNTERS = (
    ("lazypull_fetched_bytes", "Compressed layer bytes received from registries.", "bytes_fetched"),
    ("lazypull_fetch_requests", "Range requests sent to registries.", "requests"),
    ("lazypull_fetch_retries", "Registry requests that failed and were retried.", "retries"),
    ("lazypull_cache_hits", "Chunks served from the chunk cache.", "cache_hits"),
    ("lazypull_read_misses", "Reads that missed the cache and waited on the network.", "misses_waited"),
    ("lazypull_chunks_fetched", "Chunks decoded and verified from fetched bytes.", "chunks_fetched"),
    ("lazypull_verify_failures", "Fetched chunks whose digest did not match.", "verify_failures"),
    ("lazypull_read_errors", "Reads answered with EIO.", "read_errors"),
)
_GAUGES = (
    ("lazypull_mounted_layers", "Layer filesystems mounted now.", "mounted_layers"),
    ("lazypull_holds", "Holds (a container or image keeping an image's layers mounted).", "holds"),
    ("lazypull_released_trees_alive", "Unmounted layer trees not yet freed (stays near 0).",
     "released_trees_alive"),
)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; ``:PORT`` is loopback; port 0: any free one) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise MountError(f"metrics address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9810")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    return host, int(port)


class _Collector:
    """Reads the manager at each scrape."""

    def __init__(self, manager: LayerManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        totals = self.manager.totals()
        for name, text, key in _COUNTERS:
            yield CounterMetricFamily(name, text, value=totals[key])
        for name, text, key in _GAUGES:
            yield GaugeMetricFamily(name, text, value=totals[key])
        yield GaugeMetricFamily("lazypull_cache_size_bytes", "Disk space the chunk cache takes.",
                                value=self.manager.cache_bytes())
        buckets, total, _ = self.manager.fs.miss_wait.snapshot()
        yield HistogramMetricFamily(
            "lazypull_read_miss_wait_seconds", "How long reads that missed the cache waited on the network.",
            buckets=[("+Inf" if b == float("inf") else repr(b), n) for b, n in buckets], sum_value=total)
        yield GaugeMetricFamily("lazypull_uptime_seconds", "Seconds since the mount server started.",
                                value=self.manager.uptime())


class MetricsServer:
    """The HTTP endpoint; ``stop()`` closes it."""

    def __init__(self, manager: LayerManager, address: str) -> None:
        self.manager = manager
        self.host, self.port = parse_address(address)
        self._server: Any = None

    def start(self) -> MetricsServer:
        from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.manager))
        ProcessCollector(registry=registry)
        try:
            self._server, _ = start_http_server(self.port, addr=self.host, registry=registry)
        except OSError as err:
            raise MountError(f"cannot serve metrics on {self.host}:{self.port}: {err.strerror}") from err
        self.port = int(self._server.server_address[1])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


__all__ = ["MetricsServer", "parse_address"]
