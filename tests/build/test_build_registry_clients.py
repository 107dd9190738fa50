"""A build that pulls its base and downloads its layers (to rewrite them in the ``--zstdchunked`` format)
does so with one registry client: one token exchange for them all, not one per layer and one for the pull
(counted at the token server)."""

from __future__ import annotations

from pathlib import Path

from lazypull.image import Store
from lazypull.image import mediatypes as mt
from lazypull.registry import StaticAuth
from tests.build.conftest import BASE_CONFIG, lazypull
from tests.helpers.images import file
from tests.helpers.registry import AuthRegistry
from tests.helpers.rootfs import busybox_specs, push_lazy_image

REPO = "lazypull-build/clients"


def test_base_layer_downloads_share_one_client(tmp_path: Path, registry_token: AuthRegistry) -> None:
    name = f"{registry_token.host}/{REPO}:esgz"
    layers = [busybox_specs(), *([file(f"etc/extra{i}", f"{i}\n")] for i in range(4))]
    _, digests = push_lazy_image(tmp_path / "image", name, layers, config=BASE_CONFIG,
                                 auth=StaticAuth(registry_token.username, registry_token.password))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {name}\nLABEL built=1\n")
    root = tmp_path / "root"
    tokens = registry_token.token_server.requests
    mark = len(tokens)
    try:
        built = lazypull(root, "--insecure-registry", "build", "--zstdchunked", "-t", "localhost/clients:zc",
                         str(ctx))
        assert built.returncode == 0, built.stderr.decode()
        image = Store(root).resolve("localhost/clients:zc")
        assert len(image.layers) == len(digests) == 5
        assert all(d.media_type == mt.OCI_LAYER_ZSTD and d.digest not in digests for d in image.layers), \
            "every base layer downloaded and rewritten"
        exchanges = [t for t in tokens[mark:] if any(REPO in scope for scope in t.scopes)]
        # the build's one client pulls the base and downloads its layers (no RUN: nothing is mounted);
        # a client per layer, and one for the pull, were 1 + 5
        assert len(exchanges) == 1, exchanges
    finally:
        lazypull(root, "daemon", "stop")
