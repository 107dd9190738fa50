"""bench's reset to a started mount server leaves it warmed up (issue 14, the pull phase): the pull phase
of a warm-server row finds the server as one started long before, not one still to import the registry
and pull modules (a server warms up after its first request or 1 s, so a pull sent right after a plain
ping paid for that warm-up in the timed phase, ~0.06 s, where trees that warmed up before listening
did not)."""

from __future__ import annotations

from pathlib import Path

from bench.systems import LazypullSystem
from lazypull.snapshot import MountClient


def test_the_warm_server_reset_leaves_a_warmed_up_server(tmp_path: Path) -> None:
    system = LazypullSystem(tmp_path / "root", "stargz")
    try:
        system.reset_cold()
        with MountClient(system.root, autostart=False) as mc:
            status = mc.ping()
        assert status["warm"] is True
    finally:
        system.close()
