"""Errors of the registry client.

::

    LazypullError
    ├── ReferenceError_            an image reference that cannot be parsed
    ├── ManifestError (ImageError)  a manifest or index that is malformed or unsupported
    └── RegistryError              a request to a registry failed (status, diagnostics, redacted URL)
        ├── NotFoundError          404 / *_UNKNOWN codes
        ├── AuthError              401 / 403, bad credentials, token server refusal
        │   └── CredentialsError   the docker config or a credential helper failed
        ├── DigestMismatchError (ImageError)  content does not hash to (or have the size of) its digest
        ├── TooLargeError          a manifest or error body over the size limit
        └── RegistryConnectionError  connection refused/reset, TLS failure, timeout, truncated body
            └── RegistryUnavailableError  the host is known to be down: not asked (circuit breaker)

``RegistryError.temporary`` says whether trying again may help; the retry loop relies on it.

``DigestMismatchError`` is the one class for content above ``lazypull.format`` that does not match its
digest, fetched, pushed or stored: a ``RegistryError`` and an ``ImageError`` (``lazypull.image`` exports
it). ``lazypull.format`` keeps its own for the TOCs and chunks it verifies, as it imports nothing of
lazypull.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass

from lazypull.errors import ImageError, LazypullError

ERROR_BODY_LIMIT = 64 << 10

# Query parameters whose values are safe to show; everything else (signatures, tokens) is redacted.
_SAFE_QUERY = frozenset({"digest", "mount", "from", "n", "last", "service", "scope"})

# Spec error codes that mean "try again later".
_TEMPORARY_CODES = frozenset({"TOOMANYREQUESTS", "UNAVAILABLE"})


def redact_url(url: object) -> str:
    """The URL without userinfo and with the values of unknown query parameters hidden."""
    parts = urllib.parse.urlsplit(str(url))
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    safe = [(k, v if k in _SAFE_QUERY else "REDACTED") for k, v in query]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, urllib.parse.urlencode(safe), ""))


class ReferenceError_(LazypullError, ValueError):
    """An image reference that cannot be parsed; the message names the reference and the part."""


class ManifestError(ImageError):
    """A manifest or index is malformed, too large or of an unsupported media type."""


@dataclass(frozen=True)
class Diagnostic:
    """One entry of the distribution spec's ``{"errors": [...]}`` body."""

    code: str
    message: str = ""
    detail: object = None

    def __str__(self) -> str:
        text = f"{self.code}: {self.message}" if self.message else self.code
        if self.detail not in (None, "", {}, []):
            detail = self.detail if isinstance(self.detail, str) else json.dumps(self.detail)
            text += f" ({detail[:200]})"
        return text


def parse_diagnostics(body: bytes) -> tuple[Diagnostic, ...]:
    """The spec error entries in an error body; empty if the body is not that JSON."""
    try:
        doc = json.loads(body[:ERROR_BODY_LIMIT])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ()
    if not isinstance(doc, dict):
        return ()
    entries = doc.get("errors")
    if not isinstance(entries, list):
        # Token servers answer OAuth2-style errors.
        if isinstance(doc.get("error"), str):
            return (Diagnostic(str(doc["error"]).upper(), str(doc.get("error_description", ""))),)
        return ()
    out = []
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("code"), str):
            out.append(Diagnostic(entry["code"], str(entry.get("message") or ""), entry.get("detail")))
    return tuple(out)


class RegistryError(LazypullError):
    """A registry request failed.

    ``status`` is the HTTP status (None when no response arrived), ``diagnostics`` the spec's
    error entries, ``url`` the request URL with secrets redacted, ``method`` the HTTP method.
    """

    def __init__(self, message: str, *, status: int | None = None, method: str | None = None,
                 url: object = None, diagnostics: tuple[Diagnostic, ...] = (),
                 retry_after: float | None = None) -> None:
        self.status = status
        self.method = method
        self.url = redact_url(url) if url is not None else None
        self.diagnostics = diagnostics
        self.retry_after = retry_after
        parts = [message]
        if method and self.url:
            parts.append(f"{method} {self.url}")
        if status is not None:
            parts.append(f"status {status}")
        if diagnostics:
            parts.append("; ".join(str(d) for d in diagnostics))
        super().__init__(": ".join(parts))

    @property
    def temporary(self) -> bool:
        """Whether the same request may succeed if tried again."""
        if self.status is not None and (self.status in (408, 429) or self.status >= 500):
            return self.status not in (501, 505)
        return any(d.code in _TEMPORARY_CODES for d in self.diagnostics)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(d.code for d in self.diagnostics)


class NotFoundError(RegistryError):
    """The repository, manifest, blob or upload does not exist (404 or a *_UNKNOWN code)."""


class AuthError(RegistryError):
    """Authentication or authorization failed (401, 403 or a refused token request)."""


class CredentialsError(AuthError):
    """Credentials could not be read or stored (docker config, credential helper)."""


class DigestMismatchError(RegistryError, ImageError):
    """Content (a blob, manifest or config; fetched, pushed or stored) did not hash to the digest, or
    have the size, it is known by. ``expected``/``actual``: the digests, when the message does not say."""

    def __init__(self, message: str, *, expected: str | None = None, actual: str | None = None,
                 url: object = None, method: str | None = None) -> None:
        self.expected = expected
        self.actual = actual
        if expected is not None or actual is not None:
            message = f"{message}: expected {expected}, got {actual}"
        super().__init__(message, url=url, method=method)


class TooLargeError(RegistryError):
    """A manifest or body exceeded the size the client accepts."""


class RegistryConnectionError(RegistryError):
    """No (complete) response: connection refused or reset, timeout, TLS failure, truncated body."""

    def __init__(self, message: str, *, method: str | None = None, url: object = None,
                 tls: bool = False, temporary: bool = True) -> None:
        self.tls = tls
        self._temporary = temporary
        super().__init__(message, method=method, url=url)

    @property
    def temporary(self) -> bool:
        return self._temporary


class RegistryUnavailableError(RegistryConnectionError):
    """The registry host failed every recent request and is not asked again until its next trial
    request succeeds: fail fast instead of waiting out every deadline. Not temporary: retrying at once
    cannot help."""

    def __init__(self, message: str, *, host: str) -> None:
        self.host = host
        super().__init__(message, temporary=False)
