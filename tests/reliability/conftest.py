"""Reliability tests start mount servers, containers and mounts: what a failing test leaves is cleaned."""

from __future__ import annotations

import pytest

from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import busybox_specs, push_lazy_image
from tests.reliability.kit import MANY_FILES
from tests.runtime.conftest import _no_leftovers  # noqa: F401 - the same autouse clean-up as runtime tests


@pytest.fixture(scope="session")
def lazy_image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A two-layer eStargz image (busybox, then 400 small files) in the session's registry."""
    work = tmp_path_factory.mktemp("reliability-image")
    name, _ = push_lazy_image(work, f"{registry.host}/reliability/daemon:v1",
                              [busybox_specs(), MANY_FILES])
    return name
