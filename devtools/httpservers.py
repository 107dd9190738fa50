"""Small HTTP servers that go in front of (or beside) a test registry, for tests and bench.

:class:`BackgroundHTTPServer` is a threading server on 127.0.0.1 and a free port, served from a
daemon thread; :class:`StaticFileServer` is blob storage for the registry's ``redirect`` middleware;
:class:`FaultProxy` records every request with its headers (the registry's own log has no Range
header) and injects :class:`Fault` s.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from devtools.registry import RegistryServer


# -- the small servers around the registry ------------------------------------------------------

class _QuietHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients dropping connections (as the fault tests make them do) are not errors."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class BackgroundHTTPServer:
    """A ThreadingHTTPServer on 127.0.0.1:free port, served from a daemon thread."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler],
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.server = _Server(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.server.owner = self  # type: ignore[attr-defined]
        self.port = int(self.server.server_address[1])
        self.scheme = "https" if ssl_context else "http"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=f"{handler.__name__}:{self.port}")

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


class _StaticHandler(_QuietHandler):
    """Serves files under the server's root (GET/HEAD, single Range); logs each request."""

    def _serve(self, body: bool) -> None:
        owner: StaticFileServer = self.server.owner  # type: ignore[attr-defined]
        path = urllib.parse.urlsplit(self.path).path
        owner.requests.append((self.command, self.path, dict(self.headers.items())))
        target = (owner.root / path.lstrip("/")).resolve()
        if not target.is_file() or owner.root.resolve() not in target.parents:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = target.read_bytes()
        status, start, end = 200, 0, len(data)
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and "," not in rng:
            first, _, last = rng[6:].partition("-")
            start = int(first)
            end = min(len(data), int(last) + 1) if last else len(data)
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Content-Type", "application/octet-stream")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start:end])

    def do_GET(self) -> None:
        self._serve(True)

    def do_HEAD(self) -> None:
        self._serve(False)


class StaticFileServer(BackgroundHTTPServer):
    """Blob storage for the ``redirect`` middleware: serves the registry's storage directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        super().__init__(_StaticHandler)


@dataclass
class Fault:
    """One fault a :class:`FaultProxy` injects into matching requests, ``times`` times (-1: always).

    ``kind``: ``"status"`` answers ``status`` with ``headers``/``body`` without asking the registry;
    ``"truncate"`` forwards, sends the headers and ``after_bytes`` bytes of the body, then drops
    the connection; ``"flip"`` forwards with the body byte at ``offset`` inverted; ``"no_range"``
    forwards without the Range header (the server answers 200 with the whole body); ``"corrupt"``
    forwards and, in a 200/206 body over 64 bytes, inverts bits of every 97th byte from its first
    third on (a corrupt answer of the right length);
    ``"no_multirange"`` does that only for Range headers naming several ranges; ``"hold"`` forwards
    once ``release`` is set (a request in flight as long as a test wants). ``range_pattern``: only
    requests whose Range header matches this regular expression (e.g. a read from
    the first 10 kB of a blob: ``r"^bytes=[0-9]{1,4}-"``).

    Hostile timing (the connection stays open until the client gives up or the proxy stops):
    ``"trickle"`` forwards, sends the headers and ``after_bytes`` bytes of the body, then
    ``chunk_size`` bytes every ``interval`` seconds; ``"stall"`` the same but no byte after the first
    ``after_bytes``; ``"trickle_headers"`` sends the status line and headers one byte every
    ``interval`` seconds, never finishing them; ``"drop"`` closes the connection without answering
    (a registry going down).
    """

    kind: str
    method: str | None = None
    path_contains: str = ""
    times: int = 1
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    after_bytes: int = 0
    offset: int = 0
    range_pattern: str = ""
    release: threading.Event | None = None
    interval: float = 0.0
    chunk_size: int = 1

    def matches(self, method: str, path: str, range_header: str = "") -> bool:
        return (self.times != 0 and (self.method in (None, method)) and self.path_contains in path
                and (not self.range_pattern or re.search(self.range_pattern, range_header) is not None))


@dataclass(frozen=True)
class ProxiedRequest:
    """A request as the proxy saw it, with the fault applied (if any)."""

    method: str
    path: str
    headers: dict[str, str]
    status: int
    fault: str | None


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "content-length"}


class _ProxyHandler(_QuietHandler):
    def _handle(self) -> None:
        import http.client

        owner: FaultProxy = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fault = owner._take_fault(self.command, self.path, self.headers.get("Range", ""))
        if fault and fault.kind == "hold" and fault.release is not None:
            fault.release.wait(120)
        if fault and fault.kind == "drop":
            owner._record(self.command, self.path, dict(self.headers.items()), 0, fault.kind)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault and fault.kind == "trickle_headers":
            owner._record(self.command, self.path, dict(self.headers.items()), 0, fault.kind)
            self.close_connection = True
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Padding: " + b"x" * 4096
            for byte in head:
                if owner.stopping.wait(fault.interval) or not _send(self.wfile, bytes([byte])):
                    return
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if fault and fault.kind == "status":
            owner._record(self.command, self.path, dict(self.headers.items()), fault.status, fault.kind)
            self.send_response(fault.status)
            for k, v in fault.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(fault.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(fault.body)
            return
        if fault and (fault.kind == "no_range"
                      or (fault.kind == "no_multirange" and "," in self.headers.get("Range", ""))):
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        conn = http.client.HTTPConnection("127.0.0.1", owner.upstream_port, timeout=30)
        try:
            if self.command in ("PUT", "POST", "PATCH"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body or None, headers=headers)
            upstream = conn.getresponse()
            data = upstream.read()
            status = upstream.status
            resp_headers = [(k, v) for k, v in upstream.getheaders() if k.lower() not in _HOP_BY_HOP]
            declared = upstream.getheader("Content-Length")
        finally:
            conn.close()
        owner._record(self.command, self.path, dict(self.headers.items()), status,
                      fault.kind if fault else None)
        if fault and fault.kind == "corrupt" and status in (200, 206) and len(data) > 64:
            mutable = bytearray(data)
            for i in range(len(mutable) // 3, len(mutable) - 8, 97):
                mutable[i] ^= 0x55
            data = bytes(mutable)
        if fault and fault.kind == "flip" and len(data) > fault.offset:
            data = data[:fault.offset] + bytes([data[fault.offset] ^ 0xFF]) + data[fault.offset + 1:]
        self.send_response(status)
        for k, v in resp_headers:
            self.send_header(k, v)
        head_length = declared if self.command == "HEAD" and declared else None
        self.send_header("Content-Length", head_length or str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault and fault.kind == "truncate":
            self.wfile.write(data[:fault.after_bytes])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault and fault.kind in ("trickle", "stall"):
            self.close_connection = True
            if not _send(self.wfile, data[:fault.after_bytes]):
                return
            if fault.kind == "stall":
                owner.stopping.wait(120)
                return
            for pos in range(fault.after_bytes, len(data), max(1, fault.chunk_size)):
                piece = data[pos:pos + max(1, fault.chunk_size)]
                if owner.stopping.wait(fault.interval) or not _send(self.wfile, piece):
                    return
            return
        self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle


def _send(out: Any, data: bytes) -> bool:
    """Write and flush; False once the client has gone."""
    try:
        out.write(data)
        out.flush()
    except OSError:
        return False
    return True


class FaultProxy(BackgroundHTTPServer):
    """An HTTP proxy in front of a plain-HTTP registry that records requests and injects faults.

    Clients use ``proxy.host`` instead of the registry's; the ``Host`` header is forwarded
    unchanged, so the registry's upload Locations point back at the proxy. ``requests`` records
    every request with its headers (the registry's own log has no Range header).
    """

    def __init__(self, upstream: RegistryServer) -> None:
        if upstream.tls:
            raise ValueError("FaultProxy fronts plain-HTTP registries only")
        self.upstream_port = upstream.port
        self.faults: list[Fault] = []
        self.requests: list[ProxiedRequest] = []
        self.stopping = threading.Event()      # ends the answers that trickle or stall
        self._lock = threading.Lock()
        super().__init__(_ProxyHandler)

    def stop(self) -> None:
        self.stopping.set()
        super().stop()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        """Stop injecting ``fault`` (the requests recorded so far stay)."""
        with self._lock:
            self.faults.remove(fault)

    @property
    def blob_gets(self) -> list[str | None]:
        """The Range header (None: none) of each blob GET so far, in order."""
        with self._lock:
            requests = list(self.requests)
        return [next((v for k, v in r.headers.items() if k.lower() == "range"), None)
                for r in requests if r.method == "GET" and "/blobs/sha256:" in r.path]

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    def _take_fault(self, method: str, path: str, range_header: str = "") -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path, range_header):
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
        return None

    def _record(self, method: str, path: str, headers: dict[str, str], status: int,
                fault: str | None) -> None:
        with self._lock:
            self.requests.append(ProxiedRequest(method, path, headers, status, fault))


