"""``ping(warm=True)``: answered once the mount server's warm-up is done (issue 14, the pull phase).

A server warms up after its first request or ``WARM_UP_DELAY`` (not before listening, so a first mount
does not wait for modules it does not use); a caller about to pull (bench's reset to a started server)
asks to be answered warm instead of racing the warm-up with its pull. The warm-up runs once either way.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from lazypull.errors import ImageError
from lazypull.fs.config import FsConfig
from lazypull.snapshot import MountClient
from lazypull.snapshot import server as server_mod
from lazypull.snapshot.paths import RunPaths
from lazypull.snapshot.protocol import decode, encode
from lazypull.snapshot.server import MountDaemon


class _NoImages:
    def resolve(self, name: str, platform: Any = None) -> Any:
        raise ImageError(f"image {name!r} not found")


def _daemon(tmp_path: Path, warm_up: Any) -> MountDaemon:
    d = MountDaemon(tmp_path, FsConfig(), store_factory=lambda _root: _NoImages(),
                    client_factory=lambda _insecure: None)
    d.manager.warm_up = warm_up  # type: ignore[method-assign]
    d.start()
    threading.Thread(target=d.serve_forever, daemon=True).start()
    return d


def test_a_warm_ping_warms_the_server_up_itself_before_it_answers(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "WARM_UP_DELAY", 60.0)     # the warm-up thread would wait a minute
    calls: list[str] = []
    d = _daemon(tmp_path, lambda: calls.append(threading.current_thread().name))
    try:
        with MountClient(tmp_path, autostart=False) as mc:
            assert mc.ping()["warm"] is False
            assert calls == []
            assert mc.ping(warm=True)["warm"] is True
            assert len(calls) == 1 and calls[0] != "warm-up"      # by the ping's own handler
            assert mc.ping(warm=True)["warm"] is True      # once: not warmed up again
        assert len(calls) == 1
    finally:
        d.stop()
        d.cleanup()


def test_a_warm_ping_waits_for_a_warm_up_under_way_which_runs_once(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "WARM_UP_DELAY", 0.0)      # the warm-up thread starts at once
    gate, started = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow_warm_up() -> None:
        calls.append(threading.current_thread().name)
        started.set()
        gate.wait(60)

    earlier = set(threading.enumerate())
    d = _daemon(tmp_path, slow_warm_up)
    warmers = [t for t in threading.enumerate() if t.name == "warm-up" and t not in earlier]
    try:
        assert started.wait(30)
        with MountClient(tmp_path, autostart=False) as mc:
            assert mc.ping()["warm"] is False           # a plain ping does not wait for it
        answers: list[dict[str, Any]] = []
        pinger = threading.Thread(daemon=True, target=lambda: answers.append(
            MountClient(tmp_path, autostart=False).ping(warm=True)))
        pinger.start()
        pinger.join(0.5)
        assert pinger.is_alive() and answers == [], "a warm ping was answered during the warm-up"
        gate.set()
        pinger.join(30)
        assert [a["warm"] for a in answers] == [True]
        for warmer in warmers:
            warmer.join(30)
        assert calls == ["warm-up"]
    finally:
        gate.set()
        d.stop()
        d.cleanup()


def test_a_ping_with_a_malformed_warm_is_refused_by_name(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "WARM_UP_DELAY", 60.0)
    calls: list[int] = []
    d = _daemon(tmp_path, lambda: calls.append(1))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(RunPaths(tmp_path).socket))
            sock.sendall(encode({"op": "ping", "args": {"warm": "yes"}}))
            reply = decode(sock.makefile("rb").readline())
        assert reply["ok"] is False
        assert "ping: warm must be true or false, not 'yes'" in str(reply)
        assert calls == []
        with MountClient(tmp_path, autostart=False) as mc:      # the server goes on serving
            assert mc.ping()["warm"] is False
    finally:
        d.stop()
        d.cleanup()

