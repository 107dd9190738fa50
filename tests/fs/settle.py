"""Waiting until a layer tree's guesses are done, so a test can assert that something was *not* fetched
without sleeping first (a sleep passes whenever the guess is late, and makes every run slower).

The fetch-ahead work of a tree (``hints`` following a program, ``fetch_ahead``) runs on its ahead pool
(a program fetched whole on its program pool);
a task there may submit to another tree's pool before it ends. :class:`Pending` counts the tasks of all
the watched trees together, so it reaches zero only once the whole chain has run; after that nothing
submits more, and the chunks still claimed in the trees' fetchers (read-ahead, neighbours, the rest of a
file: all claimed before the read that caused them returned) are waited for too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from lazypull.fs.layer import LayerTree


class Pending:
    """Fetch-ahead tasks submitted to the watched trees' pools and not finished yet."""

    def __init__(self) -> None:
        self.count = 0
        self.cond = threading.Condition()

    def add(self, n: int) -> None:
        with self.cond:
            self.count += n
            self.cond.notify_all()


class _CountingPool(ThreadPoolExecutor):
    def __init__(self, pending: Pending, workers: int, prefix: str) -> None:
        super().__init__(workers, thread_name_prefix=prefix)
        self._pending = pending

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self._pending.add(1)        # counted before it can run (and end)
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._pending.add(-1)
            raise
        future.add_done_callback(lambda _: self._pending.add(-1))
        return future


def watch(*trees: LayerTree) -> Pending:
    """Count the fetch-ahead work of ``trees`` (call before reading from them)."""
    pending = Pending()
    for tree in trees:
        old = tree._ahead_pool
        tree._ahead_pool = _CountingPool(pending, old._max_workers, f"ahead-{tree.digest[7:19]}")
        old.shutdown(wait=True)
        # a program's pieces are claimed only at their turn: not in flight while they wait there
        old = tree._program_pool
        tree._program_pool = _CountingPool(pending, old._max_workers, f"program-{tree.digest[7:19]}")
        old.shutdown(wait=True)
    return pending


def settle(pending: Pending, *trees: LayerTree, timeout: float = 30.0) -> None:
    """Return once every fetch-ahead task of the watched trees has ended and no chunk is in flight in
    ``trees``' fetchers: what they were going to fetch ahead has been fetched (or was never asked for)."""
    with pending.cond:
        assert pending.cond.wait_for(lambda: pending.count == 0, timeout), "fetch-ahead work never ended"
    deadline = time.monotonic() + timeout
    while any(tree.fetcher._inflight for tree in trees):
        assert time.monotonic() < deadline, "chunks still in flight"
        time.sleep(0.01)


def idle(*trees: LayerTree, timeout: float = 30.0) -> None:
    """Return once no chunk is in flight in ``trees``' fetchers (for trees without fetch-ahead work:
    read-ahead and neighbours are claimed before the read that asked for them returns)."""
    settle(Pending(), *trees, timeout=timeout)
