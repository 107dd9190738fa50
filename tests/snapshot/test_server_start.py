"""The mount server answers as soon as it listens (issue 14 item 3): its warm-up (registry and image
modules, TLS contexts) runs after, beside the first requests, and an autostarted server is reaped."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path
from typing import Any

from lazypull.errors import ImageError, MountError
from lazypull.fs.config import FsConfig
from lazypull.snapshot import MountClient
from lazypull.snapshot.keeper import KeeperClient
from lazypull.snapshot.paths import RunPaths
from lazypull.snapshot.server import MountDaemon


class _NoImages:
    def resolve(self, name: str, platform: Any = None) -> Any:
        raise ImageError(f"image {name!r} not found")


def test_requests_are_answered_while_the_warm_up_still_runs(tmp_path: Path) -> None:
    d = MountDaemon(tmp_path, FsConfig(), store_factory=lambda _root: _NoImages(),
                    client_factory=lambda _insecure: None)
    gate = threading.Event()
    warming = threading.Event()

    def slow_warm_up() -> None:
        warming.set()
        gate.wait(60)

    d.manager.warm_up = slow_warm_up  # type: ignore[method-assign]
    starter = threading.Thread(target=d.start, daemon=True)
    starter.start()
    starter.join(30)       # bounds a hang only: start() must not wait for the warm-up
    try:
        assert not starter.is_alive(), "start() waited for the warm-up"
        server = threading.Thread(target=d.serve_forever, daemon=True)
        server.start()
        assert warming.wait(30)
        with MountClient(tmp_path, autostart=False) as mc:
            assert mc.ping()["pid"] == os.getpid()
            assert mc.list_mounts() == []
        assert not gate.is_set()        # all of that while the warm-up was still running
    finally:
        gate.set()
        d.stop()
        d.cleanup()


def test_a_ping_is_answered_before_the_clean_up_and_other_requests_wait_for_it(tmp_path: Path) -> None:
    """Taking back the keeper's connections (which may start the keeper) runs after listening: a ping
    is answered meanwhile; a request that uses the layers waits until it is done."""
    d = MountDaemon(tmp_path, FsConfig(), store_factory=lambda _root: _NoImages(),
                    client_factory=lambda _insecure: None)
    gate = threading.Event()
    cleaning = threading.Event()
    adopt = d.manager.adopt_kept

    def slow_adopt() -> list[Path]:
        cleaning.set()
        gate.wait(60)
        return adopt()

    d.manager.adopt_kept = slow_adopt  # type: ignore[method-assign]
    starter = threading.Thread(target=d.start, daemon=True)
    starter.start()
    starter.join(30)
    try:
        assert not starter.is_alive(), "start() waited for the clean-up"
        threading.Thread(target=d.serve_forever, daemon=True).start()
        assert cleaning.wait(30)
        with MountClient(tmp_path, autostart=False) as mc:
            assert mc.ping()["restored"] is False
        listed: list[object] = []
        lister = threading.Thread(target=lambda: listed.append(MountClient(tmp_path, autostart=False)
                                                               .list_mounts()), daemon=True)
        lister.start()
        lister.join(0.5)
        assert lister.is_alive() and listed == [], "list_mounts did not wait for the clean-up"
        gate.set()
        lister.join(30)
        assert listed == [[]]
    finally:
        gate.set()
        d.stop()
        d.cleanup()


def test_the_collector_is_on_again_once_the_mounts_are_restored(tmp_path: Path) -> None:
    """``lazypull.__main__`` starts the server with the garbage collector off (its imports set off
    full collections before the first mount); the restore turns it on again: a server left without it
    would never free cyclic garbage (a released layer's tree)."""
    d = MountDaemon(tmp_path, FsConfig(), store_factory=lambda _root: _NoImages(),
                    client_factory=lambda _insecure: None)
    gate = threading.Event()
    adopt = d.manager.adopt_kept

    def slow_adopt() -> list[Path]:
        gate.wait(60)
        return adopt()

    d.manager.adopt_kept = slow_adopt  # type: ignore[method-assign]
    gc.disable()
    try:
        d.start()
        threading.Thread(target=d.serve_forever, daemon=True).start()
        assert not gc.isenabled()       # listening, still restoring
        gate.set()
        with MountClient(tmp_path, autostart=False) as mc:
            assert mc.list_mounts() == []       # waits for the restore
        assert gc.isenabled()
    finally:
        gate.set()
        gc.enable()
        d.stop()
        d.cleanup()


def test_with_a_keeper_running_its_connections_are_taken_back_before_the_restore(tmp_path: Path) -> None:
    """A running keeper may hold a previous server's connections: they are taken back first, in the
    restore's own line, so the restore serves them again rather than mounting anew and the clean-up
    leaves their mounts (with no keeper running the take-back is not waited for: see
    tests/reliability/test_server_start_cost.py)."""
    paths = RunPaths(tmp_path)
    paths.run_dir.mkdir(parents=True)
    client = KeeperClient.connect(paths)        # a keeper runs (connected: it does not exit idle)
    order: list[tuple[str, str]] = []
    d = MountDaemon(tmp_path, FsConfig(), store_factory=lambda _root: _NoImages(),
                    client_factory=lambda _insecure: None)
    take_back, restore = d.manager._adopt_kept, d.manager.restore

    def recorded_take_back() -> list[Path]:
        order.append(("take back", threading.current_thread().name))
        return take_back()

    def recorded_restore() -> None:
        order.append(("restore", threading.current_thread().name))
        restore()

    d.manager._adopt_kept = recorded_take_back  # type: ignore[method-assign]
    d.manager.restore = recorded_restore  # type: ignore[method-assign]
    try:
        d.start()
        threading.Thread(target=d.serve_forever, daemon=True).start()
        with MountClient(tmp_path, autostart=False) as mc:
            assert mc.list_mounts() == []       # waits for the restore
        assert order == [("take back", "restore"), ("restore", "restore")]
        assert d.manager.keeper is not None
    finally:
        d.stop()
        d.cleanup()
        client.close()


class _WatchedEvent(threading.Event):
    """An Event that says when someone waits on it (a request waiting for the restore)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiter = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiter.set()
        return super().wait(timeout)


def test_a_failed_clean_up_stops_the_server_and_says_why(tmp_path: Path) -> None:
    """As when it failed the start: a request waiting for it gets the reason, and the server stops."""
    d = MountDaemon(tmp_path, FsConfig(), store_factory=lambda _root: _NoImages(),
                    client_factory=lambda _insecure: None)
    d.restored = _WatchedEvent()
    gate = threading.Event()

    def broken_adopt() -> list[Path]:
        gate.wait(60)
        raise OSError(5, "Input/output error", str(tmp_path / "snapshots"))

    d.manager.adopt_kept = broken_adopt  # type: ignore[method-assign]
    d.start()
    server = threading.Thread(target=d.serve_forever, daemon=True)
    server.start()
    errors: list[str] = []

    def list_mounts() -> None:
        try:
            MountClient(tmp_path, autostart=False, timeout=60).list_mounts()
        except MountError as err:
            errors.append(str(err))

    client = threading.Thread(target=list_mounts, daemon=True)
    try:
        client.start()
        assert d.restored.waiter.wait(30), "the request did not reach the server"
        gate.set()
        client.join(30)
        assert not client.is_alive() and len(errors) == 1, errors
        assert "the mount server could not start" in errors[0] and "Input/output error" in errors[0]
        server.join(30)
        assert not server.is_alive(), "the server kept serving"
    finally:
        gate.set()
        d.stop()
        d.cleanup()
