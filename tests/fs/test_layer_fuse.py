"""The lazy layer over real FUSE and Debian's docker-registry, reached through a fault-injecting proxy:
files equal the tar, only needed ranges are fetched, overlayfs applies the whiteouts, corruption gives EIO,
and a registry that stops and comes back costs EIO after the deadline, then works again."""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lazypull.errors import MountError
from lazypull.fs import mount_layer
from lazypull.fs.cache import DirectoryCache
from lazypull.fs.config import FsConfig
from lazypull.fs.layer import LayerTree, open_layer_tree
from lazypull.registry import RegistryClient, RetryPolicy, parse_reference
from tests.helpers.registry import Fault, FaultProxy, RegistryServer
from tests.snapshot.layerkit import FILES, Blob, build_blob, push_blob

CONFIG = FsConfig(prefetch=False, background_fetch=False, read_deadline=1.0, retry_initial=0.05,
                  retry_max=0.2, blob_readahead=0)    # (counted alone in test_layer_readahead)


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Blob:
    return build_blob(tmp_path_factory.mktemp("blob"))


@contextmanager
def mounted(tmp: Path, blob: Blob, host: str, repo: str,
            config: FsConfig = CONFIG) -> Iterator[tuple[LayerTree, Path, object]]:
    client = RegistryClient(insecure=True, retry=RetryPolicy(attempts=1), timeout=5.0)
    ref = parse_reference(f"{host}/{repo}:latest")
    source = client.blob_source(ref, blob.digest, blob.result.blob_size)
    tree = open_layer_tree(blob.digest, blob.annotations, source, root=tmp, config=config,
                           cache=DirectoryCache(config.chunk_dir(tmp)))
    tree.start()
    fuse = mount_layer(tree, tmp / "mnt")
    try:
        yield tree, tmp / "mnt", fuse
    finally:
        fuse.stop()
        tree.close()
        client.close()


def test_mount_serves_the_tar_fetching_only_what_is_read(blob: Blob, registry: RegistryServer,
                                                          unique_repo: str, tmp_path: Path) -> None:
    push_blob(registry.url, unique_repo, blob.path.read_bytes())
    proxy = FaultProxy(registry).start()
    try:
        with mounted(tmp_path, blob, proxy.host, unique_repo) as (tree, mnt, fuse):
            assert len(proxy.blob_gets) == 1, "footer and TOC in one ranged request"
            line = [ln for ln in subprocess.run(["mount"], capture_output=True, text=True).stdout.splitlines()
                    if str(mnt) in ln]
            assert len(line) == 1 and "fuse.lazypull" in line[0]
            assert (mnt / "etc/hello.txt").read_bytes() == b"hello\n"
            assert len(proxy.blob_gets) == 2, "one range request for the file read"
            assert proxy.blob_gets[1] and proxy.blob_gets[1].startswith("bytes=")
            assert tree.stats.requests == 2
            st = os.stat(mnt / "etc/setuid")
            assert stat.S_IMODE(st.st_mode) == 0o4755
            assert os.stat(mnt / "etc/hard").st_ino == os.stat(mnt / "etc/hello.txt").st_ino
            assert os.stat(mnt / "etc/hello.txt").st_nlink == 2
            assert os.readlink(mnt / "link") == "etc/hello.txt"
            wh = os.stat(mnt / "etc/removed")
            assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
            assert os.getxattr(mnt / "etc/cap", "user.foo") == b"bar"
            assert os.getxattr(mnt / "opq", "trusted.overlay.opaque") == b"y"
            assert os.stat(mnt / "dev/null0").st_rdev == os.makedev(1, 3)
            assert sorted(os.listdir(mnt)) == ["bin", "dev", "etc", "link", "opq", "usr"]
            for name, data in FILES.items():
                assert (mnt / name).read_bytes() == data, name
            fetched = tree.stats.bytes_fetched
            assert fetched <= blob.result.blob_size + 4096
            # Complete now: a new open goes through passthrough when the kernel offers it.
            assert (mnt / "bin/huge").read_bytes() == FILES["bin/huge"]
            if getattr(fuse, "passthrough_active", False):
                assert tree.backing_path(os.stat(mnt / "bin/huge").st_ino) is not None
    finally:
        proxy.stop()


def test_overlay_applies_whiteouts_and_opaque_dirs(blob: Blob, registry: RegistryServer, unique_repo: str,
                                                   tmp_path: Path) -> None:
    push_blob(registry.url, unique_repo, blob.path.read_bytes())
    base = tmp_path / "base"
    (base / "etc").mkdir(parents=True)
    (base / "etc/removed").write_text("old")
    (base / "etc/other").write_text("other")
    (base / "opq").mkdir()
    (base / "opq/old").write_text("old")
    merged, upper, work = tmp_path / "merged", tmp_path / "upper", tmp_path / "work"
    for d in (merged, upper, work):
        d.mkdir()
    with mounted(tmp_path / "layer", blob, registry.host, unique_repo) as (_tree, mnt, _fuse):
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={mnt}:{base},upperdir={upper},workdir={work}", str(merged)], check=True)
        try:
            expected = ["cap", "empty", "hard", "hello.txt", "other", "setuid"]
            assert sorted(os.listdir(merged / "etc")) == expected
            assert os.listdir(merged / "opq") == ["keep"]
            assert (merged / "bin/big").read_bytes() == FILES["bin/big"]
            (merged / "etc/hello.txt").write_text("changed")      # copy-up from the lazy layer
            assert (upper / "etc/hello.txt").read_text() == "changed"
        finally:
            subprocess.run(["umount", str(merged)], check=True)


def test_corrupted_blob_gives_eio_and_is_logged(blob: Blob, registry: RegistryServer, unique_repo: str,
                                                tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    push_blob(registry.url, unique_repo, blob.path.read_bytes())
    proxy = FaultProxy(registry).start()
    caplog.set_level(logging.ERROR)
    try:
        with mounted(tmp_path, blob, proxy.host, unique_repo) as (tree, mnt, _fuse):
            corrupt = proxy.add(Fault("corrupt", method="GET", path_contains="/blobs/sha256:", times=-1))
            with pytest.raises(OSError) as err:
                (mnt / "bin/huge").read_bytes()
            assert err.value.errno == errno.EIO
            assert tree.stats.verify_failures >= 2
            assert blob.digest in caplog.text and "bin/huge" in caplog.text
            proxy.remove(corrupt)
            assert (mnt / "bin/huge").read_bytes() == FILES["bin/huge"]
    finally:
        proxy.stop()


def test_registry_stopped_mid_run_then_back(blob: Blob, tmp_path: Path) -> None:
    server = RegistryServer(tmp_path / "reg").start()
    proxy = FaultProxy(server).start()
    try:
        push_blob(server.url, "lazy/stop", blob.path.read_bytes())
        with mounted(tmp_path / "root", blob, proxy.host, "lazy/stop") as (tree, mnt, _fuse):
            assert (mnt / "etc/hello.txt").read_bytes() == b"hello\n"
            server.stop()
            with pytest.raises(OSError) as err:
                (mnt / "bin/big").read_bytes()
            assert err.value.errno == errno.EIO
            assert (mnt / "etc/hello.txt").read_bytes() == b"hello\n", "cached data still served"
            server.start()
            proxy.upstream_port = server.port
            assert (mnt / "bin/big").read_bytes() == FILES["bin/big"]
            assert tree.stats.read_errors >= 1
    finally:
        proxy.stop()
        server.stop()



def test_external_toc_from_the_esgztoc_image(tmp_path: Path, registry: RegistryServer,
                                             unique_repo: str) -> None:
    from lazypull.image.tocimage import fetch_external_toc
    from tests.snapshot.layerkit import push_manifest

    blob = build_blob(tmp_path, external_toc=True)
    toc_blob = blob.result.toc_blob
    assert toc_blob
    push_blob(registry.url, unique_repo, blob.path.read_bytes())
    empty = b"{}"
    push_blob(registry.url, unique_repo, empty)
    toc_digest = push_blob(registry.url, unique_repo, toc_blob)
    push_manifest(registry.url, unique_repo, "v1-esgztoc", {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                   "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": toc_digest,
                    "size": len(toc_blob),
                    "annotations": {"containerd.io/snapshot/stargz/layer.digest": blob.digest}}]})
    client = RegistryClient(insecure=True)
    ref = parse_reference(f"{registry.host}/{unique_repo}:v1")
    calls: list[int] = []

    def external() -> bytes:
        calls.append(1)
        return fetch_external_toc(client, ref, blob.digest)

    for attempt in range(2):     # the second open uses the TOC saved by the first
        source = client.blob_source(ref, blob.digest, blob.result.blob_size)
        tree = open_layer_tree(blob.digest, blob.annotations, source, root=tmp_path / "root", config=CONFIG,
                               external_toc=external)
        ino = 1
        for part in ("bin", "big"):
            found = tree.lookup(ino, part.encode())
            assert found is not None
            ino = found.ino
        assert tree.read(ino, 0, 1 << 20) == FILES["bin/big"]
        tree.close()
        assert len(calls) == 1, attempt
    with pytest.raises(MountError, match="not found"):
        fetch_external_toc(client, ref, "sha256:" + "1" * 64)
    client.close()


def test_disjoint_ranges_are_one_multi_range_request_to_the_registry(
        blob: Blob, registry: RegistryServer, unique_repo: str, tmp_path: Path) -> None:
    push_blob(registry.url, unique_repo, blob.path.read_bytes())
    proxy = FaultProxy(registry).start()
    config = FsConfig(prefetch=False, background_fetch=False, merge_gap=0, readahead=0, whole_file_max=0,
                      warm_connections=0)
    try:
        with mounted(tmp_path, blob, proxy.host, unique_repo, config) as (tree, mnt, _fuse):
            tree.fetcher.preloaded = []
            huge = os.stat(mnt / "bin/huge").st_ino
            assert tree.read(huge, 4096, 4096) == FILES["bin/huge"][4096:8192]
            before = len(proxy.blob_gets)
            assert tree.read(huge, 0, 3 * 4096) == FILES["bin/huge"][: 3 * 4096]
            assert len(proxy.blob_gets) == before + 1
            header = proxy.blob_gets[-1]
            assert header is not None and header.startswith("bytes=") and header.count(",") == 1
    finally:
        proxy.stop()
