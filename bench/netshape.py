"""Bandwidth shaping for the benchmark: a private network namespace behind a veth pair, shaped with tc.

The registry runs inside the namespace (see :mod:`devtools.registry`); everything the host fetches from
it crosses the veth pair, whose two ends each get a token-bucket filter (``tc qdisc ... tbf``) at the
profile's rate. Nothing else on the machine is shaped: ``lo`` and other interfaces are left alone.
This kernel has no netem, so latency comes from :mod:`bench.delayproxy` instead.

:meth:`NetNamespace.close` removes the qdiscs, the veth pair and the namespace; it is safe to call
twice and after a partial setup.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from dataclasses import dataclass

BURST = "256kb"          # >= one max-size GSO segment burst at these rates; smaller stalls TCP
TBF_LATENCY = "100ms"    # queue length of the bucket expressed as time


class NetShapeError(RuntimeError):
    """A namespace, veth or tc command failed (the message has the command and its stderr)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetShapeError(f"{' '.join(args)!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class Profile:
    """A network profile: bandwidth in Mbit/s (None: unshaped) and round-trip time in seconds."""

    name: str
    rate_mbit: float | None
    rtt: float

    @property
    def bandwidth_bytes(self) -> float | None:
        """Bytes per second, or None when unshaped."""
        return None if self.rate_mbit is None else self.rate_mbit * 1e6 / 8


PROFILES: dict[str, Profile] = {
    "lan": Profile("lan", None, 0.0),
    "wan": Profile("wan", 100.0, 0.020),
    "slow": Profile("slow", 60.0, 0.050),
}


def _used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    out = _ip("ip", "-4", "-o", "addr", "show").stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    return nets


class NetNamespace:
    """``lpb<pid>`` namespace with veth ``lpb<pid>h`` (host side) / ``lpb<pid>n`` (namespace side)."""

    def __init__(self, tag: str | None = None) -> None:
        tag = tag or str(os.getpid())
        self.name = f"lpbench{tag}"
        self.host_if = f"lpb{tag}h"[:15]
        self.ns_if = f"lpb{tag}n"[:15]
        self.host_ip = ""
        self.ns_ip = ""
        self.shaped: float | None = None
        self._created = False

    def create(self) -> NetNamespace:
        """Create the namespace and the veth pair on a /30 not used by any interface here."""
        net = self._free_subnet()
        hosts = list(net.hosts())
        self.host_ip, self.ns_ip = str(hosts[0]), str(hosts[1])
        _ip("ip", "netns", "add", self.name)
        self._created = True
        _ip("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("ip", "link", "set", self.ns_if, "netns", self.name)
        _ip("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("ip", "link", "set", self.host_if, "up")
        _ip("ip", "-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        _ip("ip", "-n", self.name, "link", "set", self.ns_if, "up")
        _ip("ip", "-n", self.name, "link", "set", "lo", "up")
        return self

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used = _used_ipv4_networks()
        base = ipaddress.IPv4Network("10.213.0.0/16")
        start = (os.getpid() * 4) % 65536
        for i in range(16384):
            candidate = ipaddress.IPv4Network((int(base.network_address) + (start + 4 * i) % 65536, 30))
            if not any(candidate.overlaps(n) for n in used):
                return candidate
        raise NetShapeError("no free /30 in 10.213.0.0/16 for the benchmark veth pair")

    def exec_prefix(self) -> list[str]:
        """Prefix a command with this to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def shape(self, rate_mbit: float | None) -> None:
        """Token-bucket both directions at ``rate_mbit`` (None removes the shaping)."""
        for prefix, dev in ((["tc"], self.host_if), (["tc", "-n", self.name], self.ns_if)):
            _ip(*prefix, "qdisc", "del", "dev", dev, "root", check=False)
            if rate_mbit is not None:
                _ip(*prefix, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit",
                    "burst", BURST, "latency", TBF_LATENCY)
        self.shaped = rate_mbit

    def qdisc_stats(self) -> str:
        """``tc -s qdisc`` of both ends (for the raw results: drops, overlimits)."""
        a = _ip("tc", "-s", "qdisc", "show", "dev", self.host_if, check=False).stdout
        b = _ip("tc", "-n", self.name, "-s", "qdisc", "show", "dev", self.ns_if, check=False).stdout
        return a + b

    def close(self) -> None:
        """Remove the shaping, the veth pair and the namespace (each step tolerates absence)."""
        if not self._created:
            return
        _ip("tc", "qdisc", "del", "dev", self.host_if, "root", check=False)
        _ip("ip", "link", "del", self.host_if, check=False)
        # Only this harness starts processes in its own namespace: any left are ours (by id).
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [int(p) for p in _ip("ip", "netns", "pids", self.name, check=False).stdout.split()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline:
                time.sleep(0.1)
                pids = [int(p) for p in _ip("ip", "netns", "pids", self.name, check=False).stdout.split()]
            if not pids:
                break
        _ip("ip", "netns", "del", self.name, check=False)
        self._created = False

    def __enter__(self) -> NetNamespace:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()
