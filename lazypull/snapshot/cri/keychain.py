"""Per-image registry credentials learnt from CRI ``PullImage`` requests (the kubelet's pull secrets),
kept in memory only, for the lazy reads of that image's layers.

The kubelet hands a pod's pull secret to the image service with each ``PullImage``; a snapshotter never
sees it. When ``lazypull daemon --cri-image-service`` sits in that path it records the credentials here
under the image's normalised reference, and the proxy snapshotter reads that image's layers with a
registry client of its own built from them (the node's docker config files as the fallback for other
hosts). ``forget`` drops them when the image is removed. Nothing here is written to disk or logged.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from lazypull.errors import LazypullError
from lazypull.registry import Credentials, CredentialSource, RegistryClient, default_auth, parse_reference

MAX_IMAGES = 1024     # images with credentials kept at once (oldest forgotten first)
_IMAGE_ID = re.compile(r"(sha256:)?[0-9a-f]{64}")


def normalise(ref: str) -> str | None:
    """The reference as containerd's CRI plugin names it in its snapshot labels (``docker.io/library/x:tag``
    for ``x``), or None for an image id (``sha256:<hex>``, which would parse as repository ``sha256``)
    or what does not parse."""
    if _IMAGE_ID.fullmatch(ref):
        return None
    try:
        parsed = parse_reference(ref)
    except LazypullError:
        return None
    return str(parsed) if parsed.transport == "docker" else None


@dataclass(frozen=True)
class _ImageAuth:
    """The image's own credentials for its registry host; the node's docker config for any other."""

    host: str
    creds: Credentials
    fallback: CredentialSource

    def credentials(self, host: str) -> Credentials | None:
        return self.creds if host == self.host else self.fallback.credentials(host)


@dataclass
class _Entry:
    repository: str          # registry/repository, for labels naming the image another way
    creds: Credentials
    clients: dict[bool, RegistryClient]   # by ``insecure``


class Keychain:
    """Thread-safe map of normalised image reference -> credentials (and a registry client per TLS mode
    built from them, kept while the image is, so its connections and tokens serve every layer)."""

    def __init__(self, client_factory: Callable[[bool, CredentialSource], RegistryClient],
                 fallback: CredentialSource | None = None, *, max_images: int = MAX_IMAGES) -> None:
        self._factory = client_factory
        self._fallback: CredentialSource = fallback if fallback is not None else default_auth()
        self._max = max_images
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def add(self, ref: str, creds: Credentials) -> bool:
        """Record ``creds`` for image ``ref``; False when ``ref`` is not an image reference."""
        key = normalise(ref)
        if key is None:
            return False
        parsed = parse_reference(key)
        with self._lock:
            old = self._entries.pop(key, None)
            clients = old.clients if old is not None and old.creds == creds else {}
            self._entries[key] = _Entry(f"{parsed.registry}/{parsed.repository}", creds, clients)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return True

    def forget(self, ref: str) -> bool:
        """Drop what is kept for ``ref`` (mounted layers keep the client they were mounted with until
        they are unmounted); False when nothing was kept."""
        key = normalise(ref)
        with self._lock:
            return key is not None and self._entries.pop(key, None) is not None

    def get(self, ref: str, *, exact: bool = False) -> Credentials | None:
        """The credentials for ``ref`` (``exact``: recorded under that very reference, not another of
        its repository)."""
        key = normalise(ref)
        if key is None:
            return None
        with self._lock:
            entry = self._entries.get(key) if exact else self._lookup(key)
        return entry.creds if entry is not None else None

    def refs(self) -> list[str]:
        """The references credentials are kept for (never the credentials)."""
        with self._lock:
            return list(self._entries)

    def client(self, ref: str, insecure: bool) -> RegistryClient | None:
        """A registry client with ``ref``'s credentials, or None when none were recorded for it."""
        key = normalise(ref)
        if key is None:
            return None
        with self._lock:
            entry = self._lookup(key)
            if entry is None:
                return None
            client = entry.clients.get(insecure)
            if client is None:
                host = parse_reference(key).registry
                client = entry.clients[insecure] = self._factory(
                    insecure, _ImageAuth(host, entry.creds, self._fallback))
            return client

    def _lookup(self, key: str) -> _Entry | None:
        """The entry for ``key``, else the newest for the same repository (a label naming the image by
        digest where the pull named a tag)."""
        entry = self._entries.get(key)
        if entry is not None:
            return entry
        parsed = parse_reference(key)
        repository = f"{parsed.registry}/{parsed.repository}"
        return next((e for e in reversed(self._entries.values()) if e.repository == repository), None)
