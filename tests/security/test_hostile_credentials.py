"""Credential files and token servers are read with bounds (issue 9 follow-up).

``~/.docker/config.json`` and the containers ``auth.json`` files (podman's store reads each with the
same ``DockerConfigAuth``) may be replaced by a FIFO, a huge file or ``[[[[...`` nested past Python's
stack; a registry's token realm may answer the same. Each is one error line naming the file or the
realm's URL: no hang, no traceback, no unbounded read.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.registry import AuthError, CredentialsError, DockerConfigAuth, RegistryClient, RetryPolicy
from lazypull.registry._auth import MAX_TOKEN_ANSWER
from lazypull.store.auth import ChainedAuth
from tests.helpers.registry import BackgroundHTTPServer, Fault, FaultProxy
from tests.registry.conftest import make_image, push_image

REPO_ROOT = Path(__file__).resolve().parents[2]
DEEP = b'{"auths": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
HUGE = b"{" + b" " * (5 << 20) + b"}"       # valid JSON, over the 4 MiB bound


@pytest.mark.parametrize(("content", "expected"), [(DEEP, "nested too deeply"), (HUGE, "larger than")],
                         ids=["deep", "huge"])
def test_hostile_docker_config_is_one_error_naming_the_file(tmp_path: Path, content: bytes,
                                                            expected: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(CredentialsError, match=expected) as info:
        DockerConfigAuth(path).credentials("registry.example:5000")
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    # podman's auth.json files, read the same way
    auth_json = tmp_path / "auth.json"
    auth_json.write_bytes(content)
    with pytest.raises(CredentialsError, match=expected) as info:
        ChainedAuth([tmp_path / "absent.json", auth_json]).credentials("registry.example:5000")
    assert str(auth_json) in str(info.value)


def _logout(config_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_CONFIG=str(config_dir), LAZYPULL_ROOT=str(config_dir / "root"))
    return subprocess.run([sys.executable, "-m", "lazypull", "logout", "registry.example:5000"],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)


@pytest.mark.parametrize("kind", ["deep", "fifo"])
def test_logout_with_a_hostile_docker_config(tmp_path: Path, kind: str) -> None:
    """The command line: one line naming the file, exit 1; a FIFO nobody writes is not waited on."""
    path = tmp_path / "config.json"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(DEEP)
    result = _logout(tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], lines
    assert ("not a regular file" if kind == "fifo" else "nested too deeply") in lines[0]


class _HostileRealm(http.server.BaseHTTPRequestHandler):
    """A token realm answering 200 with the body its server was given."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body: bytes = self.server.owner.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class HostileRealm(BackgroundHTTPServer):
    def __init__(self, body: bytes) -> None:
        self.body = body
        super().__init__(_HostileRealm)


@pytest.fixture
def client_and_ref(fault_proxy: FaultProxy, unique_repo: str) -> Iterator[tuple[RegistryClient, str]]:
    client = RegistryClient(insecure=True, retry=RetryPolicy(attempts=1, base_delay=0.01, max_delay=0.01,
                                                             deadline=30.0))
    ref = f"{fault_proxy.host}/{unique_repo}:v1"
    push_image(client, ref, make_image((100,)))
    fault_proxy.clear()
    yield client, ref
    client.close()


@pytest.mark.parametrize(("body", "expected"), [
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    (b'{"token": "' + b"a" * (MAX_TOKEN_ANSWER + 10) + b'"}', f"exceeds {MAX_TOKEN_ANSWER} bytes"),
], ids=["deep", "huge"])
def test_hostile_token_answer_is_one_error_naming_the_realm(fault_proxy: FaultProxy,
                                                            client_and_ref: tuple[RegistryClient, str],
                                                            body: bytes, expected: str) -> None:
    client, ref = client_and_ref
    realm = HostileRealm(body).start()
    try:
        challenge = f'Bearer realm="{realm.url}/token",service="x"'
        fault = fault_proxy.add(Fault("status", method="GET", path_contains="/manifests/", status=401,
                                      times=-1, body=b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                                      headers={"WWW-Authenticate": challenge}))
        with pytest.raises(AuthError, match=expected) as info:
            client.get_manifest(ref)
        assert f"{realm.url}/token" in str(info.value) and "\n" not in str(info.value)
        fault.times = 0                 # the registry behaves again: nothing of the answer was kept
        assert client.get_manifest(ref)[0]
    finally:
        realm.stop()
