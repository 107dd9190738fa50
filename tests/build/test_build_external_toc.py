"""A build FROM an image whose TOCs are external (``--estargz-external-toc``: in ``<tag>-esgztoc`` beside
it): the built image's base layers stay lazy when they are mounted again without their recorded TOCs,
found in the base's TOC image through the base's tag kept in the built image's source; FROM the base
pinned by digest, among the repository's TOC images."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lazypull.format.layerkind import is_lazy
from lazypull.image import Store
from lazypull.registry import parse_reference
from tests.build.conftest import BASE_CONFIG, lazypull
from tests.helpers.images import file
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import busybox_specs, push_image_layers


def _lazy_mounts(root: Path) -> int:
    mounts = subprocess.run(["mount"], capture_output=True, text=True, check=True).stdout
    return sum(1 for line in mounts.splitlines() if f"{root}/" in line and "fuse.lazypull" in line)


def test_a_built_image_finds_its_bases_external_tocs(tmp_path: Path, registry: RegistryServer) -> None:
    plain = push_image_layers(tmp_path / "plain", f"{registry.host}/lazypull-build/extoc-plain:v1",
                              [busybox_specs(), [file("etc/motd", "hi\n")]], config=BASE_CONFIG)
    base = f"{registry.host}/lazypull-build/extoc:esgz"
    converter = tmp_path / "converter"
    for args in (("image", "convert", "--oci", "--estargz", "--estargz-external-toc", plain, base),
                 ("push", base)):
        done = lazypull(converter, "--insecure-registry", *args)
        assert done.returncode == 0, done.stderr.decode()

    root = tmp_path / "root"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN echo built > /built\n")
    try:
        built = lazypull(root, "--insecure-registry", "build", "-t", "localhost/built:extoc", str(ctx))
        assert built.returncode == 0, built.stderr.decode()
        image = Store(root).resolve("localhost/built:extoc")
        assert image.source is not None
        source = parse_reference(str(image.source))
        assert (source.repository, source.tag, source.digest) == ("lazypull-build/extoc", "esgz",
                                                                  image.manifest_digest)
        base_layers = [d.digest for d in image.layers if is_lazy(d.annotations)]
        assert len(base_layers) == 2

        # The layers' recorded TOCs gone (a record that failed to save, or no longer verifies): the
        # next mount looks the TOCs up again, from the built image's source.
        assert lazypull(root, "daemon", "stop").returncode == 0
        for digest in base_layers:
            (root / "snapshots" / digest.removeprefix("sha256:") / "toc.record").unlink()
        ran = lazypull(root, "--insecure-registry", "run", "-d", "--name", "c", "localhost/built:extoc",
                       "sleep", "60")
        assert ran.returncode == 0, ran.stderr.decode()
        assert b"TOC could not be read" not in ran.stderr, ran.stderr.decode()
        assert ran.stderr.count(b"pulling it whole") == 1, "only the RUN's layer (gzip, in the store)"
        assert _lazy_mounts(root) == 2
        for digest in base_layers:
            assert Store(root).blob_path(digest) is None, "not downloaded whole"
        shown = lazypull(root, "exec", "c", "cat", "/etc/motd", "/built")
        assert (shown.returncode, shown.stdout) == (0, b"hi\nbuilt\n"), shown.stderr.decode()

        # FROM the base pinned by digest: no tag names its TOC image; the repository's are looked through
        pinned_root = tmp_path / "pinned"
        pinned = f"{registry.host}/lazypull-build/extoc@{Store(converter).resolve(base).manifest_digest}"
        (ctx / "Dockerfile").write_text(f"FROM {pinned}\nRUN cat /etc/motd > /seen\n")
        built = lazypull(pinned_root, "--insecure-registry", "build", "-t", "localhost/pinned:1", str(ctx))
        assert built.returncode == 0, built.stderr.decode()
        assert b"TOC could not be read" not in built.stderr, built.stderr.decode()
        for digest in base_layers:
            assert Store(pinned_root).blob_path(digest) is None, "mounted lazily, not downloaded whole"
        shown = lazypull(pinned_root, "--insecure-registry", "run", "--rm", "localhost/pinned:1",
                         "cat", "/seen")
        assert (shown.returncode, shown.stdout) == (0, b"hi\n"), shown.stderr.decode()
        assert b"TOC could not be read" not in shown.stderr, shown.stderr.decode()
    finally:
        lazypull(root, "rm", "-f", "c")
        for store_root in (root, tmp_path / "pinned", converter):
            lazypull(store_root, "daemon", "stop")
