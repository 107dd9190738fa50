"""Image references as users write them.

``[host[:port]/]repo[/more][:tag][@digest]`` with Docker Hub short names normalised
(``ubuntu`` -> ``docker.io/library/ubuntu:latest``), and ``oci:DIR[:TAG]`` (skopeo's convention)
for an OCI image layout directory. The grammar follows distribution's reference package: path
components ``[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*``, tags ``\\w[\\w.-]{0,127}``, the registry
part is a host (``localhost``, a name with a dot, an IP, ``[v6]``) with an optional port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from lazypull.registry.errors import ReferenceError_

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")
_DIGEST = re.compile(r"(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")
_DOMAIN_PART = re.compile(r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])\Z")
_IPV6 = re.compile(r"\[[0-9a-fA-F:.]+(?:%[\w.]+)?\]\Z")
MAX_NAME_LENGTH = 255


@dataclass(frozen=True)
class Reference:
    """A parsed image reference.

    For registry references ``transport == "docker"``; ``registry`` is the normalised host
    (``docker.io`` for Docker Hub), ``repository`` the path, ``tag`` and/or ``digest``.
    For layouts ``transport == "oci"``, ``path`` is the directory and ``tag`` the optional tag.
    """

    registry: str = ""
    repository: str = ""
    tag: str | None = None
    digest: str | None = None
    transport: str = "docker"
    path: str | None = None

    def __str__(self) -> str:
        if self.transport == "oci":
            return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What goes after ``/manifests/``: the digest if known, else the tag."""
        if self.digest:
            return self.digest
        return self.tag or "latest"

    @property
    def api_host(self) -> str:
        """The host to send HTTP requests to (Docker Hub's API lives on another name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def familiar(self) -> str:
        """The short form docker prints (``ubuntu:22.04`` for Docker Hub official images)."""
        if self.transport != "docker" or self.registry != DOCKER_HUB:
            return str(self)
        repo = self.repository.removeprefix("library/")
        text = repo + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
        return text

    def with_digest(self, digest: str) -> Reference:
        """The same repository pinned to ``digest`` (the tag is kept for display)."""
        if not _DIGEST.match(digest):
            raise ReferenceError_(f"invalid digest {digest!r}")
        return replace(self, digest=digest)

    def with_tag(self, tag: str) -> Reference:
        """The same repository with ``tag`` and no digest."""
        if not _TAG.match(tag):
            raise ReferenceError_(f"invalid tag {tag!r}")
        return replace(self, tag=tag, digest=None)


def _valid_host(host: str) -> bool:
    name, sep, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not sep:
        name = host
    elif not port.isdigit() or not 0 < int(port) < 65536:
        return False
    if _IPV6.match(name):
        return True
    return bool(name) and all(_DOMAIN_PART.match(p) for p in name.split("."))


def _split_host(remainder: str) -> tuple[str, str]:
    first, slash, rest = remainder.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()
                  or first.startswith("[")):
        return first, rest
    return DOCKER_HUB, remainder


def parse_reference(text: str, *, default_tag: str | None = "latest") -> Reference:
    """Parse a reference as users write it; raise ReferenceError_ naming what is wrong.

    ``default_tag`` is used when neither tag nor digest is given (None keeps it unset).
    """
    if not isinstance(text, str) or not text:
        raise ReferenceError_("empty image reference")
    if text.startswith("oci:"):
        return _parse_layout(text)
    if text != text.strip() or any(c.isspace() for c in text):
        raise ReferenceError_(f"invalid reference {text!r}: contains whitespace")
    if "://" in text:
        raise ReferenceError_(f"invalid reference {text!r}: a reference has no URL scheme")
    remainder, at, digest = text.partition("@")
    if at and not _DIGEST.match(digest):
        raise ReferenceError_(f"invalid reference {text!r}: bad digest {digest!r}")
    host, path = _split_host(remainder)
    tag: str | None = None
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > last_slash:
        path, tag = path[:colon], path[colon + 1:]
        if not _TAG.match(tag):
            raise ReferenceError_(f"invalid reference {text!r}: bad tag {tag!r}")
    if host != DOCKER_HUB and not _valid_host(host):
        raise ReferenceError_(f"invalid reference {text!r}: bad registry host {host!r}")
    if host.lower() in _HUB_ALIASES:
        host = DOCKER_HUB
    if not path:
        raise ReferenceError_(f"invalid reference {text!r}: no repository")
    for component in path.split("/"):
        if not _COMPONENT.match(component):
            if component.lower() != component:
                raise ReferenceError_(f"invalid reference {text!r}: repository name must be lowercase")
            raise ReferenceError_(f"invalid reference {text!r}: bad path component {component!r}")
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if len(host) + 1 + len(path) > MAX_NAME_LENGTH:
        raise ReferenceError_(f"invalid reference {text!r}: name longer than {MAX_NAME_LENGTH} characters")
    if tag is None and not at:
        tag = default_tag
    return Reference(registry=host, repository=path, tag=tag, digest=digest if at else None)


def _parse_layout(text: str) -> Reference:
    """``oci:DIR[:TAG]``; like skopeo, the last ``:`` separates the tag (``oci:/a/b:v1``)."""
    body = text[4:]
    path, sep, tag = body.rpartition(":")
    if not sep or "/" in tag or not tag:
        path, tag = body, ""
    if not path:
        raise ReferenceError_(f"invalid layout reference {text!r}: no directory")
    if tag and not _TAG.match(tag):
        raise ReferenceError_(f"invalid layout reference {text!r}: bad tag {tag!r}")
    return Reference(transport="oci", path=path, tag=tag or None)
