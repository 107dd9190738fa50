"""Credentials in docker's ``config.json``, the file ``docker login`` and ``nerdctl login`` write.

The file is ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``. Lookup order for a
host follows docker: ``credHelpers[host]``, then ``credsStore``, then ``auths`` (keys may be
``host``, ``https://host`` or ``https://host/v1/``; Docker Hub is ``https://index.docker.io/v1/``).
A credential helper is the program ``docker-credential-NAME`` speaking JSON on stdin/stdout.
Writes are atomic (temp file, rename) and keep every key this module does not know.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from lazypull.registry._auth import Credentials
from lazypull.registry._reference import DOCKER_HUB
from lazypull.registry.errors import CredentialsError
from lazypull.smallfile import read_small

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HELPER_TIMEOUT = 30.0
#: A credentials file is read up to this many bytes (docker's own are a few KiB; a FIFO or /dev/zero
#: put in its place must not hang or fill memory).
MAX_CONFIG_SIZE = 4 << 20


def default_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def auth_key(host: str) -> str:
    """The ``auths`` key docker uses for a registry host."""
    return DOCKER_HUB_AUTH_KEY if host in (DOCKER_HUB, "index.docker.io", "registry-1.docker.io") else host


def normalize_server(key: str) -> str:
    """A server as users and config files write it (``https://host/v1/``) -> ``host[:port]``."""
    key = key.strip()
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    host = key.split("/", 1)[0]
    return DOCKER_HUB if host in ("index.docker.io", "registry-1.docker.io", "docker.io") else host


def _host_of(host: str) -> str:
    return normalize_server(host)


class DockerConfigAuth:
    """A :class:`CredentialSource` reading docker's config file (re-read when it changes)."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_config_path()
        self._lock = threading.Lock()
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._helper_cache: dict[str, Credentials | None] = {}

    def load(self) -> dict[str, Any]:
        """The parsed config ({} if missing); CredentialsError if unreadable or malformed."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise CredentialsError(f"cannot read docker config {self.path}: {err}") from err
        with self._lock:
            if self._cache and self._cache[0] == mtime:
                return self._cache[1]
        data = read_small(self.path, MAX_CONFIG_SIZE, "docker config", CredentialsError)
        if data is None:
            return {}
        try:
            doc = json.loads(data)
        except ValueError as err:       # (UnicodeDecodeError too)
            raise CredentialsError(f"cannot read docker config {self.path}: {err}") from err
        except RecursionError as err:   # [[[[... deeper than the interpreter's stack
            raise CredentialsError(f"docker config {self.path} is not valid JSON: nested too deeply") from err
        if not isinstance(doc, dict):
            raise CredentialsError(f"docker config {self.path} is not a JSON object")
        with self._lock:
            self._cache = (mtime, doc)
            self._helper_cache.clear()
        return doc

    def credentials(self, host: str) -> Credentials | None:
        host = _host_of(host)
        doc = self.load()
        helpers = doc.get("credHelpers") or {}
        helper = None
        if isinstance(helpers, dict):
            for key, name in helpers.items():
                if normalize_server(key) == host and isinstance(name, str):
                    helper = name
        if helper is None and isinstance(doc.get("credsStore"), str) and doc["credsStore"]:
            helper = doc["credsStore"]
        if helper:
            with self._lock:
                if host in self._helper_cache:
                    return self._helper_cache[host]
            creds = helper_get(helper, auth_key(host))
            with self._lock:
                self._helper_cache[host] = creds
            if creds is not None:
                return creds
        return self._from_auths(doc, host)

    def _from_auths(self, doc: dict[str, Any], host: str) -> Credentials | None:
        auths = doc.get("auths") or {}
        if not isinstance(auths, dict):
            raise CredentialsError(f"docker config {self.path}: 'auths' is not an object")
        for key, entry in auths.items():
            if normalize_server(key) != host or not isinstance(entry, dict):
                continue
            if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
                return Credentials("<token>", entry["identitytoken"])
            encoded = entry.get("auth")
            if isinstance(encoded, str) and encoded:
                try:
                    user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError) as err:
                    raise CredentialsError(
                        f"docker config {self.path}: bad base64 'auth' for {key}") from err
                if not sep:
                    raise CredentialsError(f"docker config {self.path}: 'auth' for {key} has no ':'")
                return Credentials(user, password)
            if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
                return Credentials(entry["username"], entry["password"])
        return None

    # -- login / logout -------------------------------------------------------------------------
    def store(self, host: str, creds: Credentials) -> str:
        """Save credentials (to the credential helper if one is configured); return where."""
        host = _host_of(host)
        doc = dict(self.load())
        helper = _helper_for(doc, host)
        auths = dict(doc.get("auths") or {})
        if helper:
            helper_run(helper, "store", json.dumps(
                {"ServerURL": auth_key(host), "Username": creds.username, "Secret": creds.password}))
            auths[auth_key(host)] = {}
            where = f"credential helper docker-credential-{helper}"
        else:
            for key in [k for k in auths if normalize_server(k) == host]:
                del auths[key]
            auths[auth_key(host)] = {
                "auth": base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()}
            where = str(self.path)
        doc["auths"] = auths
        self._write(doc)
        return where

    def erase(self, host: str) -> bool:
        """Remove stored credentials for ``host``; False if there were none."""
        host = _host_of(host)
        doc = dict(self.load())
        helper = _helper_for(doc, host)
        found = False
        if helper:
            try:
                helper_run(helper, "erase", auth_key(host))
                found = True
            except CredentialsError:
                pass
        auths = dict(doc.get("auths") or {})
        for key in [k for k in auths if normalize_server(k) == host]:
            del auths[key]
            found = True
        if found:
            doc["auths"] = auths
            self._write(doc)
        return found

    def _write(self, doc: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".config.json.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(doc, out, indent="\t")
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except OSError as err:
            Path(tmp).unlink(missing_ok=True)
            raise CredentialsError(f"cannot write docker config {self.path}: {err}") from err
        with self._lock:
            self._cache = None
            self._helper_cache.clear()


def _helper_for(doc: dict[str, Any], host: str) -> str | None:
    helpers = doc.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if normalize_server(key) == host and isinstance(name, str) and name:
                return name
    store = doc.get("credsStore")
    return store if isinstance(store, str) and store else None


def helper_run(helper: str, action: str, stdin: str) -> str:
    """Run ``docker-credential-HELPER ACTION`` with ``stdin``; CredentialsError on failure."""
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run([program, action], input=stdin, capture_output=True, text=True,
                              timeout=_HELPER_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        raise CredentialsError(f"credential helper {program} {action} failed: {err}") from err
    if proc.returncode != 0:
        message = (proc.stdout.strip() or proc.stderr.strip())[:300]
        raise CredentialsError(f"credential helper {program} {action} failed: {message}")
    return proc.stdout


def helper_get(helper: str, server: str) -> Credentials | None:
    """Ask a credential helper; None if it has nothing for ``server``."""
    try:
        out = helper_run(helper, "get", server)
    except CredentialsError as err:
        if "credentials not found" in str(err).lower():
            return None
        raise
    try:
        doc = json.loads(out)
    except (ValueError, RecursionError) as err:
        raise CredentialsError(f"credential helper docker-credential-{helper} answered non-JSON") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("Secret"), str):
        raise CredentialsError(f"credential helper docker-credential-{helper} answered without Secret")
    user = doc.get("Username")
    return Credentials(user if isinstance(user, str) else "", doc["Secret"])


def default_auth() -> DockerConfigAuth:
    """The credentials the CLI and the mount server use unless given others: docker's config file
    (``$DOCKER_CONFIG``, else ``~/.docker``) and its credential helpers, as nerdctl. One home, so the
    default is changed in one place."""
    return DockerConfigAuth()
