"""podman through lazypull's additional layer store: lazy pull and run, save, plain images, rmi."""

from __future__ import annotations

import json

from tests.helpers.registry import RegistryServer
from tests.podman.conftest import RUN_FLAGS, Engines, LazyImage, layer_bytes


def test_pull_and_run_fetch_a_small_fraction(engines: Engines, lazy_image: LazyImage,
                                              registry: RegistryServer) -> None:
    mark = registry.log_mark()
    engines.podman("pull", lazy_image.ref)
    pulled = registry.access_log(mark)
    # podman read the manifest and config; no layer blob was downloaded (the store served them)
    assert layer_bytes(pulled, lazy_image.layers) < sum(lazy_image.sizes.values()) // 4
    assert not [e for e in pulled if e.method == "GET" and e.status == 200
                and any(d in e.path for d in lazy_image.layers)]
    out = engines.podman("run", "--rm", *RUN_FLAGS, lazy_image.ref, "sh", "-c", "echo hi; cat /srv/motd")
    assert out.stdout == "hi\nhi from the store\n"
    total = sum(lazy_image.sizes.values())
    fetched = layer_bytes(registry.access_log(mark), lazy_image.layers)
    assert 0 < fetched < total // 2, (fetched, total)
    # the layers are podman's: its storage links them to the store's diff directories
    info = json.loads(engines.podman("image", "inspect", lazy_image.ref).stdout)[0]
    assert len(info["RootFS"]["Layers"]) == 2
    linked = sorted(p.read_text() for p in (engines.env_graph / "overlay").glob("*/additionallayer"))
    assert [s.rsplit("/", 1)[-1] for s in linked] == sorted(lazy_image.layers)
    assert all(s.startswith(str(engines.store) + "/") for s in linked)
