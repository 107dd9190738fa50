"""Credentials: the store reads the auth file ``podman login`` wrote."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from devtools.podman import RUN_FLAGS
from lazypull.registry import StaticAuth
from lazypull.store.names import encode_ref
from tests.helpers.images import file
from tests.helpers.registry import AuthRegistry
from tests.helpers.rootfs import busybox_specs, push_lazy_image
from tests.podman.conftest import open_engines


def test_layers_of_a_private_registry_use_podman_login(tmp_path: Path,
                                                       registry_tls_basic: AuthRegistry) -> None:
    reg = registry_tls_basic
    name, digests = push_lazy_image(tmp_path / "img", f"{reg.host}/podman/private:v1",
                                    [busybox_specs(), [file("srv/motd", b"private hi\n")]],
                                    auth=StaticAuth(reg.username, reg.password))
    with open_engines(tmp_path / "e", reg.host, "--insecure-registry") as engines:
        layer_dir = engines.store / encode_ref(name) / digests[1]
        with pytest.raises(OSError) as refused:     # no credentials yet: not here (podman would download)
            os.stat(layer_dir)
        assert refused.value.errno == errno.EIO
        engines.podman("login", "--tls-verify=false", "-u", reg.username, "--password-stdin", reg.host,
                       stdin=reg.password)
        assert (engines.work / "engine" / "xdg" / "containers" / "auth.json").is_file()
        out = engines.podman("run", "--rm", *RUN_FLAGS, name, "cat", "/srv/motd")
        assert out.stdout == "private hi\n"
        linked = sorted(p.read_text() for p in (engines.env_graph / "overlay").glob("*/additionallayer"))
        assert [s.rsplit("/", 1)[-1] for s in linked] == sorted(digests)
