"""Authentication against the real registry: basic over TLS (generated CA), bearer tokens, config."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from lazypull.cli.main import cli
from lazypull.registry import (
    AuthError,
    DockerConfigAuth,
    RegistryClient,
    RegistryConnectionError,
    StaticAuth,
    parse_challenges,
)
from tests.helpers.registry import AuthRegistry
from tests.registry.conftest import FAST_RETRY, make_image, push_image, sha256


@pytest.fixture
def token_server_settings(registry_token: AuthRegistry) -> Iterator[None]:
    """Restore the shared token server's switches after a test changes them."""
    ts = registry_token.token_server
    saved = (ts.post_enabled, ts.expires_in, ts.anonymous_pull)
    yield
    ts.post_enabled, ts.expires_in, ts.anonymous_pull = saved


# -- challenges -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "expected"), [
    ('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"',
     [("bearer", {"realm": "https://auth.example/token", "service": "registry.example",
                  "scope": "repository:a/b:pull"})]),
    ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
    ('Basic realm="a", Bearer realm="b",error="insufficient_scope"',
     [("basic", {"realm": "a"}), ("bearer", {"realm": "b", "error": "insufficient_scope"})]),
    ('Bearer realm="x\\"y", service=unquoted', [("bearer", {"realm": 'x"y', "service": "unquoted"})]),
    ("", []),
], ids=["bearer", "basic", "two", "escapes", "empty"])
def test_parse_challenges(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert [(c.scheme, c.params) for c in parse_challenges(header)] == expected


# -- basic auth over TLS ----------------------------------------------------------------------------

def test_basic_auth_over_tls_with_ca(registry_tls_basic: AuthRegistry, unique_repo: str) -> None:
    reg = registry_tls_basic
    ref = f"{reg.host}/{unique_repo}:v1"
    image = make_image()
    with RegistryClient(ca_files=[reg.ca_file], auth=StaticAuth(reg.username, reg.password),
                        retry=FAST_RETRY, chunk_size=2048) as client:
        push_image(client, ref, image)
        mark = reg.server.log_mark()
        assert client.get_manifest(ref)[0] == image.manifest
        blob = os.urandom(5000)
        client.push_blob(ref, sha256(blob), len(blob), blob)      # chunked: PATCHes need auth up front
        log = reg.server.access_log(mark)
        assert log and all(e.status != 401 for e in log), log


def test_tls_without_the_ca_is_refused(registry_tls_basic: AuthRegistry) -> None:
    reg = registry_tls_basic
    with RegistryClient(auth=StaticAuth(reg.username, reg.password), retry=FAST_RETRY,
                        certs_dirs=()) as client, pytest.raises(RegistryConnectionError) as info:
        client.get_manifest(f"{reg.host}/x/y:v1")
    assert info.value.tls and not info.value.temporary
    assert reg.host in str(info.value)


def test_insecure_accepts_unverified_tls(registry_tls_basic: AuthRegistry, unique_repo: str) -> None:
    reg = registry_tls_basic
    ref = f"{reg.host}/{unique_repo}:v1"
    with RegistryClient(insecure=True, auth=StaticAuth(reg.username, reg.password), certs_dirs=()) as client:
        push_image(client, ref, make_image((10,)))
        assert client.transport.base_url(reg.host).startswith("https://")


def test_certs_d_directory_supplies_the_ca(registry_tls_basic: AuthRegistry, unique_repo: str,
                                           tmp_path: Path) -> None:
    reg = registry_tls_basic
    host_dir = tmp_path / "certs.d" / reg.host
    host_dir.mkdir(parents=True)
    (host_dir / "ca.crt").write_bytes(Path(reg.ca_file).read_bytes())
    auth = StaticAuth(reg.username, reg.password)
    with RegistryClient(auth=auth, certs_dirs=[tmp_path / "certs.d"]) as client:
        push_image(client, f"{reg.host}/{unique_repo}:v1", make_image((10,)))


@pytest.mark.parametrize("password", [None, "wrong"], ids=["anonymous", "bad-password"])
def test_basic_auth_refusal_is_an_auth_error(registry_tls_basic: AuthRegistry, password: str | None) -> None:
    reg = registry_tls_basic
    auth = StaticAuth(reg.username, password) if password else None
    with RegistryClient(ca_files=[reg.ca_file], auth=auth, retry=FAST_RETRY) as client, \
            pytest.raises(AuthError) as info:
        client.get_manifest(f"{reg.host}/some/repo:v1")
    assert info.value.status == 401
    assert reg.password not in str(info.value)


# -- bearer tokens ----------------------------------------------------------------------------------

def test_token_auth_push_and_anonymous_pull(registry_token: AuthRegistry, unique_repo: str) -> None:
    reg = registry_token
    ts = reg.token_server
    ref = f"{reg.host}/{unique_repo}:v1"
    image = make_image()
    seen = len(ts.requests)
    with RegistryClient(insecure=True, auth=StaticAuth(reg.username, reg.password)) as client:
        push_image(client, ref, image)
    asked = ts.requests[seen:]
    assert asked and all(r.method == "POST" and r.grant_type == "password" for r in asked)
    assert {s for r in asked for s in r.scopes} == {f"repository:{unique_repo}:pull,push"}
    assert len(asked) == 1          # one token, cached for every request of the push
    with RegistryClient(insecure=True) as anon:
        assert anon.get_manifest(ref)[0] == image.manifest
        with pytest.raises(AuthError) as info:
            anon.push_blob(ref, sha256(b"new"), 3, b"new")
        assert info.value.status == 401
    assert ts.requests[-1].method == "GET" and ts.requests[-1].username is None


def test_token_auth_chunked_push_and_cross_repository_mount(registry_token: AuthRegistry,
                                                            unique_repo: str) -> None:
    reg = registry_token
    blob = os.urandom(10_000)
    src, dst = f"{reg.host}/{unique_repo}-a:v1", f"{reg.host}/{unique_repo}-b:v1"
    auth = StaticAuth(reg.username, reg.password)
    with RegistryClient(insecure=True, auth=auth, chunk_size=4096) as client:
        client.push_blob(src, sha256(blob), len(blob), blob)
        mark = reg.server.log_mark()
        client.push_blob(dst, sha256(blob), len(blob), b"unused", mount_from=[f"{unique_repo}-a"])
        assert [(e.method, e.status) for e in reg.server.access_log(mark)] == [("HEAD", 404), ("POST", 201)]
        assert client.read_range(dst, sha256(blob), 0, 100) == blob[:100]
    scopes = reg.token_server.requests[-1].scopes
    assert set(scopes) >= {f"repository:{unique_repo}-a:pull", f"repository:{unique_repo}-b:pull,push"}


def test_token_post_falls_back_to_get(registry_token: AuthRegistry, unique_repo: str,
                                      token_server_settings: None) -> None:
    reg = registry_token
    reg.token_server.post_enabled = False
    seen = len(reg.token_server.requests)
    with RegistryClient(insecure=True, auth=StaticAuth(reg.username, reg.password)) as client:
        push_image(client, f"{reg.host}/{unique_repo}:v1", make_image((10,)))
    methods = [(r.method, r.status) for r in reg.token_server.requests[seen:]]
    assert methods == [("POST", 404), ("GET", 200)]
    assert reg.token_server.requests[-1].username == reg.username


def test_token_refresh_on_expiry_and_on_401(registry_token: AuthRegistry, unique_repo: str,
                                            token_server_settings: None) -> None:
    reg = registry_token
    ts = reg.token_server
    ts.expires_in = 1
    ref = f"{reg.host}/{unique_repo}:v1"
    with RegistryClient(insecure=True, auth=StaticAuth(reg.username, reg.password)) as client:
        push_image(client, ref, make_image((10,)))
        seen = len(ts.requests)
        time.sleep(1.0)
        client.get_manifest(ref)
        assert [r.grant_type for r in ts.requests[seen:]] == ["refresh_token"]
        ts.expires_in = 300
        client.get_manifest(f"{reg.host}/{unique_repo}:v1")
        # The registry refuses a token the client believes valid: the client fetches a new one.
        state = client.transport.auth._state(reg.host)
        for token in state.tokens.values():
            token.value = "garbage"
            token.expires_at = time.monotonic() + 300
        seen = len(ts.requests)
        assert client.get_manifest(ref)[0]
        assert len(ts.requests) == seen + 1


def test_token_server_refusal(registry_token: AuthRegistry) -> None:
    reg = registry_token
    with RegistryClient(insecure=True, auth=StaticAuth(reg.username, "wrong"), retry=FAST_RETRY) as client, \
            pytest.raises(AuthError, match="token request refused") as info:
        client.get_manifest(f"{reg.host}/a/b:v1")
    assert info.value.status == 401


# -- docker config ----------------------------------------------------------------------------------

def _auth_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_docker_config_auths(registry_tls_basic: AuthRegistry, unique_repo: str, tmp_path: Path) -> None:
    reg = registry_tls_basic
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {f"https://{reg.host}": _auth_entry(reg.username, reg.password),
                                            "other.example": _auth_entry("x", "y")}}))
    with RegistryClient(ca_files=[reg.ca_file], auth=DockerConfigAuth(config)) as client:
        push_image(client, f"{reg.host}/{unique_repo}:v1", make_image((10,)))


def test_docker_config_credential_helper(registry_tls_basic: AuthRegistry, unique_repo: str,
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = registry_tls_basic
    helper = tmp_path / "bin" / "docker-credential-lazytest"
    helper.parent.mkdir()
    helper.write_text("#!/bin/sh\n"
                      '[ "$1" = get ] || exit 1\n'
                      'read server\n'
                      f'[ "$server" = "{reg.host}" ] || '
                      '{ echo "credentials not found in native keychain"; exit 1; }\n'
                      f'echo \'{{"ServerURL": "{reg.host}", "Username": "{reg.username}", '
                      f'"Secret": "{reg.password}"}}\'\n')
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credHelpers": {reg.host: "lazytest"}}))
    auth = DockerConfigAuth(config)
    assert auth.credentials("elsewhere.example") is None
    with RegistryClient(ca_files=[reg.ca_file], auth=auth) as client:
        push_image(client, f"{reg.host}/{unique_repo}:v1", make_image((10,)))


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "cannot read docker config"),
    ('{"auths": {"h.example": {"auth": "!!!"}}}', "bad base64"),
    ('{"auths": {"h.example": {"auth": "' + base64.b64encode(b"nocolon").decode() + '"}}}', "has no ':'"),
    ('{"credsStore": "does-not-exist-lazypull"}', "docker-credential-does-not-exist-lazypull"),
], ids=["json", "base64", "colon", "missing-helper"])
def test_docker_config_errors_are_clear(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "config.json"
    config.write_text(content)
    with pytest.raises(AuthError, match=message):
        DockerConfigAuth(config).credentials("h.example")


def test_login_and_logout_cli(registry_token: AuthRegistry, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    reg = registry_token
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    runner = CliRunner()
    bad = runner.invoke(cli, ["login", "--insecure-registry", reg.host, "-u", reg.username,
                              "--password-stdin"], input="wrong\n")
    assert bad.exit_code == 1 and "token request refused" in bad.output
    assert not (tmp_path / "docker" / "config.json").exists()
    ok = runner.invoke(cli, ["login", "--insecure-registry", reg.host, "-u", reg.username,
                             "--password-stdin"], input=reg.password + "\n")
    assert ok.exit_code == 0, ok.output
    assert "Login Succeeded" in ok.output
    config_file = tmp_path / "docker" / "config.json"
    doc = json.loads(config_file.read_text())
    assert doc["auths"][reg.host] == _auth_entry(reg.username, reg.password)
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert DockerConfigAuth().credentials(reg.host) is not None
    out = runner.invoke(cli, ["logout", reg.host])
    assert out.exit_code == 0 and "Removing login credentials" in out.output
    assert reg.host not in json.loads(config_file.read_text())["auths"]
    again = runner.invoke(cli, ["logout", reg.host])
    assert "Not logged in" in again.output


def test_login_keeps_other_config_keys(registry_token: AuthRegistry, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    reg = registry_token
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"a.example": {"auth": "eDp5"}},
                                                      "psFormat": "table"}))
    result = CliRunner().invoke(cli, ["--insecure-registry", "login", f"http://{reg.host}/v1/",
                                      "-u", reg.username, "-p", reg.password])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["psFormat"] == "table" and set(doc["auths"]) == {"a.example", reg.host}
    with RegistryClient(insecure=True, auth=DockerConfigAuth()) as client:
        blob = b"pushed with saved credentials"
        client.push_blob(f"{reg.host}/t/login-keeps", sha256(blob), len(blob), io.BytesIO(blob).getvalue())


def test_identity_token_in_config_uses_refresh_grant(registry_token: AuthRegistry, unique_repo: str,
                                                     tmp_path: Path) -> None:
    reg = registry_token
    ts = reg.token_server
    refresh = ts.issue(reg.username, (), None, with_refresh=True)["refresh_token"]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {reg.host: {"auth": "", "identitytoken": refresh}}}))
    seen = len(ts.requests)
    with RegistryClient(insecure=True, auth=DockerConfigAuth(config)) as client:
        push_image(client, f"{reg.host}/{unique_repo}:v1", make_image((10,)))
    asked = ts.requests[seen:]
    assert [(r.method, r.grant_type, r.username) for r in asked] == [("POST", "refresh_token", reg.username)]


@pytest.mark.parametrize(("server", "host"), [
    ("https://index.docker.io/v1/", "docker.io"),
    ("docker.io", "docker.io"),
    ("registry-1.docker.io", "docker.io"),
    ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
    ("ghcr.io", "ghcr.io"),
])
def test_server_names_normalise(server: str, host: str) -> None:
    from lazypull.registry import normalize_server

    assert normalize_server(server) == host


def test_docker_hub_credentials_match_its_api_host(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": _auth_entry("hubuser", "pw")}}))
    auth = DockerConfigAuth(config)
    for host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        creds = auth.credentials(host)
        assert creds is not None and creds.username == "hubuser"
    assert auth.credentials("ghcr.io") is None


def test_login_to_plain_http_on_loopback_needs_no_flag(registry_token: AuthRegistry, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Like Docker and nerdctl: a registry on 127.0.0.0/8 may use plain HTTP without --insecure-registry."""
    reg = registry_token
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    result = CliRunner().invoke(cli, ["login", reg.host, "-u", reg.username, "--password-stdin"],
                                input=reg.password)
    assert result.exit_code == 0, result.output
    assert reg.host in json.loads((tmp_path / "config.json").read_text())["auths"]


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1:5000", True), ("127.1.2.3", True), ("localhost:5000", True), ("[::1]:5000", True),
    ("::1", True), ("10.0.0.1:5000", False), ("registry.example:5000", False), ("docker.io", False),
    ("localhost.example", False),
])
def test_plain_http_fallback_only_for_loopback_or_insecure(host: str, loopback: bool) -> None:
    from lazypull.registry._transport import Transport

    assert Transport().allows_plain_http(host) is loopback
    assert Transport(insecure=True).allows_plain_http(host) is True
    assert Transport(insecure=[host]).allows_plain_http(host) is True
