"""Scheme discovery: where plain HTTP is allowed, the HTTPS and plain ``/v2/`` checks go out together;
TLS contexts: the system CAs are loaded once."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.registry import RegistryClient
from lazypull.registry.errors import RegistryError
from tests.helpers.registry import make_tls_files

TLS_HANDSHAKE = 0x16


class _SlowRefusal:
    """A plain registry on loopback that refuses TLS only once the plain check has arrived (or after
    ``hold`` seconds): a client asking one scheme after the other sees the refusal first."""

    def __init__(self, hold: float = 5.0, status: bytes = b"200 OK") -> None:
        self.hold = hold
        self.status = status
        self.plain_seen = threading.Event()
        self.tls_refused_first = False     # a TLS attempt was refused before any plain check came
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            first = conn.recv(1)
            if not first:
                return
            if first[0] == TLS_HANDSHAKE:
                if not self.plain_seen.wait(self.hold):
                    self.tls_refused_first = True
                return                  # closing the connection refuses the handshake
            data = first
            while b"\r\n\r\n" not in data:
                more = conn.recv(4096)
                if not more:
                    return
                data += more
            if data.startswith(b"GET /v2/ "):
                self.plain_seen.set()
            conn.sendall(b"HTTP/1.1 " + self.status + b"\r\nContent-Length: 2\r\n"
                         b"Content-Type: application/json\r\nConnection: close\r\n\r\n{}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def slow_refusal() -> Iterator[_SlowRefusal]:
    server = _SlowRefusal()
    yield server
    server.close()


def test_plain_check_does_not_wait_for_the_tls_refusal(slow_refusal: _SlowRefusal) -> None:
    host = f"127.0.0.1:{slow_refusal.port}"
    with RegistryClient(insecure=True) as client:
        assert client.transport.base_url(host) == f"http://{host}"
    assert slow_refusal.plain_seen.is_set()
    assert not slow_refusal.tls_refused_first, "the plain /v2/ check waited for the TLS attempt to fail"


def test_plain_check_failure_is_reported_when_tls_is_refused() -> None:
    server = _SlowRefusal(status=b"404 Not Found")
    try:
        host = f"127.0.0.1:{server.port}"
        with RegistryClient(insecure=True) as client, pytest.raises(RegistryError, match=r"/v2/ check.*404"):
            client.transport.base_url(host)
    finally:
        server.close()



def test_hosts_without_cas_of_their_own_share_one_system_context(tmp_path: Path) -> None:
    """The system CA bundle is loaded once per client (~50 ms); a host with its own CAs gets its own."""
    tls = make_tls_files(tmp_path / "tls")
    certs_d = tmp_path / "certs.d"
    (certs_d / "own.example:5000").mkdir(parents=True)
    shutil.copy(tls.ca_file, certs_d / "own.example:5000" / "ca.crt")
    with RegistryClient(certs_dirs=[certs_d]) as client:
        transport = client.transport
        client.warm_up()
        shared = transport._ssl_context("a.example")
        assert transport._ssl_context("b.example:443") is shared
        own = transport._ssl_context("own.example:5000")
        assert own is not shared
        assert own.cert_store_stats()["x509_ca"] == shared.cert_store_stats()["x509_ca"] + 1
