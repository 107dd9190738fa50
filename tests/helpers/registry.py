"""Debian's real ``docker-registry`` (distribution 2.8) for tests, in four configurations.

``RegistryServer`` starts ``docker-registry serve CONFIG`` on 127.0.0.1 with a free port, its own
config file (JSON is valid YAML) and storage directory under a temporary directory, waits until it
answers, and stops it. Its JSON request log (stderr) is parsed by :meth:`RegistryServer.access_log`.

Fixtures (session-scoped; started on first use, stopped at the end of the session; ``fault_proxy``
is function-scoped, in front of ``registry``):

``registry``
    plain HTTP, no auth.
``registry_tls_basic``
    TLS with a CA generated here (``.ca_file``), htpasswd basic auth (``.username``/``.password``).
``registry_token``
    plain HTTP with bearer-token auth; the token server is ``.token_server``
    (:mod:`tests.helpers.token_server`), users ``.username``/``.password``; anonymous pull is allowed.
``registry_redirect``
    plain HTTP whose blob GETs answer 307 to a small static file server over the storage
    directory (``.redirect_server``), the way S3-backed registries send clients to blob storage.
``fault_proxy``
    a :class:`FaultProxy` in front of ``registry`` (use ``fault_proxy.host`` in references).
``unique_repo``
    a repository name derived from the test id (the session registries are shared).

Facts about this server worth knowing when writing tests: a manifest GET without an OCI Accept
header answers 404 for OCI manifests; manifests are capped at 4 MiB; there is no referrers API;
single-POST upload with ``?digest=`` is unsupported; a PUT/PATCH needing auth gets 401 and a closed
connection; range GETs answer 206 (multipart/byteranges for several ranges); the server does not log
request headers: put a :class:`FaultProxy` in front (it records every request with its headers
and can inject faults) to see Range headers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.server
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest

REGISTRY_BINARY = "/usr/bin/docker-registry"
HTPASSWD_BINARY = "/usr/bin/htpasswd"


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class AccessLogEntry:
    """One request as the registry (or a RecordingProxy) saw it."""

    method: str
    path: str                    # path with query string, as sent
    status: int
    bytes: int                   # response body bytes written
    range: str | None = None     # never in the registry's own log; FaultProxy.requests has headers
    error_code: str | None = None
    duration_ms: float | None = None
    remote: str | None = None    # client address:port (one per TCP connection)


@dataclass(frozen=True)
class TLSFiles:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it (PEM files)."""

    ca_file: Path
    ca_key_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        """An SSL context trusting only this CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_tls_files(directory: Path, common_name: str = "lazypull test CA") -> TLSFiles:
    """Generate a CA and a server certificate for 127.0.0.1 and localhost (RSA 2048, one day)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def key_pem(k: rsa.RSAPrivateKey) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.NoEncryption())

    files = TLSFiles(directory / "ca.crt", directory / "ca.key", directory / "server.crt",
                     directory / "server.key")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.ca_key_file.write_bytes(key_pem(ca_key))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(key_pem(key))
    return files


def make_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """Write a bcrypt htpasswd file (the only hash the registry accepts) with apache2-utils."""
    lines = []
    for user, password in users.items():
        out = subprocess.run([HTPASSWD_BINARY, "-Bbn", "-C", "4", user, password],
                             check=True, capture_output=True, text=True).stdout
        lines.append(out.strip())
    path.write_text("\n".join(lines) + "\n")
    return path


class RegistryServer:
    """One ``docker-registry serve`` process with its own config, storage and logs.

    ``auth`` is the registry config's ``auth`` section (None: no auth), ``tls`` turns on HTTPS,
    ``redirect_base`` adds the ``redirect`` storage middleware, ``extra`` is merged into the config.
    """

    def __init__(self, workdir: Path | None = None, *, tls: TLSFiles | None = None,
                 auth: dict[str, Any] | None = None, redirect_base: str | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="lazypull-registry-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir = self.workdir / "storage"
        self.config_file = self.workdir / "config.yml"
        self.log_file = self.workdir / "registry.log"          # JSON app log incl. "response completed"
        self.stdout_file = self.workdir / "access.log"         # combined log format
        self.tls = tls
        self.auth = auth
        self.redirect_base = redirect_base
        self.extra = extra or {}
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses ------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:PORT``."""
        return f"{self.scheme}://{self.host}"

    @property
    def ca_file(self) -> Path | None:
        return self.tls.ca_file if self.tls else None

    # -- lifecycle ------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The registry configuration written to ``config.yml``."""
        http_cfg: dict[str, Any] = {
            "addr": f"127.0.0.1:{self.port}",
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self.tls:
            http_cfg["tls"] = {"certificate": str(self.tls.cert_file), "key": str(self.tls.key_file)}
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http_cfg,
        }
        if self.auth:
            cfg["auth"] = self.auth
        if self.redirect_base:
            cfg["middleware"] = {"storage": [{"name": "redirect",
                                              "options": {"baseurl": self.redirect_base}}]}
        cfg.update(self.extra)
        return cfg

    def start(self, timeout: float = 15.0) -> RegistryServer:
        """Start on a free port and wait until ``/v2/`` answers (retries if the port was taken)."""
        if self._proc is not None:
            return self
        last_err = ""
        for _ in range(5):
            self.port = free_port()
            self.storage_dir.mkdir(parents=True, exist_ok=True)
            self.config_file.write_text(json.dumps(self.config(), indent=2))
            with open(self.stdout_file, "ab") as out, open(self.log_file, "ab") as err:
                self._proc = subprocess.Popen([REGISTRY_BINARY, "serve", str(self.config_file)],
                                              stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            if self._wait_ready(timeout):
                return self
            last_err = self.log_file.read_text(errors="replace")[-2000:]
            self._terminate()
        raise RuntimeError(f"docker-registry did not start; log tail:\n{last_err}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if self.tls:
                        ctx = self.tls.client_context()
                        with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tsock:
                            tsock.sendall(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                            head = tsock.recv(64)
                    else:
                        sock.sendall(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                        head = sock.recv(64)
                if head.startswith(b"HTTP/1."):
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop(self) -> None:
        """Stop the process and remove the work directory if this object made it."""
        self._terminate()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- logs -----------------------------------------------------------------------------------
    def access_log(self, since: int = 0, *, settle: float = 0.03) -> list[AccessLogEntry]:
        """Completed requests in order, from the ``since``-th on.

        The registry writes a request's log line just after answering it, so this waits until
        the log has been quiet for ``settle`` seconds before reading.
        """
        size = -1
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            new_size = self.log_file.stat().st_size if self.log_file.exists() else 0
            if new_size == size:
                break
            size = new_size
            time.sleep(settle)
        entries = []
        for line in self.log_file.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not str(rec.get("msg", "")).startswith("response completed"):
                continue
            duration = str(rec.get("http.response.duration", ""))
            entries.append(AccessLogEntry(
                method=str(rec.get("http.request.method", "")),
                path=str(rec.get("http.request.uri", "")),
                status=int(rec.get("http.response.status", 0)),
                bytes=int(rec.get("http.response.written", 0)),
                error_code=rec.get("err.code"),
                duration_ms=_go_duration_ms(duration) if duration else None,
                remote=rec.get("http.request.remoteaddr"),
            ))
        return entries[since:]

    def log_mark(self) -> int:
        """The number of requests logged so far; pass it as ``since`` to see only newer ones."""
        return len(self.access_log())

    # -- raw helpers (independent of lazypull.registry, for setting up and checking tests) --------
    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes."""
        algo, hexdigest = digest.split(":", 1)
        return (self.storage_dir / "docker" / "registry" / "v2" / "blobs" / algo / hexdigest[:2]
                / hexdigest / "data")


def _go_duration_ms(text: str) -> float | None:
    """Parse a Go duration such as ``2.875424ms`` or ``1.2s`` into milliseconds."""
    units = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}
    for unit in ("ns", "µs", "us", "ms", "s", "m"):
        if text.endswith(unit):
            try:
                return float(text[: -len(unit)]) * units[unit]
            except ValueError:
                return None
    return None


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
    forwards without the Range header (the server answers 200 with the whole body);
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


# -- fixtures -----------------------------------------------------------------------------------

TEST_USER = "lazyuser"
TEST_PASSWORD = "s3cret-Pa55"


@dataclass
class AuthRegistry:
    """A registry fixture with the extras a test needs to talk to it."""

    server: RegistryServer
    username: str = TEST_USER
    password: str = TEST_PASSWORD
    extras: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        return getattr(self.__dict__["server"], name)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """Plain-HTTP docker-registry without auth (shared by the session: use unique repo names)."""
    server = RegistryServer(tmp_path_factory.mktemp("registry-plain")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry_tls_basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """docker-registry over TLS (``.ca_file``) with htpasswd basic auth (``.username``, ``.password``)."""
    work = tmp_path_factory.mktemp("registry-tls")
    tls = make_tls_files(work / "tls")
    htpasswd = make_htpasswd(work / "htpasswd", {TEST_USER: TEST_PASSWORD})
    server = RegistryServer(work / "reg", tls=tls,
                            auth={"htpasswd": {"realm": "lazypull-test", "path": str(htpasswd)}}).start()
    yield AuthRegistry(server)
    server.stop()


@pytest.fixture(scope="session")
def registry_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """docker-registry with bearer-token auth; ``.token_server`` issues tokens (anonymous: pull only)."""
    from tests.helpers.token_server import TokenServer

    work = tmp_path_factory.mktemp("registry-token")
    token_server = TokenServer(work / "token", users={TEST_USER: TEST_PASSWORD}).start()
    server = RegistryServer(work / "reg", auth={"token": token_server.registry_auth_config()}).start()
    yield AuthRegistry(server, extras={"token_server": token_server})
    server.stop()
    token_server.stop()


@pytest.fixture(scope="session")
def registry_redirect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """docker-registry whose blob GETs answer 307 to ``.redirect_server`` (a static file server)."""
    work = tmp_path_factory.mktemp("registry-redirect")
    storage = work / "reg" / "storage"
    storage.mkdir(parents=True)
    files = StaticFileServer(storage).start()
    server = RegistryServer(work / "reg", redirect_base=files.url + "/").start()
    yield AuthRegistry(server, extras={"redirect_server": files})
    server.stop()
    files.stop()


@pytest.fixture
def fault_proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the plain ``registry`` (fresh for each test: no leftover faults)."""
    proxy = FaultProxy(registry).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def unique_repo(request: pytest.FixtureRequest) -> str:
    """A repository name no other test uses, derived from the test's id (session registries are shared)."""
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"test/{name or 'repo'}-{digest}-{os.getpid() % 1000}"
