"""The server-wide foreground-activity clock that background fetch waits on."""

from __future__ import annotations

import threading
import time

from lazypull.fs.layer.activity import Activity


def test_quiet_after_the_last_work_ends() -> None:
    act = Activity()
    assert act.quiet_remaining(5.0) == 0.0, "nothing happened yet"
    with act.busy():
        assert act.quiet_remaining(0.0) > 0, "work in progress is never quiet"
    assert 0 < act.quiet_remaining(5.0) <= 5.0
    stop = threading.Event()
    began = time.monotonic()
    assert act.wait_quiet(0.3, stop, poll=0.05)
    assert time.monotonic() - began >= 0.25


def test_nested_work_and_touch() -> None:
    act = Activity()
    act.begin()
    act.begin()
    act.end()
    assert act.quiet_remaining(0.0) > 0, "one still runs"
    act.end()
    act.end()                      # an extra end does not go negative
    assert act.quiet_remaining(0.0) == 0.0
    act.touch()
    assert act.quiet_remaining(1.0) > 0


def test_wait_quiet_returns_false_when_stopped() -> None:
    act = Activity()
    act.begin()
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert not act.wait_quiet(0.1, stop, poll=0.05)
    assert stop.is_set(), "it returned because it was stopped, not because work ended"
