"""Registry authentication: credentials, challenges, and the bearer-token flow.

The flow is a generator in the style of ``httpx.Auth.auth_flow``: it yields requests (the
registry request, token requests) and receives their responses, so the protocol is kept apart
from I/O and retries. Once a host's scheme is known (from a ``/v2/`` ping or a first 401), the
credentials or a cached token are attached up front: the registry closes the connection on a
PUT/PATCH needing auth without reading the body.

Token requests follow containerd: with credentials, POST an OAuth2 form first
(``grant_type=password``, or ``refresh_token`` for identity tokens) and fall back to GET with
basic auth if the server answers 404/405/401 (docker's way); anonymous clients use GET.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from lazypull.registry._httpx import httpx
from lazypull.registry.errors import AuthError, parse_diagnostics, redact_url

CLIENT_ID = "lazypull"
_TOKEN_MARGIN = 30.0            # refresh tokens this long before they expire...
_MIN_TOKEN_LIFETIME = 60.0      # ... the default lifetime when the server does not say
#: A token server's answer is read up to this many bytes (a JWT is a few KiB; the answer is held whole).
MAX_TOKEN_ANSWER = 1 << 20


@dataclass(frozen=True)
class Credentials:
    """A username and password, or an identity (refresh) token when ``username == "<token>"``."""

    username: str
    password: str

    @property
    def identity_token(self) -> str | None:
        return self.password if self.username == "<token>" else None

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"


class CredentialSource(Protocol):
    """Where the client finds credentials for a registry host (``host[:port]``)."""

    def credentials(self, host: str) -> Credentials | None: ...


class Anonymous:
    """No credentials anywhere."""

    def credentials(self, host: str) -> Credentials | None:
        return None


@dataclass(frozen=True)
class StaticAuth:
    """The same credentials for the given hosts (all hosts if ``hosts`` is empty)."""

    username: str
    password: str
    hosts: tuple[str, ...] = ()

    def credentials(self, host: str) -> Credentials | None:
        if self.hosts and host not in self.hosts:
            return None
        return Credentials(self.username, self.password)


@dataclass(frozen=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` challenge."""

    scheme: str                      # "basic" or "bearer" (lowercased)
    params: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(s for s in self.params.get("scope", "").split(" ") if s)


_SCHEME = re.compile(r"[\s,]*([A-Za-z][A-Za-z0-9_-]*)(?=\s|,|$)")
_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*,?')


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` header value (one or several challenges)."""
    out: list[Challenge] = []
    pos = 0
    while True:
        m = _SCHEME.match(header, pos)
        if not m:
            break
        pos = m.end()
        params: dict[str, str] = {}
        while (pm := _PARAM.match(header, pos)) is not None:
            value = pm.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[pm.group(1).lower()] = value
            pos = pm.end()
        out.append(Challenge(m.group(1).lower(), params))
    return out


@dataclass
class _Token:
    value: str
    expires_at: float
    refresh_token: str | None = None


@dataclass
class _HostState:
    challenge: Challenge | None = None
    tokens: dict[tuple[str, ...], _Token] = field(default_factory=dict)
    refresh_token: str | None = None     # OAuth2 refresh token: identifies the user for any scope


class Authenticator:
    """Per-client auth state: each host's scheme, and bearer tokens cached per scope set.

    Thread-safe. :meth:`flow` drives one registry request through auth.
    """

    def __init__(self, source: CredentialSource | None = None) -> None:
        self.source: CredentialSource = source or Anonymous()
        self._hosts: dict[str, _HostState] = {}
        self._lock = threading.Lock()
        self._fetch_locks: dict[tuple[str, tuple[str, ...]], threading.Lock] = {}

    def _state(self, host: str) -> _HostState:
        with self._lock:
            return self._hosts.setdefault(host, _HostState())

    def learn(self, host: str, response: httpx.Response | None) -> None:
        """Record what a ``/v2/`` ping said: a 401 challenge, or (None / 200) no auth needed.

        A challenge that cannot be followed (a bearer realm that is not an http(s) URL) is not kept:
        the request that needs auth gets it again, and fails with a clear error then.
        """
        state = self._state(host)
        if response is not None and response.status_code == 401:
            challenge = _pick_challenge(response)
            state.challenge = challenge if challenge is not None and _unusable(challenge) is None else None

    def flow(self, request: httpx.Request, host: str,
             scopes: tuple[str, ...]) -> Generator[httpx.Request, httpx.Response, httpx.Response]:
        """Send ``request`` with auth for ``scopes``; on 401 learn the challenge and retry once.

        Yields the requests to send and receives their responses; returns the final response
        for ``request`` (which may still be a 401/403 for the caller to turn into an error).
        """
        state = self._state(host)
        if state.challenge is not None:
            yield from self._authorize_or_forget(request, host, state, scopes, force=False)
        response = yield request
        if response.status_code != 401:
            return response
        challenge = _pick_challenge(response)
        if challenge is None:
            return response
        problem = _unusable(challenge)
        if problem is not None:
            response.close()
            raise AuthError(f"{host} answered 401 with an unusable challenge: {problem}",
                            method=request.method, url=request.url)
        state.challenge = challenge
        bearer = challenge.scheme == "bearer"
        wanted = tuple(sorted(set(scopes) | set(challenge.scopes))) if bearer else scopes
        if not bearer and self.source.credentials(host) is None:
            return response
        # Learn (fetch a token) now, so that a retry of a streamed body goes out authorized.
        yield from self._authorize_or_forget(request, host, state, wanted, force=bearer)
        if not isinstance(request.stream, httpx.ByteStream):
            return response         # a streamed body cannot be sent twice: the caller retries
        response.close()
        return (yield request)

    def _authorize_or_forget(self, request: httpx.Request, host: str, state: _HostState,
                             scopes: tuple[str, ...], *, force: bool,
                             ) -> Generator[httpx.Request, httpx.Response, None]:
        """:meth:`_authorize`; if that fails (token server refused, unreachable, odd answer), the host's
        challenge is forgotten, so that the next request asks the registry afresh instead of repeating a
        failure the registry may no longer ask for (one bad answer must not poison the host)."""
        challenge = state.challenge
        try:
            yield from self._authorize(request, host, state, scopes, force=force)
        except BaseException:
            with self._lock:
                if state.challenge is challenge:
                    state.challenge = None
            raise

    def _authorize(self, request: httpx.Request, host: str, state: _HostState, scopes: tuple[str, ...],
                   *, force: bool) -> Generator[httpx.Request, httpx.Response, None]:
        challenge = state.challenge
        if challenge is None:
            return
        creds = self.source.credentials(host)
        if challenge.scheme == "basic":
            if creds is not None:
                request.headers["Authorization"] = creds.basic_header()
            return
        if challenge.scheme != "bearer":
            raise AuthError(f"unsupported auth scheme {challenge.scheme!r} for {host}")
        key = tuple(sorted(scopes))
        token = self._cached(state, key, force=force)
        if token is None:
            stale = state.tokens.get(key)
            # One fetch per host and scope set at a time; the others wait and reuse its token.
            with self._lock:
                fetch_lock = self._fetch_locks.setdefault((host, key), threading.Lock())
            with fetch_lock:
                token = self._cached(state, key, force=False)
                if token is None or (force and token is stale):
                    token = yield from self._fetch_token(host, challenge, key, creds, state.refresh_token)
                    with self._lock:
                        state.tokens[key] = token
                        state.refresh_token = token.refresh_token or state.refresh_token
        request.headers["Authorization"] = f"Bearer {token.value}"

    def _cached(self, state: _HostState, key: tuple[str, ...], *, force: bool) -> _Token | None:
        """A cached unexpired token for ``key`` (or for a superset of it); None if forced."""
        if force:
            return None
        now = time.monotonic()
        with self._lock:
            token = state.tokens.get(key)
            if token is not None and token.expires_at > now:
                return token
            # A token for more (pull,push) serves a request for less (pull).
            return next((t for k, t in state.tokens.items() if t.expires_at > now and _covers(k, key)), None)

    def _fetch_token(self, host: str, challenge: Challenge, scopes: tuple[str, ...],
                     creds: Credentials | None,
                     refresh: str | None) -> Generator[httpx.Request, httpx.Response, _Token]:
        problem = _unusable(challenge)
        if problem is not None:
            raise AuthError(f"challenge from {host}: {problem}")
        realm = challenge.realm
        assert realm is not None
        service = challenge.service
        refresh = refresh or (creds.identity_token if creds else None)
        if creds is not None or refresh:
            form = {"client_id": CLIENT_ID, "access_type": "offline"}
            if service:
                form["service"] = service
            if refresh:
                form |= {"grant_type": "refresh_token", "refresh_token": refresh}
            else:
                assert creds is not None
                form |= {"grant_type": "password", "username": creds.username, "password": creds.password}
            body = urllib.parse.urlencode([*form.items(), *(("scope", sc) for sc in scopes)])
            post = httpx.Request("POST", realm, content=body.encode(),
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
            response = yield post
            answer = _read_answer(response, realm)
            if response.status_code == 200:
                return _parse_token(answer, realm, refresh, "POST")
            if response.status_code not in (401, 404, 405) or (refresh and creds is None):
                raise _token_error(response, answer, realm)
        query: list[tuple[str, str | int | float | bool | None]] = [("service", service)] if service else []
        query += [("scope", s) for s in scopes]
        get = httpx.Request("GET", realm, params=httpx.QueryParams(query))
        if creds is not None and creds.identity_token is None:
            get.headers["Authorization"] = creds.basic_header()
        response = yield get
        answer = _read_answer(response, realm)
        if response.status_code != 200:
            raise _token_error(response, answer, realm)
        return _parse_token(answer, realm, None, "GET")


def _parse_scope(scope: str) -> tuple[str, str, frozenset[str]]:
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return kind, name, frozenset(actions.split(","))


def _covers(have: tuple[str, ...], want: tuple[str, ...]) -> bool:
    """Whether a token asked for scopes ``have`` was asked for everything in ``want``."""
    parsed = [_parse_scope(s) for s in have]
    for kind, name, actions in map(_parse_scope, want):
        if not any(k == kind and n == name and actions <= a for k, n, a in parsed):
            return False
    return True


def _pick_challenge(response: httpx.Response) -> Challenge | None:
    challenges: list[Challenge] = []
    for value in response.headers.get_list("www-authenticate"):
        challenges.extend(parse_challenges(value))
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme:
                return c
    return None


def _unusable(challenge: Challenge) -> str | None:
    """Why a challenge cannot be followed (None: it can): a bearer realm must be an http(s) URL."""
    if challenge.scheme == "basic":
        return None
    if challenge.scheme != "bearer":
        return f"unsupported auth scheme {challenge.scheme[:40]!r}"
    realm = challenge.realm
    if not realm:
        return "bearer challenge has no realm"
    try:
        parts = urllib.parse.urlsplit(realm)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return f"bearer realm {redact_url(realm)[:200]!r} is not an http(s) URL"
    return None


def _read_answer(response: httpx.Response, realm: str) -> bytes:
    """A token server's answer, at most :data:`MAX_TOKEN_ANSWER` bytes (a hostile one may be endless)."""
    body = bytearray()
    for piece in response.iter_bytes():
        body += piece
        if len(body) > MAX_TOKEN_ANSWER:
            raise AuthError(f"token server answer exceeds {MAX_TOKEN_ANSWER} bytes",
                            method=response.request.method, url=realm)
    return bytes(body)


def _token_error(response: httpx.Response, answer: bytes, realm: str) -> AuthError:
    return AuthError("token request refused", status=response.status_code, method=response.request.method,
                     url=realm, diagnostics=parse_diagnostics(answer))


def _parse_token(answer: bytes, realm: str, refresh: str | None, method: str) -> _Token:
    try:
        doc = json.loads(answer)
    except ValueError as err:
        raise AuthError(f"token server answer is not JSON: {err}", method=method, url=realm) from err
    except RecursionError as err:       # [[[[... deeper than the interpreter's stack
        raise AuthError("token server answer is not valid JSON: nested too deeply", method=method,
                        url=realm) from err
    if not isinstance(doc, dict):
        raise AuthError("token server answer is not a JSON object", method=method, url=realm)
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or not value:
        raise AuthError("token server answer has no token", method=method, url=realm)
    expires_in = doc.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 \
        else _MIN_TOKEN_LIFETIME
    margin = min(_TOKEN_MARGIN, lifetime / 4)
    new_refresh = doc.get("refresh_token")
    return _Token(value, time.monotonic() + lifetime - margin,
                  new_refresh if isinstance(new_refresh, str) and new_refresh else refresh)


def repository_scopes(repository: str, actions: Iterable[str]) -> tuple[str, ...]:
    """``repository:NAME:pull,push`` for the token request."""
    return (f"repository:{repository}:{','.join(actions)}",)
