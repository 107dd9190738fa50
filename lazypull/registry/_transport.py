"""HTTP for the registry client: scheme and TLS per host, auth, retries, error translation.

Layers, outermost first: :meth:`Transport.request` retries temporary failures (5xx, 429 with
Retry-After, connection errors) with exponential backoff and jitter, bounded by an attempt count
and a deadline (``retry=False``: one attempt, for callers that retry themselves); each attempt asks the
host's circuit breaker first (:mod:`._breaker`: fail at once while the host is known down), runs under a
:class:`Budget` (:mod:`._budget`: an overall deadline and a minimum rate for the whole exchange, body
included) and drives :meth:`Authenticator.flow`; every httpx exception is turned into a
:class:`RegistryError` by :func:`translate_errors`, the only place that knows them.

Each registry host is pinged once (``GET /v2/``) to learn its scheme and auth challenge. With
``insecure``, HTTPS is tried without verification and plain HTTP is the fallback when TLS or the
connection fails, as nerdctl does. CAs come from ``ca_files`` plus docker's and podman's
per-host directories (``/etc/docker/certs.d/HOST/*.crt``, ``/etc/containers/certs.d/HOST/*.crt``,
client certificates as ``*.cert`` + ``*.key``). Redirects of GET/HEAD are followed; httpx drops
the Authorization header when a redirect leaves the registry's origin.
"""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import logging
import random
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lazypull import __version__
from lazypull.registry._auth import Authenticator
from lazypull.registry._breaker import CircuitBreaker, is_down_signal
from lazypull.registry._budget import Budget, NetLimits, activate, guard_transport
from lazypull.registry._httpx import httpx
from lazypull.registry.errors import (
    ERROR_BODY_LIMIT,
    AuthError,
    NotFoundError,
    RegistryConnectionError,
    RegistryError,
    TooLargeError,
    parse_diagnostics,
)

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

USER_AGENT = f"lazypull/{__version__}"
DEFAULT_CERTS_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))
_NOT_FOUND_CODES = frozenset({"BLOB_UNKNOWN", "MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UPLOAD_UNKNOWN"})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry temporary failures.

    ``attempts``: total tries (default 5); ``base_delay``: first backoff in seconds (0.2),
    doubled each time up to ``max_delay`` (5.0) with full jitter; ``deadline``: give up when the
    next try would start later than this many seconds after the first (120.0).
    """

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0
    deadline: float = 120.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before try number ``attempt + 1`` (attempt counts from 0)."""
        if retry_after is not None:
            return max(float(retry_after), 0.0)      # the server knows best; the deadline bounds it
        ceiling = min(self.max_delay, self.base_delay * float(2 ** attempt))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@contextlib.contextmanager
def translate_errors(method: str, url: object) -> Iterator[None]:
    """Turn httpx exceptions raised inside into RegistryConnectionError / RegistryError."""
    try:
        yield
    except httpx.TimeoutException as err:
        detail = _short(err)
        reason = f"timed out ({type(err).__name__})" if "timed out" in detail.lower() else detail
        raise RegistryConnectionError(reason, method=method, url=url) from err
    except httpx.ConnectError as err:
        tls = _is_tls_error(err)
        raise RegistryConnectionError(f"{'TLS' if tls else 'connection'} failed: {_short(err)}",
                                      method=method, url=url, tls=tls, temporary=not tls) from err
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError) as err:
        raise RegistryConnectionError(f"connection broken: {_short(err)}", method=method, url=url) from err
    except httpx.TooManyRedirects as err:
        raise RegistryError("too many redirects", method=method, url=url) from err
    except httpx.HTTPError as err:
        raise RegistryError(f"request failed: {_short(err)}", method=method, url=url) from err
    except httpx.StreamError as err:
        raise RegistryError(f"request body problem: {err}", method=method, url=url) from err


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text[:300]


def _is_tls_error(err: BaseException) -> bool:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(err).lower()
    return any(word in text for word in ("ssl", "certificate", "tls", "wrong version number"))


def _certificate_refused(err: BaseException) -> bool:
    """Whether a TLS failure is the peer's certificate being refused (not a plain-HTTP peer)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_for_response(response: httpx.Response, what: str) -> RegistryError:
    """The RegistryError for an unexpected response; reads at most 64 KiB of body and closes it."""
    body = b""
    with contextlib.suppress(httpx.HTTPError, httpx.StreamError):
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= ERROR_BODY_LIMIT:
                break
    response.close()
    diags = parse_diagnostics(body[:ERROR_BODY_LIMIT])
    status = response.status_code
    codes = {d.code for d in diags}
    cls: type[RegistryError] = RegistryError
    if status == 404 or codes & _NOT_FOUND_CODES:
        cls = NotFoundError
    elif status in (401, 403) or codes & {"UNAUTHORIZED", "DENIED"}:
        cls = AuthError
    elif status == 413:
        cls = TooLargeError
    request = response.request
    return cls(what, status=status, method=request.method, url=request.url, diagnostics=diags,
               retry_after=_retry_after(response) if status in (429, 503) else None)


def is_loopback(host: str) -> bool:
    """Whether a registry host (``name[:port]``, ``[v6]:port``) is this machine's loopback."""
    name = host
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


#: Idle connections are kept this long (httpx's default is 5 s): a container started a while after its
#: image was mounted still finds them open, and the lazy layers' range reads skip a handshake each.
KEEPALIVE_EXPIRY = 30.0


class Transport:
    """Connections, TLS, scheme and auth for every host the client talks to. Thread-safe."""

    def __init__(self, *, insecure: bool | Sequence[str] = False, ca_files: Sequence[str | Path] = (),
                 authenticator: Authenticator | None = None, retry: RetryPolicy | None = None,
                 certs_dirs: Sequence[str | Path] = DEFAULT_CERTS_DIRS, timeout: float = 60.0,
                 user_agent: str = USER_AGENT, limits: NetLimits | None = None) -> None:
        self.insecure = insecure
        self.ca_files = tuple(Path(p) for p in ca_files)
        self.certs_dirs = tuple(Path(p) for p in certs_dirs)
        self.auth = authenticator or Authenticator()
        self.retry = retry or RetryPolicy()
        self.limits = limits or NetLimits()
        self.breaker = CircuitBreaker(self.limits)
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 15.0))
        self.user_agent = user_agent
        self._clients: dict[tuple[str, bool], httpx.Client] = {}
        self._schemes: dict[str, str] = {}
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}
        self._system_ctx: ssl.SSLContext | None = None     # shared by hosts without CAs of their own
        #: when a request last ended (monotonic): a transport idle longer than ``KEEPALIVE_EXPIRY`` has
        #: lost its keep-alive connections
        self.last_used = time.monotonic()

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def is_insecure(self, host: str) -> bool:
        """Whether ``host`` may use plain HTTP or unverified TLS."""
        if isinstance(self.insecure, bool):
            return self.insecure
        return host in self.insecure

    def allows_plain_http(self, host: str) -> bool:
        """Whether ``host`` may fall back to plain HTTP: insecure hosts, and loopback ones.

        Docker, containerd (``docker.MatchLocalhost``) and nerdctl talk plain HTTP to a registry on
        localhost, 127.0.0.0/8 or ::1 without any flag; TLS to such a host is still verified.
        """
        return self.is_insecure(host) or is_loopback(host)

    # -- clients per (host, verify) ---------------------------------------------------------------
    def warm_up(self) -> None:
        """Pay now what the first connection would (httpx imports httpcore when its first client is
        made, ~30 ms; the system CA bundle loads in ~50 ms): for a long-lived client, such as the mount
        server's, whose first request is on a container's critical path."""
        import httpcore  # noqa: F401 - imported for its side effect: loaded here, not on first use

        self._system_context()

    def _system_context(self) -> ssl.SSLContext:
        """The system CAs' context, made once (an SSLContext may be shared by any number of sockets)."""
        with self._lock:
            if self._system_ctx is None:
                self._system_ctx = ssl.create_default_context()
            return self._system_ctx

    def _ssl_context(self, host: str) -> ssl.SSLContext:
        host_dirs = [base / host for base in self.certs_dirs if (base / host).is_dir()]
        if not self.ca_files and not host_dirs:
            return self._system_context()
        ctx = ssl.create_default_context()
        for ca in self.ca_files:
            try:
                ctx.load_verify_locations(cafile=str(ca))
            except (OSError, ssl.SSLError) as err:
                raise RegistryError(f"cannot load CA file {ca}: {err}") from err
        for host_dir in host_dirs:
            for crt in sorted(host_dir.glob("*.crt")):
                try:
                    ctx.load_verify_locations(cafile=str(crt))
                except (OSError, ssl.SSLError) as err:
                    raise RegistryError(f"cannot load CA file {crt}: {err}") from err
            for cert in sorted(host_dir.glob("*.cert")):
                key = cert.with_suffix(".key")
                if not key.exists():
                    raise RegistryError(f"client certificate {cert} has no matching {key.name}")
                try:
                    ctx.load_cert_chain(str(cert), str(key))
                except (OSError, ssl.SSLError) as err:
                    raise RegistryError(f"cannot load client certificate {cert}: {err}") from err
        return ctx

    def client_for(self, host: str) -> httpx.Client:
        """The keep-alive httpx client for requests to ``host`` (its TLS settings)."""
        verify = not self.is_insecure(host)
        key = (host, verify)
        with self._lock:
            client = self._clients.get(key)
        if client is not None:
            return client
        ctx: ssl.SSLContext | bool = self._ssl_context(host) if verify else False
        # identity: byte offsets and digests are about the blob as stored, never a re-encoding
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "identity"}
        transport = guard_transport(httpx.HTTPTransport(
            verify=ctx, trust_env=False, limits=httpx.Limits(max_connections=64, max_keepalive_connections=32,
                                                             keepalive_expiry=KEEPALIVE_EXPIRY)))
        client = httpx.Client(transport=transport, timeout=self.timeout, headers=headers,
                              follow_redirects=False, trust_env=False)
        with self._lock:
            existing = self._clients.setdefault(key, client)
        if existing is not client:
            client.close()
        return existing

    # -- scheme + auth discovery ------------------------------------------------------------------
    def base_url(self, host: str, *, retry: bool = True, until: float | None = None) -> str:
        """``scheme://host`` for a registry, pinging it once to learn scheme and auth (``retry``: the
        ping retries temporary failures, else it is tried once; ``until``: a deadline it keeps)."""
        with self._lock:
            scheme = self._schemes.get(host)
            lock = self._host_locks.setdefault(host, threading.Lock())
        if scheme:
            return f"{scheme}://{host}"
        with lock:
            with self._lock:
                scheme = self._schemes.get(host)
            if not scheme:
                scheme = self._ping(host, retry, until)
                with self._lock:
                    self._schemes[host] = scheme
        return f"{scheme}://{host}"

    def _ping(self, host: str, retry: bool = True, until: float | None = None) -> str:
        """The scheme of ``host``, from ``GET /v2/`` (whose 401 also tells the auth scheme).

        Where plain HTTP is allowed, HTTPS is still preferred, as Docker does; but both are asked at
        once: a plain registry's refusal of TLS costs a connection and a round trip that the plain
        request need not wait for.
        """
        if not self.allows_plain_http(host):
            response = self._probe(host, "https", fallback=False, retry=retry, until=until)
            assert response is not None
            self.auth.learn(host, response)
            return "https"
        plain: list[httpx.Response | BaseException] = []

        def probe_plain() -> None:
            try:
                plain.append(self._probe(host, "http", fallback=False, retry=retry, until=until)
                             or RegistryError(f"{host}: no answer"))
            except BaseException as err:   # handed to the caller's thread
                plain.append(err)

        thread = threading.Thread(target=probe_plain, name=f"ping-{host}", daemon=True)
        thread.start()
        response = self._probe(host, "https", fallback=True, retry=retry, until=until)
        scheme = "https"
        if response is None:
            thread.join()
            outcome = plain[0]
            if isinstance(outcome, BaseException):
                raise outcome
            response, scheme = outcome, "http"
        self.auth.learn(host, response)
        return scheme

    def _probe(self, host: str, scheme: str, *, fallback: bool, retry: bool = True,
               until: float | None = None) -> httpx.Response | None:
        """``GET scheme://host/v2/`` with retries: its 200 or 401 answer, or None when ``fallback`` and
        ``scheme`` is HTTPS that ``host`` does not speak. Raises what must not fall back."""
        url = f"{scheme}://{host}/v2/"
        last: RegistryError | None = None
        attempts = self.retry.attempts if retry else 1
        for attempt in range(attempts):
            try:
                activate(Budget(self.limits, until=until))
                with translate_errors("GET", url):
                    response = self.client_for(host).get(url)
                    response.read()
            except RegistryConnectionError as err:
                last = err
                if scheme == "https" and not self.is_insecure(host) and _certificate_refused(err):
                    raise           # a loopback host serving TLS must still present a valid certificate
                if scheme == "https" and fallback:
                    return None     # try plain HTTP
                if err.tls:
                    raise
                if attempt + 1 < attempts:
                    time.sleep(self.retry.delay(attempt, None))
                continue
            if response.status_code in (200, 401):
                return response
            failure = error_for_response(response, f"registry {host} answered its /v2/ check")
            if not failure.temporary:
                raise failure
            last = failure
            if attempt + 1 < attempts:
                time.sleep(self.retry.delay(attempt, failure.retry_after))
        if scheme == "https" and fallback:
            return None
        assert last is not None
        raise last

    # -- requests -----------------------------------------------------------------------------------
    def request(self, method: str, host: str, path_or_url: str, *, scopes: tuple[str, ...],
                ok: Sequence[int] = (200,), what: str, params: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, content: bytes | None = None,
                stream: bool = False, retry: bool = True, expected: int = 0,
                until: float | None = None) -> httpx.Response:
        """Send with auth and retries; return a response whose status is in ``ok``.

        ``path_or_url`` is a path under the registry's base URL or an absolute URL (an upload
        Location). With ``stream`` the caller must close the response, and read its body in this
        thread (the body is bound by this request's budget). ``what`` names the operation in errors.
        ``expected``: the bytes the answer should carry (its deadline grows by them at the minimum
        rate); ``until``: a deadline (monotonic) of the caller's that no attempt outlives.
        """
        deadline = time.monotonic() + self.retry.deadline
        if until is not None:
            deadline = min(deadline, until)
        attempt = 0
        while True:
            try:
                return self._attempt(method, host, path_or_url, scopes, ok, what, params, headers, content,
                                     stream, retry, expected, until)
            except RegistryError as err:
                self.last_used = time.monotonic()
                attempt += 1
                delay = self.retry.delay(attempt - 1, err.retry_after)
                if not retry or not err.temporary or attempt >= self.retry.attempts \
                        or time.monotonic() + delay > deadline:
                    raise
                log.debug("retrying %s after %.2fs: %s", what, delay, err)
                time.sleep(delay)

    def _attempt(self, method: str, host: str, path_or_url: str, scopes: tuple[str, ...], ok: Sequence[int],
                 what: str, params: dict[str, str] | None, headers: dict[str, str] | None,
                 content: bytes | None, stream: bool, retry: bool, expected: int,
                 until: float | None) -> httpx.Response:
        """One try, admitted by the host's breaker and reported back to it. A failure that leaves the
        host down is raised as RegistryUnavailableError, so callers stop retrying at once."""
        trial = self.breaker.admit(host)
        try:
            response = self._exchange(method, host, path_or_url, scopes, ok, what, params, headers, content,
                                      stream, retry, expected, until)
        except BaseException as err:
            if self.breaker.record(host, err, trial=trial) and is_down_signal(err):
                raise self.breaker.unavailable(host) from err
            raise
        self.breaker.record(host, None, trial=trial)
        self.last_used = time.monotonic()
        return response

    def _exchange(self, method: str, host: str, path_or_url: str, scopes: tuple[str, ...], ok: Sequence[int],
                  what: str, params: dict[str, str] | None, headers: dict[str, str] | None,
                  content: bytes | None, stream: bool, retry: bool, expected: int,
                  until: float | None) -> httpx.Response:
        """Request and answer (its body too unless ``stream``) under a budget of their own."""
        base = self.base_url(host, retry=retry, until=until)    # the ping has its own budget
        url = path_or_url if path_or_url.startswith(("http://", "https://")) else base + path_or_url
        budget = Budget(self.limits, expected=expected + len(content or b""), until=until)
        activate(budget)
        response = self._send_once(method, host, url, scopes, params, headers, content)
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit():
            budget.expect(int(declared))
        if response.status_code in ok:
            if not stream:
                with translate_errors(method, response.request.url):
                    response.read()
            return response
        raise error_for_response(response, what)

    def _send_once(self, method: str, host: str, path_or_url: str, scopes: tuple[str, ...],
                   params: dict[str, str] | None, headers: dict[str, str] | None,
                   content: bytes | None) -> httpx.Response:
        url = httpx.URL(path_or_url)
        if params:
            url = url.copy_merge_params(params)
        request = httpx.Request(method, url, headers=headers, content=content)
        responses: list[httpx.Response] = []
        flow = self.auth.flow(request, host, scopes)
        try:
            with translate_errors(method, url):
                current = next(flow)
            while True:
                # Token requests go to the realm's host, with that host's TLS settings; an error names
                # the URL that failed (the realm's, for a token request).
                with translate_errors(current.method, current.url):
                    client = self.client_for(host if current is request else current.url.netloc.decode())
                    follow = current is request and current.method in ("GET", "HEAD")
                    responses.append(client.send(current, stream=True, follow_redirects=follow))
                    try:
                        current = flow.send(responses[-1])
                    except StopIteration as stop:
                        final: httpx.Response = stop.value
                        break
        except BaseException:
            # End the flow where it stopped: it lets go of its token lock, and forgets a challenge whose
            # token request failed (else the failure stays until the flow object is collected).
            flow.close()
            for response in responses:
                response.close()
            raise
        for response in responses:
            if response is not final:
                response.close()
        return final
