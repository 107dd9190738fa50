"""How long one HTTP exchange with a registry may take, and how slowly its answer may come.

httpx's timeouts bound each socket operation, not the request: a registry sending a byte every few
seconds, headers included, keeps a request alive forever. A :class:`Budget` bounds the whole exchange
(connect, TLS, headers, body) by an overall deadline, ``NetLimits.deadline`` plus the bytes expected at
``min_rate`` (a large blob at the floor rate still finishes), and, once the answer has begun, asks for
at least ``min_rate * rate_window`` bytes in every ``rate_window`` seconds.

It is enforced where the bytes are: :func:`guard_transport` wraps the connection pool's network backend,
so every connect, read and write of the calling thread's current exchange is clamped to its budget
(:func:`activate` makes a budget current; the registry client reads a response body in the thread that
sent the request). Running out raises an httpcore timeout whose text says which limit was hit;
httpcore then closes the connection, so a retry gets a new one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore

from lazypull.registry._httpx import httpx


@dataclass(frozen=True)
class NetLimits:
    """Limits on every registry request, and when a registry counts as down.

    ``deadline``: seconds any request may take (60), plus its expected size at ``min_rate``;
    ``min_rate``: bytes per second an answer must keep up, measured over ``rate_window`` seconds
    (4 KiB/s over 10 s: a stall or a trickle ends within a window); ``down_failures`` failures in a
    row (connection refused, reset, timed out, 5xx) spanning ``down_after`` seconds (3, 2 s) mark a host
    down: requests to it then fail at once, but for one trial request every ``probe_interval`` seconds
    (0.5), whose success marks it up again.
    """

    deadline: float = 60.0
    min_rate: float = 4096.0
    rate_window: float = 10.0
    down_failures: int = 3
    down_after: float = 2.0
    probe_interval: float = 0.5


class BudgetExceeded(httpcore.ReadTimeout):
    """A read that ran past the exchange's deadline, or an answer slower than the minimum rate."""


class _ConnectBudgetExceeded(httpcore.ConnectTimeout):
    """Connecting (or the TLS handshake) ran past the exchange's deadline."""


class _WriteBudgetExceeded(httpcore.WriteTimeout):
    """Sending the request ran past the exchange's deadline."""


_KINDS: dict[str, type[Exception]] = {"read": BudgetExceeded, "connect": _ConnectBudgetExceeded,
                                      "write": _WriteBudgetExceeded}


class Budget:
    """The time and progress one exchange is allowed; used by one thread at a time."""

    def __init__(self, limits: NetLimits, *, expected: int = 0, until: float | None = None) -> None:
        self.limits = limits
        self.start = time.monotonic()
        self.expected = max(0, expected)
        self.until = until                     # the caller's own deadline (monotonic), if earlier
        self.received = 0
        self._window_start: float | None = None    # the rate is measured once the answer began
        self._window_bytes = 0

    @property
    def deadline(self) -> float:
        rate = max(self.limits.min_rate, 1.0)
        own = self.start + self.limits.deadline + max(self.expected, self.received) / rate
        return own if self.until is None else min(own, self.until)

    @property
    def _need(self) -> float:
        return self.limits.min_rate * self.limits.rate_window

    def expect(self, nbytes: int) -> None:
        """The answer turned out to be ``nbytes`` long (Content-Length): its deadline grows to match."""
        self.expected = max(self.expected, nbytes)

    def timeout(self, requested: float | None, kind: str) -> float:
        """The timeout for the next socket operation: ``requested`` clamped to what is left."""
        now = time.monotonic()
        left = self.deadline - now
        if self._window_start is not None and self._window_bytes < self._need:
            left = min(left, self._window_start + self.limits.rate_window - now)
        if left <= 0:
            self.check(kind, now)
            left = 0.001        # the window check passed at its very edge: one more short wait
        return left if requested is None else min(requested, left)

    def check(self, kind: str, now: float | None = None) -> None:
        """Raise if the deadline passed or the current window ended below the minimum rate."""
        now = time.monotonic() if now is None else now
        if now >= self.deadline:
            raise _KINDS[kind](f"no complete answer within this request's deadline of "
                               f"{self.deadline - self.start:.1f}s ({self.received} bytes received)")
        if self._window_start is not None and now - self._window_start >= self.limits.rate_window \
                and self._window_bytes < self._need:
            raise _KINDS[kind](f"answer slower than the minimum rate of {self.limits.min_rate:.0f} bytes/s "
                               f"({self._window_bytes} bytes in {now - self._window_start:.1f}s)")

    def got(self, nbytes: int) -> None:
        """``nbytes`` arrived (0: the peer closed)."""
        now = time.monotonic()
        self.received += nbytes
        if self._window_start is None:
            self._window_start, self._window_bytes = now, nbytes
        else:
            self._window_bytes += nbytes
        if self._window_bytes >= self._need:
            self._window_start, self._window_bytes = now, 0
        elif nbytes:
            self.check("read", now)


_local = threading.local()


def activate(budget: Budget | None) -> None:
    """Make ``budget`` the calling thread's current one (its next exchange, with its body)."""
    _local.budget = budget


def current() -> Budget | None:
    """The calling thread's current budget."""
    budget: Budget | None = getattr(_local, "budget", None)
    return budget


class _GuardedStream(httpcore.NetworkStream):
    """A connection whose every operation is clamped to the current thread's budget."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        budget = current()
        if budget is None:
            return self._inner.read(max_bytes, timeout)
        try:
            data = self._inner.read(max_bytes, budget.timeout(timeout, "read"))
        except httpcore.ReadTimeout:
            budget.check("read")       # our limit, said as such; else the socket's own timeout
            raise
        budget.got(len(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        budget = current()
        if budget is None:
            self._inner.write(buffer, timeout)
            return
        try:
            self._inner.write(buffer, budget.timeout(timeout, "write"))
        except httpcore.WriteTimeout:
            budget.check("write")
            raise

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        budget = current()
        if budget is not None:
            timeout = budget.timeout(timeout, "connect")
        return _GuardedStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """The pool's network backend, handing out guarded connections."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        budget = current()
        if budget is not None:
            timeout = budget.timeout(timeout, "connect")
        return _GuardedStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _GuardedStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def guard_transport(transport: httpx.HTTPTransport) -> httpx.HTTPTransport:
    """Have ``transport``'s connections obey the budgets (httpx exposes no network backend option, so
    the one its pool holds is wrapped; a change of those internals fails here, loudly, not silently)."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(pool, httpcore.ConnectionPool) or not isinstance(backend, httpcore.NetworkBackend):
        raise RuntimeError("httpx/httpcore internals changed: cannot enforce request deadlines")
    if not isinstance(backend, _GuardedBackend):
        pool._network_backend = _GuardedBackend(backend)
    return transport
