"""Fixtures around Debian's real ``docker-registry``; the launcher and the small servers live in
:mod:`devtools.registry` and :mod:`devtools.httpservers` (shared with bench and the demo), re-exported here.

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
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from devtools.httpservers import (
    BackgroundHTTPServer,
    Fault,
    FaultProxy,
    ProxiedRequest,
    StaticFileServer,
    _QuietHandler,
)
from devtools.registry import (
    AccessLogEntry,
    RegistryServer,
    TLSFiles,
    free_port,
    make_htpasswd,
    make_tls_files,
)

__all__ = ["TEST_PASSWORD", "TEST_USER", "AccessLogEntry", "AuthRegistry", "BackgroundHTTPServer", "Fault",
           "FaultProxy", "ProxiedRequest", "RegistryServer", "StaticFileServer", "TLSFiles", "_QuietHandler",
           "fault_proxy", "free_port", "make_htpasswd", "make_tls_files", "registry", "registry_redirect",
           "registry_tls_basic", "registry_token", "unique_repo"]


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
