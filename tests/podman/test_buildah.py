"""buildah through lazypull's additional layer store: from + run, and bud FROM a lazy image."""

from __future__ import annotations

from devtools.podman import RUN_FLAGS
from tests.helpers.registry import RegistryServer
from tests.podman.conftest import Engines, LazyImage, layer_bytes

BUILDAH_RUN = ("--network", "host")


def test_from_and_run_fetch_a_small_fraction(engines: Engines, lazy_image: LazyImage,
                                             registry: RegistryServer) -> None:
    mark = registry.log_mark()
    ctr = engines.buildah("from", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                          lazy_image.ref).stdout.strip()
    out = engines.buildah("run", *BUILDAH_RUN, ctr, "sh", "-c", "echo hi; cat /srv/motd")
    assert out.stdout == "hi\nhi from the store\n"
    fetched = layer_bytes(registry.access_log(mark), lazy_image.layers)
    assert 0 < fetched < sum(lazy_image.sizes.values()) // 2
    assert len(list((engines.env_graph / "overlay").glob("*/additionallayer"))) == 2
    engines.buildah("rm", ctr)


def test_bud_from_a_lazy_image(engines: Engines, lazy_image: LazyImage, registry: RegistryServer) -> None:
    context = engines.work / "context"
    context.mkdir()
    (context / "Containerfile").write_text(
        f"FROM {lazy_image.ref}\nRUN cat /srv/motd > /built.txt && echo built >> /built.txt\n")
    mark = registry.log_mark()
    engines.buildah("bud", *BUILDAH_RUN, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                    "-t", "localhost/built:1", str(context))
    assert 0 < layer_bytes(registry.access_log(mark), lazy_image.layers) < sum(lazy_image.sizes.values()) // 2
    assert len(list((engines.env_graph / "overlay").glob("*/additionallayer"))) == 2
    out = engines.podman("run", "--rm", *RUN_FLAGS, "localhost/built:1", "cat", "/built.txt")
    assert out.stdout == "hi from the store\nbuilt\n"
