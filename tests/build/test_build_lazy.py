"""A build FROM an eStargz image fetches only what its RUN reads; --estargz output is Go-readable."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazypull.image import Store
from lazypull.image import mediatypes as mt
from lazypull.runtime.overlay import mountpoints
from tests.build.conftest import lazypull
from tests.helpers.oracle import Oracle
from tests.helpers.registry import RegistryServer


def test_lazy_base_fetches_what_run_reads_and_estargz_output(
        tmp_path: Path, registry: RegistryServer, lazy_base: tuple[str, list[str]], oracle: Oracle) -> None:
    base, digests = lazy_base
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text("background_fetch = false\n")   # only what is read is fetched
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN head -c 100 /data/blob3 > /out && echo read\n"
                                    'CMD ["cat", "/out"]\n')
    mark = registry.log_mark()
    result = lazypull(root, "--insecure-registry", "build", "--estargz", "-t", "localhost/built:esgz",
                      str(ctx))
    assert result.returncode == 0, result.stderr.decode()
    assert "read" in result.stderr.decode()                     # the RUN's output, in the progress
    store = Store(root)
    big = digests[1]
    big_size = next(d.size for d in store.resolve("localhost/built:esgz").layers if d.digest == big)
    fetched = sum(e.bytes for e in registry.access_log(mark) if big.removeprefix("sha256:") in e.path
                  and e.method == "GET")
    assert 0 < fetched < big_size // 4, f"fetched {fetched} of {big_size} bytes"
    assert store.blob_path(big) is None                          # never downloaded whole
    assert [m for m in mountpoints() if m.startswith(str(root))] == []   # holds released

    image = store.resolve("localhost/built:esgz")
    assert image.layers[:2] == [d for d in image.layers[:2] if d.digest in digests]
    new = image.layers[-1]
    assert new.media_type == mt.OCI_LAYER_GZIP and mt.TOC_DIGEST in new.annotations
    blob = store.blob_path(new.digest)
    assert blob is not None
    tree = oracle.tree(blob, new.annotations[mt.TOC_DIGEST])
    assert tree["out"]["size"] == 100

    # runs from this store (the new layer from the local blob, the base layers lazily)
    local = lazypull(root, "--insecure-registry", "run", "--rm", "localhost/built:esgz")
    assert local.returncode == 0, local.stderr.decode()
    assert len(local.stdout) == 100

    # converting it never replaces it with its base image: the lazily mounted base layers are fetched
    # by digest from the base's repository (tests/build/test_build_convert.py for the rest)
    before = Store(root).resolve("localhost/built:esgz").manifest_digest
    converted = lazypull(root, "--insecure-registry", "image", "convert", "--oci", "--zstdchunked",
                         "localhost/built:esgz", "localhost/built:conv")
    assert converted.returncode == 0, converted.stderr.decode()
    assert Store(root).resolve("localhost/built:esgz").manifest_digest == before

    # the same build with gzip layers does not take the eStargz steps from the cache
    gz = lazypull(root, "--insecure-registry", "build", "-t", "localhost/built:gz", str(ctx))
    assert gz.returncode == 0 and b"CACHED" not in gz.stderr, gz.stderr.decode()
    assert mt.TOC_DIGEST not in Store(root).resolve("localhost/built:gz").layers[-1].annotations
    again = lazypull(root, "--insecure-registry", "build", "--estargz", "-t", "localhost/built:esgz",
                     str(ctx))
    assert again.returncode == 0 and again.stderr.count(b"CACHED") == 1, again.stderr.decode()

    # pushed next to its base (which it mounts from) and run lazily from a fresh store
    dest = f"{registry.host}/lazypull-build/built:esgz"
    tagged = lazypull(root, "tag", "localhost/built:esgz", dest)
    assert tagged.returncode == 0, tagged.stderr.decode()
    pushed = lazypull(root, "--insecure-registry", "push", dest)
    assert pushed.returncode == 0, pushed.stderr.decode()
    fresh = tmp_path / "fresh"
    ran = lazypull(fresh, "--insecure-registry", "run", "--rm", dest)
    assert ran.returncode == 0, ran.stderr.decode()
    assert len(ran.stdout) == 100


@pytest.mark.parametrize("fmt", ["estargz", "zstdchunked"])
def test_gzip_base_converted_whole_image_lazy(tmp_path: Path, registry: RegistryServer, busybox_base: str,
                                              oracle: Oracle, fmt: str) -> None:
    """FROM a gzip image with --estargz/--zstdchunked: the base layer is rewritten too (cached), the
    pushed image is lazily pullable in full, its DiffIDs check out on a full pull."""
    root = tmp_path / "root"
    dockerfile = f"FROM {busybox_base}\nRUN echo {fmt} > /z\n".encode()
    result = lazypull(root, "--insecure-registry", "build", f"--{fmt}", "-t", f"localhost/built:{fmt}", "-",
                      stdin=dockerfile)
    assert result.returncode == 0, result.stderr.decode()
    assert "converting base layer" in result.stderr.decode()
    store = Store(root)
    image = store.resolve(f"localhost/built:{fmt}")
    media = mt.OCI_LAYER_ZSTD if fmt == "zstdchunked" else mt.OCI_LAYER_GZIP
    assert [d.media_type for d in image.layers] == [media, media]
    assert all(mt.TOC_DIGEST in d.annotations for d in image.layers)
    for desc in image.layers:
        blob = store.blob_path(desc.digest)
        assert blob is not None
        tree = oracle.tree(blob)
        assert ("z" in tree) if desc is image.layers[-1] else ("bin/busybox" in tree)
    again = lazypull(root, "--insecure-registry", "build", f"--{fmt}", "-", stdin=dockerfile)
    assert again.returncode == 0 and again.stderr.count(b"CACHED") == 2, again.stderr.decode()

    dest = f"{registry.host}/lazypull-build/converted:{fmt}"
    assert lazypull(root, "tag", f"localhost/built:{fmt}", dest).returncode == 0
    pushed = lazypull(root, "--insecure-registry", "push", dest)
    assert pushed.returncode == 0, pushed.stderr.decode()
    fresh = tmp_path / "fresh"
    pulled = lazypull(fresh, "--insecure-registry", "--snapshotter=overlayfs", "pull", dest)
    assert pulled.returncode == 0, pulled.stderr.decode()         # DiffIDs verified against the blobs
    ran = lazypull(fresh, "run", "--rm", "--snapshotter=overlayfs", dest, "cat", "/z")
    assert ran.stdout == f"{fmt}\n".encode(), ran.stderr.decode()


def test_output_oci_layout_fetches_lazy_base_layers(tmp_path: Path,
                                                    lazy_base: tuple[str, list[str]]) -> None:
    import hashlib
    import json

    base, digests = lazy_base
    layout = tmp_path / "layout"
    root = tmp_path / "root"
    result = lazypull(root, "--insecure-registry", "build", "--output", f"oci:{layout}:v1", "-",
                      stdin=f"FROM {base}\nRUN echo x > /x\n".encode())
    assert result.returncode == 0, result.stderr.decode()
    index = json.loads((layout / "index.json").read_text())
    entry = index["manifests"][0]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v1"

    def blob(digest: str) -> bytes:
        data = (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        return data

    manifest = json.loads(blob(entry["digest"]))
    blob(manifest["config"]["digest"])
    layers = [layer["digest"] for layer in manifest["layers"]]
    assert layers[:2] == digests and len(layers) == 3
    for digest in layers:
        blob(digest)                        # the lazy base layers were fetched into the layout
    assert Store(root).blob_path(digests[1]) is None          # ... not into the store
    bad = lazypull(root, "build", "--output", "docker:x", "-", stdin=b"FROM scratch\n")
    assert bad.returncode == 1 and b"only oci:DIR[:TAG] is supported" in bad.stderr
