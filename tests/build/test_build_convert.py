"""A built image whose base layers were only mounted lazily: ``image convert``, ``image optimize`` and
``push`` (to the same registry and to another one) fetch those layers by digest from the base image's
repository, and the results run."""

from __future__ import annotations

from pathlib import Path

from lazypull.format import BytesSource, open_layer
from lazypull.image import Store
from lazypull.image import mediatypes as mt
from lazypull.runtime.overlay import mountpoints
from tests.build.conftest import lazypull
from tests.helpers.registry import RegistryServer


def _toc_names(store: Store, digest: str) -> list[str]:
    return [e.name for e in open_layer(BytesSource(store.read_blob(digest))).toc.entries]


def test_convert_optimize_push_of_a_build_on_lazy_base_layers(
        tmp_path: Path, registry: RegistryServer, lazy_base: tuple[str, list[str]]) -> None:
    base, digests = lazy_base
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text("background_fetch = false\n")   # the base stays lazy
    dockerfile = b'FROM ' + base.encode() + b'\nRUN head -c 100 /data/blob3 > /out\nCMD ["cat", "/out"]\n'
    built = lazypull(root, "--insecure-registry", "build", "-t", "localhost/built:plain", "-",
                     stdin=dockerfile)
    assert built.returncode == 0, built.stderr.decode()
    store = Store(root)
    image = store.resolve("localhost/built:plain")
    assert [d.digest for d in image.layers[:2]] == digests
    assert all(store.blob_path(d) is None for d in digests)          # only mounted, never downloaded
    listed = lazypull(root, "images")
    assert listed.returncode == 0, listed.stderr.decode()
    rows = [line.split()[:2] for line in listed.stdout.decode().splitlines()[1:]]
    assert ["localhost/built", "plain"] in rows and [base.rsplit(":", 1)[0], "esgz"] in rows

    # image convert: the base layers are fetched by digest from the base repository, the built image
    # itself stays what it is (it was replaced by its base, or the convert failed, before)
    dst = f"{registry.host}/lazypull-build/conv:esgz"
    converted = lazypull(root, "--insecure-registry", "image", "convert", "--estargz", "--oci",
                         "localhost/built:plain", dst)
    assert converted.returncode == 0, converted.stderr.decode()
    store = Store(root)
    assert store.resolve("localhost/built:plain").manifest_digest == image.manifest_digest
    assert all(store.blob_path(d) is not None for d in digests)
    out = store.resolve(dst)
    assert len(out.layers) == 3 and all(mt.TOC_DIGEST in d.annotations for d in out.layers)
    assert "out" in _toc_names(store, out.layers[2].digest)
    assert "data/blob3" in _toc_names(store, out.layers[1].digest)

    # image optimize of the built image: runs it, records what it reads, converts
    opt = f"{registry.host}/lazypull-build/conv:opt"
    optimized = lazypull(root, "--insecure-registry", "image", "optimize", "--oci", "--period", "60",
                         "localhost/built:plain", opt)
    assert optimized.returncode == 0, optimized.stderr.decode()
    names = _toc_names(Store(root), Store(root).resolve(opt).layers[2].digest)
    assert names.index("out") < names.index(".prefetch.landmark")     # what CMD read comes first

    # push: the built image next to its base (the base layers mounted across repositories) and to
    # another registry (fetched from the base's registry and uploaded), the converted one; run them all
    other = RegistryServer(tmp_path / "other").start()
    try:
        pushed_built = [f"{registry.host}/lazypull-build/conv:built", f"{other.host}/elsewhere/built:1"]
        for ref in pushed_built:
            assert lazypull(root, "tag", "localhost/built:plain", ref).returncode == 0
        for ref in (*pushed_built, dst):
            pushed = lazypull(root, "--insecure-registry", "push", ref)
            assert pushed.returncode == 0, pushed.stderr.decode()
        for ref in (dst, *pushed_built):
            ran = lazypull(tmp_path / "fresh", "--insecure-registry", "run", "--rm", ref)
            assert ran.returncode == 0 and len(ran.stdout) == 100, ran.stderr.decode()
        full = lazypull(tmp_path / "full", "--insecure-registry", "--snapshotter=overlayfs", "pull",
                        pushed_built[1])
        assert full.returncode == 0, full.stderr.decode()          # every blob there, DiffIDs verified
    finally:
        other.stop()
    assert [m for m in mountpoints() if m.startswith(str(tmp_path))] == []
