"""Debian's ``docker-registry`` for the benchmark: in the private namespace, with its access log.

The registry listens on the namespace end of the veth pair (:mod:`bench.netshape`), so every byte it
serves to the host crosses the shaped link; the host reaches it through :mod:`bench.delayproxy` on
127.0.0.1. Its storage directory lives under the benchmark cache, so pushed images survive reruns.
The access log (Apache combined format, on stdout) is parsed into :class:`Request` records;
:meth:`BenchRegistry.mark` / :meth:`BenchRegistry.requests_since` give the requests of one sample.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

REGISTRY_BINARY = "/usr/bin/docker-registry"

# 10.0.0.1 - - [27/Nov/2026:19:20:00 +0000] "GET /v2/x/blobs/sha256:.. HTTP/1.1" 206 1234 "" "ua"
_ACCESS_RE = re.compile(
    r'^(?P<client>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" '
    r"(?P<status>\d{3}) (?P<bytes>\d+|-)")


class RegistryError(RuntimeError):
    """The registry did not start or died; the message has its log tail."""


@dataclass(frozen=True)
class Request:
    """One access-log line."""

    method: str
    path: str
    status: int
    bytes: int

    @property
    def kind(self) -> str:
        """``manifest``, ``blob``, ``upload``, ``catalog`` or ``other``, from the URL path."""
        path = urllib.parse.urlsplit(self.path).path
        if "/manifests/" in path:
            return "manifest"
        if "/blobs/uploads" in path:
            return "upload"
        if "/blobs/" in path:
            return "blob"
        return "other"


def parse_access_log(text: str) -> list[Request]:
    """Requests in an access log text (lines that are not access lines are skipped)."""
    out = []
    for line in text.splitlines():
        m = _ACCESS_RE.match(line)
        if m:
            size = m["bytes"]
            out.append(Request(m["method"], m["path"], int(m["status"]), 0 if size == "-" else int(size)))
    return out


def summarize(requests: list[Request]) -> dict[str, int]:
    """Totals for one sample: requests, response bytes, and both split by kind."""
    out = {"requests": len(requests), "bytes": sum(r.bytes for r in requests)}
    for kind in ("manifest", "blob", "other"):
        sel = [r for r in requests if r.kind == kind]
        out[f"{kind}_requests"] = len(sel)
        out[f"{kind}_bytes"] = sum(r.bytes for r in sel)
    return out


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class BenchRegistry:
    """``docker-registry serve`` run with ``exec_prefix`` (e.g. ``ip netns exec NS``) on ``host``."""

    def __init__(self, workdir: Path, storage_dir: Path, host: str = "127.0.0.1",
                 exec_prefix: list[str] | None = None) -> None:
        self.workdir = workdir
        self.storage_dir = storage_dir
        self.host = host
        self.exec_prefix = exec_prefix or []
        self.port = _free_port()
        self.access_log = workdir / "registry-access.log"
        self.app_log = workdir / "registry.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def config(self) -> dict[str, object]:
        return {
            "version": 0.1,
            "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage_dir)},
                        "delete": {"enabled": True}, "cache": {"blobdescriptor": "inmemory"}},
            "http": {"addr": self.address, "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }

    def start(self, timeout: float = 20.0) -> BenchRegistry:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "registry-config.yml"
        config.write_text(json.dumps(self.config(), indent=1))   # JSON is YAML
        with self.access_log.open("wb") as out, self.app_log.open("wb") as err:
            self._proc = subprocess.Popen([*self.exec_prefix, REGISTRY_BINARY, "serve", str(config)],
                                          stdout=out, stderr=err, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RegistryError(f"docker-registry exited with {self._proc.returncode}: {self._tail()}")
            try:   # the host reaches the namespace end of the veth pair directly
                socket.create_connection((self.host, self.port), 1).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RegistryError(f"docker-registry did not listen on {self.address} within {timeout}s")

    def _tail(self) -> str:
        try:
            return self.app_log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def mark(self) -> int:
        """A position in the access log; requests after it belong to what happens next."""
        try:
            return self.access_log.stat().st_size
        except FileNotFoundError:
            return 0

    def requests_since(self, mark: int, settle: float = 0.05) -> list[Request]:
        """Requests logged after ``mark`` (the registry writes a line when the response is done)."""
        time.sleep(settle)
        with self.access_log.open("rb") as f:
            f.seek(mark)
            return parse_access_log(f.read().decode(errors="replace"))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> BenchRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
