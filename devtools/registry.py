"""Debian's real ``docker-registry`` (distribution 2.8): the one launcher for tests, bench and the demo.

``RegistryServer`` starts ``docker-registry serve CONFIG`` on ``listen_host`` (127.0.0.1 by default;
bench and the demo's shaped link run it in a network namespace with ``exec_prefix``, e.g. ``ip netns
exec NS``) and a free port, with its own config file (JSON is valid YAML), storage directory (under
its work directory unless given: bench keeps pushed images across runs) and logs, waits until it
answers, and stops it. Its JSON request log (stderr) is parsed by :meth:`RegistryServer.access_log`,
the Apache-style access log (stdout) by :meth:`RegistryServer.requests_since` (bench's per-sample
counts). The pytest fixtures are in tests/helpers/registry.py; the small HTTP servers that go in
front of a registry (:class:`~devtools.httpservers.FaultProxy`, the redirect target) in
:mod:`devtools.httpservers`.

Facts about this server worth knowing when writing tests: a manifest GET without an OCI Accept
header answers 404 for OCI manifests; manifests are capped at 4 MiB; there is no referrers API;
single-POST upload with ``?digest=`` is unsupported; a PUT/PATCH needing auth gets 401 and a closed
connection; range GETs answer 206 (multipart/byteranges for several ranges); the server does not log
request headers: put a FaultProxy in front (it records every request with its headers and can
inject faults) to see Range headers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REGISTRY_BINARY = "/usr/bin/docker-registry"
HTPASSWD_BINARY = "/usr/bin/htpasswd"


class RegistryError(RuntimeError):
    """The registry could not be started; the message has its log tail."""


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class AccessLogEntry:
    """One request as the registry's JSON log shows it."""

    method: str
    path: str                    # path with query string, as sent
    status: int
    bytes: int                   # response body bytes written
    range: str | None = None     # never in the registry's own log; FaultProxy.requests has headers
    error_code: str | None = None
    duration_ms: float | None = None
    remote: str | None = None    # client address:port (one per TCP connection)


# 10.0.0.1 - - [27/Nov/2026:19:20:00 +0000] "GET /v2/x/blobs/sha256:.. HTTP/1.1" 206 1234 "" "ua"
_ACCESS_RE = re.compile(
    r'^(?P<client>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" '
    r"(?P<status>\d{3}) (?P<bytes>\d+|-)")


@dataclass(frozen=True)
class Request:
    """One line of the registry's access log (stdout, Apache combined format)."""

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
    ``listen_host``/``exec_prefix`` run it elsewhere (a network namespace's address, ``ip netns exec
    NS``), ``storage_dir`` keeps its blobs outside the work directory (kept at stop),
    ``descriptor_cache`` turns on the in-memory blob descriptor cache (bench: as a production registry),
    ``new_session`` keeps it out of the caller's process group (bench: a Ctrl-C reaches the harness,
    which stops it last).
    """

    def __init__(self, workdir: Path | None = None, *, tls: TLSFiles | None = None,
                 auth: dict[str, Any] | None = None, redirect_base: str | None = None,
                 extra: dict[str, Any] | None = None, listen_host: str = "127.0.0.1",
                 exec_prefix: Sequence[str] = (), storage_dir: Path | None = None,
                 descriptor_cache: bool = False, new_session: bool = False,
                 binary: str = REGISTRY_BINARY) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="lazypull-registry-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir = self.workdir / "storage" if storage_dir is None else storage_dir
        self.config_file = self.workdir / "config.yml"
        self.log_file = self.workdir / "registry.log"          # JSON app log incl. "response completed"
        self.stdout_file = self.workdir / "access.log"         # combined log format
        self.tls = tls
        self.auth = auth
        self.redirect_base = redirect_base
        self.extra = extra or {}
        self.listen_host = listen_host
        self.exec_prefix = list(exec_prefix)
        self.descriptor_cache = descriptor_cache
        self.new_session = new_session
        self.binary = binary
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses ------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """``HOST:PORT`` (``127.0.0.1:PORT`` by default), the registry part of image references."""
        return f"{self.listen_host}:{self.port}"

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
            "addr": self.host,
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
        if self.descriptor_cache:
            cfg["storage"]["cache"] = {"blobdescriptor": "inmemory"}
        if self.auth:
            cfg["auth"] = self.auth
        if self.redirect_base:
            cfg["middleware"] = {"storage": [{"name": "redirect",
                                              "options": {"baseurl": self.redirect_base}}]}
        cfg.update(self.extra)
        return cfg

    def start(self, timeout: float = 20.0) -> RegistryServer:
        """Start on a free port and wait until ``/v2/`` answers (retries if the port was taken)."""
        if self._proc is not None:
            return self
        if shutil.which(self.binary) is None:
            raise RegistryError(f"{self.binary} is not installed (scripts/install-deps.sh installs it)")
        last_err = ""
        for _ in range(5):
            self.port = free_port()
            self.storage_dir.mkdir(parents=True, exist_ok=True)
            self.config_file.write_text(json.dumps(self.config(), indent=2))
            with open(self.stdout_file, "ab") as out, open(self.log_file, "ab") as err:
                argv = [*self.exec_prefix, self.binary, "serve", str(self.config_file)]
                self._proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                              start_new_session=self.new_session)
            if self._wait_ready(timeout):
                return self
            last_err = self.log_file.read_text(errors="replace")[-2000:]
            self._terminate()
        raise RegistryError(f"docker-registry did not start; log tail:\n{last_err}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.listen_host, self.port), timeout=0.5) as sock:
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
        """Stop the process and remove the work directory if this object made it (a ``storage_dir``
        given to it stays)."""
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

    def blob_bytes_served(self, since: int = 0) -> int:
        """Bytes of blob GET responses (layers and configs) from the ``since``-th request on."""
        return sum(e.bytes for e in self.access_log(since) if e.method == "GET" and "/blobs/" in e.path)

    def mark(self) -> int:
        """A position in the access log (stdout); requests after it belong to what happens next."""
        try:
            return self.stdout_file.stat().st_size
        except FileNotFoundError:
            return 0

    def requests_since(self, mark: int, settle: float = 0.05) -> list[Request]:
        """Access-log requests after ``mark`` (the registry writes a line when the response is done)."""
        time.sleep(settle)
        with self.stdout_file.open("rb") as f:
            f.seek(mark)
            return parse_access_log(f.read().decode(errors="replace"))

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


def bench_registry(workdir: Path, storage_dir: Path, *, listen_host: str = "127.0.0.1",
                   exec_prefix: Sequence[str] = ()) -> RegistryServer:
    """The benchmark's registry: blobs in ``storage_dir`` (kept across runs), the in-memory blob
    descriptor cache of a production registry, out of the harness's process group."""
    return RegistryServer(workdir, storage_dir=storage_dir, listen_host=listen_host, exec_prefix=exec_prefix,
                          descriptor_cache=True, new_session=True)
