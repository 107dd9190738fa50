"""The registry fixtures themselves: each configuration answers as the real server does."""

from __future__ import annotations

import hashlib

import httpx

from tests.helpers.registry import AuthRegistry, RegistryServer


def _push_blob_raw(client: httpx.Client, base: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = client.post(f"{base}/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202, start.text
    location = httpx.URL(base).join(start.headers["Location"])
    done = client.put(location.copy_merge_params({"digest": digest}), content=data)
    assert done.status_code == 201, done.text
    return digest


def test_plain_registry_logs_requests(registry: RegistryServer, unique_repo: str) -> None:
    mark = registry.log_mark()
    with httpx.Client() as client:
        digest = _push_blob_raw(client, registry.url, unique_repo, b"hello world")
        got = client.get(f"{registry.url}/v2/{unique_repo}/blobs/{digest}", headers={"Range": "bytes=6-10"})
    assert got.status_code == 206 and got.content == b"world"
    log = registry.access_log(mark)
    assert [(e.method, e.status) for e in log] == [("POST", 202), ("PUT", 201), ("GET", 206)]
    assert log[-1].bytes == 5 and log[-1].path.endswith(digest)
    assert registry.blob_path(digest).read_bytes() == b"hello world"


def test_tls_basic_registry_requires_credentials(registry_tls_basic: AuthRegistry) -> None:
    reg = registry_tls_basic
    with httpx.Client(verify=reg.tls.client_context()) as client:
        anon = client.get(f"{reg.url}/v2/")
        assert anon.status_code == 401
        assert anon.headers["WWW-Authenticate"].startswith("Basic ")
        ok = client.get(f"{reg.url}/v2/", auth=(reg.username, reg.password))
        assert ok.status_code == 200
        bad = client.get(f"{reg.url}/v2/", auth=(reg.username, "wrong"))
        assert bad.status_code == 401


def test_token_registry_accepts_issued_tokens(registry_token: AuthRegistry, unique_repo: str) -> None:
    reg = registry_token
    with httpx.Client() as client:
        challenge = client.get(f"{reg.url}/v2/{unique_repo}/tags/list")
        assert challenge.status_code == 401
        assert 'Bearer realm="' + reg.token_server.realm in challenge.headers["WWW-Authenticate"]
        scope = f"repository:{unique_repo}:pull,push"
        tok = client.post(reg.token_server.realm, data={
            "grant_type": "password", "username": reg.username, "password": reg.password,
            "service": "lazypull-test-registry", "scope": scope, "client_id": "test"}).json()
        headers = {"Authorization": f"Bearer {tok['access_token']}"}
        client.headers.update(headers)
        digest = _push_blob_raw(client, reg.url, unique_repo, b"token blob")
        got = client.get(f"{reg.url}/v2/{unique_repo}/blobs/{digest}")
        assert got.status_code == 200 and got.content == b"token blob"
        anon = client.get(reg.token_server.realm, params={"service": "lazypull-test-registry",
                                                          "scope": scope}, headers={"Authorization": ""})
        anon_token = anon.json()["token"]
        push = client.post(f"{reg.url}/v2/{unique_repo}/blobs/uploads/",
                           headers={"Authorization": f"Bearer {anon_token}"})
        assert push.status_code == 401


def test_redirect_registry_sends_blob_gets_elsewhere(registry_redirect: AuthRegistry,
                                                     unique_repo: str) -> None:
    reg = registry_redirect
    with httpx.Client() as client:
        digest = _push_blob_raw(client, reg.url, unique_repo, b"redirected bytes")
        first = client.get(f"{reg.url}/v2/{unique_repo}/blobs/{digest}")
        assert first.status_code == 307
        assert first.headers["Location"].startswith(reg.redirect_server.url)
        final = client.get(first.headers["Location"])
        assert final.status_code == 200 and final.content == b"redirected bytes"
