"""A throwaway local registry for the demo: Debian's ``docker-registry`` on 127.0.0.1 and a free port.

Storage, config and logs live in a temporary directory removed on :meth:`DevRegistry.stop`. The
registry's JSON log tells what it served, so the demo can report the bytes each run fetched.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from lazypull.errors import LazypullError

REGISTRY_BINARY = "docker-registry"


class DevRegistryError(LazypullError):
    """The local registry could not be started."""


@dataclass(frozen=True)
class Served:
    """One completed request from the registry's log."""

    method: str
    path: str
    status: int
    bytes: int


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DevRegistry:
    """``docker-registry serve`` with plain HTTP on 127.0.0.1, no auth. ``listen_host`` and
    ``exec_prefix`` (e.g. ``ip netns exec NS``) run it elsewhere: the demo's shaped link."""

    def __init__(self, binary: str = REGISTRY_BINARY, *, listen_host: str = "127.0.0.1",
                 exec_prefix: Sequence[str] = ()) -> None:
        self.binary = binary
        self.listen_host = listen_host
        self.exec_prefix = list(exec_prefix)
        self.workdir: Path | None = None
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``HOST:PORT`` (``127.0.0.1:PORT`` by default), the registry part of image references."""
        return f"{self.listen_host}:{self.port}"

    @property
    def log_file(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "registry.log"

    def start(self, timeout: float = 20.0) -> DevRegistry:
        """Start on a free port (retrying if someone took it first) and wait for ``/v2/``."""
        if shutil.which(self.binary) is None:
            raise DevRegistryError(f"{self.binary} is not installed (scripts/install-deps.sh installs it)")
        self.workdir = Path(tempfile.mkdtemp(prefix="lazypull-devregistry-"))
        for _ in range(5):
            self.port = _free_port()
            config = {
                "version": 0.1,
                "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": True}},
                "storage": {"filesystem": {"rootdirectory": str(self.workdir / "storage")},
                            "maintenance": {"uploadpurging": {"enabled": False}}},
                "http": {"addr": self.host, "secret": secrets.token_hex(16)},
            }
            config_file = self.workdir / "config.yml"  # JSON is YAML
            config_file.write_text(json.dumps(config))
            with open(self.log_file, "ab") as log:
                self._proc = subprocess.Popen([*self.exec_prefix, self.binary, "serve", str(config_file)],
                                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
            if self._wait_ready(timeout):
                return self
            self._terminate()
        tail = self.log_file.read_text(errors="replace")[-1500:]
        self.stop()
        raise DevRegistryError(f"docker-registry did not start; its log ends with:\n{tail}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.listen_host, self.port), timeout=0.5) as sock:
                    sock.sendall(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    if sock.recv(16).startswith(b"HTTP/1."):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def served(self, since: int = 0) -> list[Served]:
        """Completed requests (from the ``since``-th on), once the log has been quiet a moment."""
        size = -1
        for _ in range(40):
            new_size = self.log_file.stat().st_size
            if new_size == size:
                break
            size = new_size
            time.sleep(0.05)
        entries = []
        for line in self.log_file.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and str(record.get("msg", "")).startswith("response completed"):
                entries.append(Served(str(record.get("http.request.method", "")),
                                      str(record.get("http.request.uri", "")),
                                      int(record.get("http.response.status", 0)),
                                      int(record.get("http.response.written", 0))))
        return entries[since:]

    def blob_bytes_served(self, since: int = 0) -> int:
        """Bytes of blob GET responses (layers and configs) since the ``since``-th request."""
        return sum(e.bytes for e in self.served(since) if e.method == "GET" and "/blobs/" in e.path)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Stop the process and delete its storage."""
        self._terminate()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> DevRegistry:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
