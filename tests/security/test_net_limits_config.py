"""The mount server's network limits come from its config.toml (``net_*`` settings).

A registry that keeps failing is marked down after ``net_down_failures`` failures spanning
``net_down_after`` seconds, and then asked only once every ``net_probe_interval`` seconds: the server's
registry clients (``LayerManager.registry_client``, the lazy read path's) must use the configured
values. Counted at the fault proxy in front of the registry: requests, not time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lazypull.fs.config import load_config
from lazypull.registry import RegistryClient, RegistryError, RegistryUnavailableError
from lazypull.snapshot.manager import LayerManager
from tests.helpers.registry import Fault, FaultProxy
from tests.registry.conftest import sha256

BLOB = b"x" * 4096


def _blob_requests_for_three_reads(root: Path, fault_proxy: FaultProxy,
                                   ref: str) -> tuple[int, RegistryError]:
    manager = LayerManager(root, load_config(root), store_factory=lambda _root: None)
    client = manager.registry_client(True)
    try:
        fault_proxy.clear()
        fault_proxy.add(Fault("status", path_contains="/blobs/", status=500, times=-1))
        last: RegistryError | None = None
        for _ in range(3):
            with pytest.raises(RegistryError) as info:
                client.read_range(ref, sha256(BLOB), 0, 100)
            last = info.value
        assert last is not None
        return len([r for r in fault_proxy.requests if "/blobs/" in r.path]), last
    finally:
        client.close()


def test_configured_breaker_limits_take_effect(tmp_path: Path, fault_proxy: FaultProxy,
                                               unique_repo: str) -> None:
    ref = f"{fault_proxy.host}/{unique_repo}:v1"
    with RegistryClient(insecure=True) as pusher:
        pusher.push_blob(ref, sha256(BLOB), len(BLOB), BLOB)

    configured = tmp_path / "configured"
    configured.mkdir()
    (configured / "config.toml").write_text(
        "net_down_failures = 2\nnet_down_after = 0.001\nnet_probe_interval = 3600.0\n")
    sent, last = _blob_requests_for_three_reads(configured, fault_proxy, ref)
    # the first read's two tries mark the host down; the next reads fail without a request
    assert sent == 2, sent
    assert isinstance(last, RegistryUnavailableError) and "every 3600.0s" in str(last), last

    default = tmp_path / "default"        # NetLimits' defaults: 3 failures over 2 s, a trial every 0.5 s
    default.mkdir()
    sent, _ = _blob_requests_for_three_reads(default, fault_proxy, ref)
    assert sent > 2, sent
