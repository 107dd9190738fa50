"""Counters of one lazy layer: what was fetched, what was served from the cache, how long prefetch took."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

# The counters of LayerStats that only grow (what the mount server sums into process totals).
COUNTERS = ("bytes_fetched", "requests", "retries", "cache_hits", "misses_waited", "chunks_fetched",
            "fetched_ahead", "verify_failures", "read_errors")


class LatencyHistogram:
    """Durations in fixed buckets (cumulative counts, as Prometheus histograms are); thread-safe."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)     # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        i = next((k for k, bound in enumerate(self.bounds) if seconds <= bound), len(self.bounds))
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """([(upper bound, cumulative count)], sum, count); the last bound is +inf."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return cumulative, total, running


# Buckets (s) of how long reads that missed the cache waited for the network: one histogram per server
# (``fs.facade.LayerFs.miss_wait``), all its layers' reads.
MISS_WAIT_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class LayerStats:
    """Thread-safe counters; ``snapshot()`` gives a plain dict for ``lazypull stats``."""

    digest: str
    bytes_fetched: int = 0          # compressed bytes received from the blob source
    requests: int = 0               # range requests sent (a multi-range request counts once)
    retries: int = 0                # failed requests retried
    cache_hits: int = 0             # chunks served from the chunk cache
    misses_waited: int = 0          # reads that waited on the network
    chunks_fetched: int = 0         # chunks decoded and verified from fetched bytes
    fetched_ahead: int = 0          # files fetched before being read (a program's interpreter, libraries)
    verify_failures: int = 0        # chunks whose digest did not match
    read_errors: int = 0            # reads answered with EIO
    prefetch_bytes: int = 0
    prefetch_seconds: float | None = None   # None while running or when there is nothing to prefetch
    prefetch_state: str = "none"    # none | running | done | failed | skipped
    learned_chunks: int = 0         # chunks of the learned record fetched at mount (fs.layer.learned)
    learned_bytes: int = 0
    learned_seconds: float | None = None
    learned_state: str = "none"     # none | running | done | failed
    background_total: int = 0       # compressed bytes the background fetch has to cover
    background_done: int = 0        # ... of which already cached or fetched
    background_state: str = "off"   # off | waiting | running | done | failed
    last_errors: list[str] = field(default_factory=list)   # the latest read failures, newest last
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def error(self, message: str, keep: int = 10) -> None:
        """Remember a read failure (with its time) for ``lazypull stats``."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._lock:
            self.last_errors = [*self.last_errors[-(keep - 1):], f"{stamp} {message}"]

    def add(self, **deltas: int) -> None:
        """Increment counters atomically."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def set(self, **values: Any) -> None:
        """Set fields atomically."""
        with self._lock:
            for name, value in values.items():
                setattr(self, name, value)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        with self._lock:
            data = {k: v for k, v in vars(self).items() if not k.startswith("_")}
            data["last_errors"] = list(self.last_errors)
            return data
