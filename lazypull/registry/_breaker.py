"""Whether a registry host is worth asking: a circuit breaker per host.

While a registry is down, every lazy read would otherwise wait out its whole deadline (and the kernel
asks twice for a failed readahead), so a starting container hangs for minutes on EIO it could have had
at once. After ``NetLimits.down_failures`` failures in a row spanning ``down_after`` seconds (refused,
reset, timed out, 5xx; any answer resets the count) the host is *down*: requests to it fail at once
with :class:`RegistryUnavailableError`, except one trial request every ``probe_interval`` seconds, whose
success marks the host up again for everyone (so recovery takes at most one probe interval after the
registry is back and a request comes).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from lazypull.registry._budget import NetLimits
from lazypull.registry.errors import RegistryConnectionError, RegistryError, RegistryUnavailableError

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


def is_down_signal(err: BaseException) -> bool:
    """Whether a failed request says the registry is unreachable or broken (not merely refusing)."""
    if isinstance(err, RegistryUnavailableError):
        return False
    if isinstance(err, RegistryConnectionError):
        return not err.tls
    return isinstance(err, RegistryError) and err.status is not None and err.status >= 500 \
        and err.status not in (501, 505)


@dataclass
class _Host:
    failures: int = 0
    first_failure: float = 0.0
    down: bool = False
    probing: bool = False
    next_probe: float = 0.0
    last_error: str = ""


class CircuitBreaker:
    """Per-host up/down state; thread-safe."""

    def __init__(self, limits: NetLimits) -> None:
        self.limits = limits
        self._hosts: dict[str, _Host] = {}
        self._lock = threading.Lock()

    def admit(self, host: str) -> bool:
        """May a request to ``host`` go out? True if it must report back as the host's trial request
        (:meth:`record` with ``trial=True``); raises RegistryUnavailableError while the host is down."""
        now = time.monotonic()
        with self._lock:
            state = self._hosts.get(host)
            if state is None or not state.down:
                return False
            if not state.probing and now >= state.next_probe:
                state.probing = True
                return True
        raise self.unavailable(host)

    def unavailable(self, host: str) -> RegistryUnavailableError:
        """The error for a request not sent (or failed) because ``host`` is down."""
        with self._lock:
            state = self._hosts.get(host) or _Host()
            since = time.monotonic() - state.first_failure if state.failures else 0.0
            last = state.last_error
        return RegistryUnavailableError(f"registry {host} is down (failing for {since:.1f}s; one trial "
                                        f"request every {self.limits.probe_interval}s): {last}", host=host)

    def record(self, host: str, outcome: BaseException | None, *, trial: bool = False) -> bool:
        """The outcome of a request that :meth:`admit` let out: None for an answer, else the error.
        A registry error that is not a down signal (a 404, a refused token) is an answer too.
        Returns whether the host is down now."""
        now = time.monotonic()
        with self._lock:
            state = self._hosts.setdefault(host, _Host())
            if trial:
                state.probing = False
            if outcome is not None and is_down_signal(outcome):
                if state.failures == 0:
                    state.first_failure = now
                state.failures += 1
                state.last_error = str(outcome)[:300]
                if state.down:
                    state.next_probe = now + self.limits.probe_interval
                elif state.failures >= self.limits.down_failures \
                        and now - state.first_failure >= self.limits.down_after:
                    state.down = True
                    state.next_probe = now + self.limits.probe_interval
                    log.warning("registry %s is down (%d failures in %.1fs): failing its requests at once "
                                "until a trial request succeeds", host, state.failures,
                                now - state.first_failure)
                return state.down
            if outcome is not None and not isinstance(outcome, RegistryError):
                if trial:           # not an answer (a bug, an interrupt): the next trial may go soon
                    state.next_probe = now + self.limits.probe_interval
                return state.down
            if state.down:
                log.warning("registry %s is back", host)
            self._hosts.pop(host, None)
            return False
