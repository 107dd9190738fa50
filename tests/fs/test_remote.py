"""RemoteBlob.fetch: which failures are retried until the deadline, and which pass straight through."""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx
import pytest

from lazypull.fs.config import FsConfig
from lazypull.fs.remote import FetchError, RemoteBlob
from lazypull.fs.stats import LayerStats

BLOB = bytes(range(256)) * 16


class _Flaky:
    """A range source that raises the given errors, one per call, then serves ``BLOB``."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    @property
    def size(self) -> int:
        return len(BLOB)

    def read_ranges(self, ranges: Sequence[tuple[int, int]], deadline: float | None = None) -> list[bytes]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return [BLOB[off : off + length] for off, length in ranges]

    def describe(self) -> str:
        return "flaky-blob"


def _remote(source: _Flaky) -> tuple[RemoteBlob, LayerStats]:
    stats = LayerStats("sha256:" + "a" * 64)
    return RemoteBlob(source, stats, FsConfig(retry_initial=0.01, retry_max=0.02)), stats


@pytest.mark.parametrize("error", [
    OSError("connection reset"),
    ValueError("bad range answer"),
    httpx.ReadError("server went away"),
    FetchError("short answer"),
], ids=["os", "value", "httpx", "ours"])
def test_transient_failures_are_retried(error: Exception) -> None:
    source = _Flaky(error, error)
    remote, stats = _remote(source)
    assert remote.fetch([(10, 5), (100, 3)], time.monotonic() + 5) == [BLOB[10:15], BLOB[100:103]]
    assert source.calls == 3 and stats.retries == 2 and stats.requests == 3


def test_failures_past_the_deadline_name_the_blob_and_attempts() -> None:
    source = _Flaky(*[httpx.ConnectError("refused")] * 100)
    remote, _ = _remote(source)
    with pytest.raises(FetchError, match=r"flaky-blob failed after \d+ attempt\(s\): refused") as exc:
        remote.fetch([(0, 10)], time.monotonic() + 0.1)
    assert isinstance(exc.value.__cause__, httpx.ConnectError)


def test_programming_errors_are_not_retried() -> None:
    source = _Flaky(KeyError("bug"))
    remote, stats = _remote(source)
    with pytest.raises(KeyError):
        remote.fetch([(0, 10)], time.monotonic() + 5)
    assert source.calls == 1 and stats.retries == 0
