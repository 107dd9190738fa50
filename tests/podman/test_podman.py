"""podman through lazypull's additional layer store: lazy pull and run, save, plain images, rmi."""

from __future__ import annotations

import hashlib
import json
import tarfile
import time

from devtools.podman import RUN_FLAGS
from lazypull.format.annotations import TOC_DIGEST_ANNOTATION
from lazypull.store.names import encode_ref
from tests.helpers.registry import RegistryServer
from tests.podman.conftest import GRACE, Engines, LazyImage, layer_bytes


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


def test_save_gives_the_layers_bytes(engines: Engines, lazy_image: LazyImage,
                                     registry: RegistryServer) -> None:
    engines.podman("pull", lazy_image.ref)
    # the store's blob file is the registry blob, byte for byte
    layer = lazy_image.layers[1]
    blob = engines.store / encode_ref(lazy_image.ref) / layer / "blob"
    assert blob.stat().st_size == lazy_image.sizes[layer]
    assert blob.read_bytes() == registry.blob_path(layer).read_bytes()
    # podman save reads the blobs through containers/storage: each layer tar is the config's DiffID
    archive = engines.work / "saved.tar"
    engines.podman("save", "--format", "docker-archive", "-o", str(archive), lazy_image.ref)
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config = json.loads(tar.extractfile(manifest[0]["Config"]).read())  # type: ignore[union-attr]
        layers = [hashlib.sha256(tar.extractfile(name).read()).hexdigest()  # type: ignore[union-attr]
                  for name in manifest[0]["Layers"]]
    assert ["sha256:" + h for h in layers] == config["rootfs"]["diff_ids"]
    assert len(layers) == 2


def test_plain_image_is_downloaded_by_podman(engines: Engines, plain_image: LazyImage,
                                             registry: RegistryServer) -> None:
    mark = registry.log_mark()
    engines.podman("pull", plain_image.ref)
    blobs = [e for e in registry.access_log(mark) if e.method == "GET" and "/blobs/" in e.path
             and e.status == 200]
    assert len(blobs) == 3          # config and both layers, whole
    assert not list((engines.env_graph / "overlay").glob("*/additionallayer"))
    out = engines.podman("run", "--rm", *RUN_FLAGS, plain_image.ref, "cat", "/srv/motd")
    assert out.stdout == "plain hi\n"


def test_rmi_releases_the_layers(engines: Engines, lazy_image: LazyImage) -> None:
    engines.podman("pull", lazy_image.ref)
    name = encode_ref(lazy_image.ref)
    held = {f"{name}/{d}": 1 for d in lazy_image.layers}
    assert engines.store_counts() == held           # one use per layer podman stores
    assert set(lazy_image.layers) <= engines.mounted_layers()
    time.sleep(GRACE * 2)
    assert set(lazy_image.layers) <= engines.mounted_layers()       # in use: stays mounted
    engines.podman("rmi", lazy_image.ref)
    assert engines.store_counts() == dict.fromkeys(held, 0)
    deadline = time.monotonic() + 60
    while set(lazy_image.layers) & engines.mounted_layers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(lazy_image.layers) & engines.mounted_layers()
    # pulled again, it is served again
    engines.podman("pull", lazy_image.ref)
    assert engines.store_counts() == held


def test_a_layer_whose_toc_does_not_verify_is_downloaded_by_podman(engines: Engines, lazy_image: LazyImage,
                                                                   registry: RegistryServer) -> None:
    from lazypull.registry import RegistryClient

    bad = lazy_image.ref.rsplit(":", 1)[0] + ":badtoc"
    with RegistryClient(insecure=True) as client:
        raw, media_type, _ = client.get_manifest(lazy_image.ref)
        manifest = json.loads(raw)
        manifest["layers"][1]["annotations"][TOC_DIGEST_ANNOTATION] = "sha256:" + "1" * 64
        client.put_manifest(bad, json.dumps(manifest).encode(), media_type)
    mark = registry.log_mark()
    engines.podman("pull", bad)
    whole = [e for e in registry.access_log(mark) if e.method == "GET" and e.status == 200
             and lazy_image.layers[1] in e.path]
    assert len(whole) == 1                      # podman downloaded the layer the store refused
    linked = [p.read_text() for p in (engines.env_graph / "overlay").glob("*/additionallayer")]
    assert [s.rsplit("/", 1)[-1] for s in linked] == [lazy_image.layers[0]]
    out = engines.podman("run", "--rm", *RUN_FLAGS, bad, "cat", "/srv/motd")
    assert out.stdout == "hi from the store\n"
