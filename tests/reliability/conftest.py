"""Reliability tests start mount servers, containers and mounts: what a failing test leaves is cleaned."""

from tests.runtime.conftest import _no_leftovers  # noqa: F401 - the same autouse clean-up as runtime tests
