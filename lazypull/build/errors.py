"""Errors of a build: each names what was wrong (the Dockerfile line, the source path, the step)."""

from __future__ import annotations

from lazypull.errors import LazypullError


class BuildError(LazypullError):
    """A build could not be done as the Dockerfile asks."""


class DockerfileError(BuildError):
    """The Dockerfile is malformed; the message starts with ``FILE:LINE``."""

    def __init__(self, where: str, line: int, message: str) -> None:
        super().__init__(f"{where}:{line}: {message}")
        self.where = where
        self.line = line


class RunError(BuildError):
    """A ``RUN`` step exited with a non-zero status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
