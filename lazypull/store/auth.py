"""Credentials from the files podman, buildah and docker log in to, in containers-auth.json(5) order:
``$REGISTRY_AUTH_FILE``, ``${XDG_RUNTIME_DIR}/containers/auth.json`` (root without it:
``/run/containers/0/auth.json``), ``~/.config/containers/auth.json``, then docker's config
(``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``). They share docker's format (``auths``,
credential helpers), so each is read by ``DockerConfigAuth``; the first that knows the host answers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lazypull.registry import DockerConfigAuth


def auth_files(env: Mapping[str, str] | None = None, home: Path | None = None) -> list[Path]:
    """The credential files podman would read for this user and environment, in order (existing or not)."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    files: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    runtime = env.get("XDG_RUNTIME_DIR")
    files.append(Path(runtime) / "containers" / "auth.json" if runtime
                 else Path(f"/run/containers/{os.getuid()}/auth.json"))
    files.append(home / ".config" / "containers" / "auth.json")
    docker = env.get("DOCKER_CONFIG")
    files.append(Path(docker) / "config.json" if docker else home / ".docker" / "config.json")
    unique: list[Path] = []
    for path in files:
        if path not in unique:
            unique.append(path)
    return unique


class ChainedAuth:
    """A ``CredentialSource`` asking several docker-format files in order."""

    def __init__(self, paths: Sequence[Path | str]) -> None:
        self.sources = [DockerConfigAuth(Path(p)) for p in paths]

    def credentials(self, host: str) -> Any:
        for source in self.sources:
            found = source.credentials(host)
            if found is not None:
                return found
        return None
