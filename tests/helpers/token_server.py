"""A small Docker/OCI token server for tests: the registry's ``auth.token`` realm.

It signs JWTs (RS256, PyJWT) with a key whose self-signed certificate goes into the registry's
``auth.token.rootcertbundle``; the JWT header's ``kid`` is the libtrust key id the registry derives
from that certificate. It answers both ways clients ask:

* ``GET /token?service=...&scope=...`` with optional basic auth (docker, skopeo), and
* ``POST /token`` with an OAuth2 form (``grant_type=password`` or ``refresh_token``; containerd).

Anonymous clients get pull access only (if ``anonymous_pull``); users get pull and push. Switches
let tests check client behaviour: ``post_enabled=False`` answers POST with 404 (the client must fall
back to GET), ``expires_in`` makes short-lived tokens. Every request is recorded in ``.requests``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.httpservers import BackgroundHTTPServer, _QuietHandler

ISSUER = "lazypull-test-issuer"
SERVICE = "lazypull-test-registry"


@dataclass(frozen=True)
class TokenRequest:
    """What a client asked the token server."""

    method: str
    username: str | None        # authenticated user (None: anonymous or bad credentials)
    scopes: tuple[str, ...]
    service: str | None
    grant_type: str | None      # POST only
    status: int


def libtrust_key_id(public_key_der: bytes) -> str:
    """The key id docker's libtrust (and the registry) gives a public key: base32 of SHA-256[:30]."""
    b32 = base64.b32encode(hashlib.sha256(public_key_der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


class _TokenHandler(_QuietHandler):
    def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        owner: TokenServer = self.server.owner  # type: ignore[attr-defined]
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        user: str | None = None
        auth = self.headers.get("Authorization", "")
        bad_credentials = False
        if auth.lower().startswith("basic "):
            try:
                name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                name, password = "", ""
            if owner.users.get(name) == password:
                user = name
            else:
                bad_credentials = True
        scopes = tuple(s for v in query.get("scope", []) for s in v.split(" ") if s)
        service = query.get("service", [None])[0]
        if bad_credentials or (user is None and not owner.anonymous_pull):
            owner._record("GET", None, scopes, service, None, 401)
            self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                        {"WWW-Authenticate": 'Basic realm="token"'})
            return
        owner._record("GET", user, scopes, service, None, 200)
        self._reply(200, owner.issue(user, scopes, service, with_refresh=False))

    def do_POST(self) -> None:
        owner: TokenServer = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        scopes = tuple(s for v in form.get("scope", []) for s in v.split(" ") if s)
        service = form.get("service", [None])[0]
        grant = form.get("grant_type", [None])[0]
        if not owner.post_enabled:
            owner._record("POST", None, scopes, service, grant, 404)
            self._reply(404, {"errors": [{"code": "NOT_FOUND", "message": "POST not supported"}]})
            return
        user: str | None = None
        if grant == "password":
            name = form.get("username", [""])[0]
            if owner.users.get(name) == form.get("password", [None])[0]:
                user = name
        elif grant == "refresh_token":
            user = owner.refresh_tokens.get(form.get("refresh_token", [""])[0])
        if user is None:
            owner._record("POST", None, scopes, service, grant, 401)
            self._reply(401, {"error": "invalid_grant", "error_description": "bad credentials"})
            return
        owner._record("POST", user, scopes, service, grant, 200)
        self._reply(200, owner.issue(user, scopes, service, with_refresh=True))


class TokenServer(BackgroundHTTPServer):
    """The token realm for a registry configured with :meth:`registry_auth_config`."""

    def __init__(self, workdir: Path, *, users: dict[str, str], anonymous_pull: bool = True,
                 post_enabled: bool = True, expires_in: int = 300) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        workdir.mkdir(parents=True, exist_ok=True)
        self.users = dict(users)
        self.anonymous_pull = anonymous_pull
        self.post_enabled = post_enabled
        self.expires_in = expires_in
        self.requests: list[TokenRequest] = []
        self.refresh_tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lazypull token signer")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
                .sign(self._key, hashes.SHA256()))
        self.cert_file = workdir / "token-signer.crt"
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        der = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        self.key_id = libtrust_key_id(der)
        super().__init__(_TokenHandler)

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def registry_auth_config(self) -> dict[str, Any]:
        """The registry config's ``auth`` section pointing at this server."""
        return {"token": {"realm": self.realm, "service": SERVICE, "issuer": ISSUER,
                          "rootcertbundle": str(self.cert_file)}}["token"]

    def _record(self, method: str, user: str | None, scopes: tuple[str, ...], service: str | None,
                grant: str | None, status: int) -> None:
        with self._lock:
            self.requests.append(TokenRequest(method, user, scopes, service, grant, status))

    def issue(self, user: str | None, scopes: tuple[str, ...], service: str | None,
              *, with_refresh: bool) -> dict[str, Any]:
        """A token response granting what ``user`` may do within the asked ``scopes``."""
        import jwt

        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3:
                continue
            kind, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            allowed = {"pull", "push", "*"} if user else {"pull"}
            granted = [a for a in actions if a in allowed]
            if granted:
                access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user or "", "aud": service or SERVICE, "exp": now + self.expires_in,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.key_id})
        body: dict[str, Any] = {"token": token, "access_token": token, "expires_in": self.expires_in,
                                "issued_at": dt.datetime.fromtimestamp(now, dt.UTC).isoformat()}
        if with_refresh and user:
            refresh = uuid.uuid4().hex
            with self._lock:
                self.refresh_tokens[refresh] = user
            body["refresh_token"] = refresh
        return body
