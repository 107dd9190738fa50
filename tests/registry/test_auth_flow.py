"""The auth flow as a generator, driven by hand: protocol decisions without any I/O."""

from __future__ import annotations

import json
from collections.abc import Generator

import httpx
import pytest

from lazypull.registry import AuthError, StaticAuth
from lazypull.registry._auth import Authenticator

HOST = "reg.example"
SCOPES = ("repository:a/b:pull",)
BEARER = 'Bearer realm="https://auth.example/token",service="reg"'

Flow = Generator[httpx.Request, httpx.Response, httpx.Response]


def _answer(request: httpx.Request, status: int, body: bytes = b"", challenge: str | None = None,
            ) -> httpx.Response:
    headers = {"WWW-Authenticate": challenge} if challenge else {}
    return httpx.Response(status, headers=headers, content=body, request=request)


def _start(auth: Authenticator) -> tuple[Flow, httpx.Request]:
    request = httpx.Request("GET", f"https://{HOST}/v2/a/b/manifests/latest")
    flow = auth.flow(request, HOST, SCOPES)
    assert next(flow) is request
    return flow, request


def _finish(flow: Flow, response: httpx.Response) -> httpx.Response:
    with pytest.raises(StopIteration) as stop:
        flow.send(response)
    result: httpx.Response = stop.value.value
    return result


def test_basic_challenge_then_credentials_up_front() -> None:
    auth = Authenticator(StaticAuth("u", "p"))
    flow, request = _start(auth)
    retry = flow.send(_answer(request, 401, challenge='Basic realm="r"'))
    assert retry.headers["Authorization"] == "Basic dTpw"
    assert _finish(flow, _answer(retry, 200)).status_code == 200
    _, request2 = _start(auth)          # scheme known: sent with the first request
    assert request2.headers["Authorization"] == "Basic dTpw"


def test_bearer_post_then_get_fallback_and_cache() -> None:
    auth = Authenticator(StaticAuth("u", "p"))
    flow, request = _start(auth)
    post = flow.send(_answer(request, 401, challenge=BEARER))
    assert post.method == "POST" and post.url == "https://auth.example/token"
    form = dict(pair.split("=", 1) for pair in post.content.decode().split("&"))
    assert form["grant_type"] == "password" and form["username"] == "u" and form["service"] == "reg"
    get = flow.send(_answer(post, 405))
    assert get.method == "GET" and get.headers["Authorization"] == "Basic dTpw"
    assert get.url.params.get_list("scope") == list(SCOPES)
    retry = flow.send(_answer(get, 200, json.dumps({"token": "T1", "expires_in": 300}).encode()))
    assert retry is request and retry.headers["Authorization"] == "Bearer T1"
    assert _finish(flow, _answer(retry, 200)).status_code == 200
    _, again = _start(auth)
    assert again.headers["Authorization"] == "Bearer T1"


def test_anonymous_bearer_uses_get_without_credentials() -> None:
    flow, request = _start(Authenticator())
    get = flow.send(_answer(request, 401, challenge=BEARER))
    assert get.method == "GET" and "Authorization" not in get.headers


@pytest.mark.parametrize(("status", "body", "message"), [
    (200, b"<html>", "not JSON"),
    (200, b"[1]", "not a JSON object"),
    (200, b'{"expires_in": 3}', "no token"),
    (403, b'{"errors":[{"code":"DENIED","message":"nope"}]}', "token request refused.*DENIED"),
], ids=["html", "list", "no-token", "denied"])
def test_bad_token_answers(status: int, body: bytes, message: str) -> None:
    flow, request = _start(Authenticator())
    get = flow.send(_answer(request, 401, challenge=BEARER))
    with pytest.raises(AuthError, match=message):
        flow.send(_answer(get, status, body))


def test_hostile_realm_is_refused() -> None:
    flow, request = _start(Authenticator())
    with pytest.raises(AuthError, match="not an http"):
        flow.send(_answer(request, 401, challenge='Bearer realm="file:///etc/passwd"'))


def test_401_without_challenge_is_returned() -> None:
    flow, request = _start(Authenticator(StaticAuth("u", "p")))
    assert _finish(flow, _answer(request, 401)).status_code == 401
