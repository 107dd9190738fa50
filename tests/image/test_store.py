"""The local store: atomic verified blobs, images.json, names, resolution, interruption leftovers."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lazypull.image import (
    BlobNotFoundError,
    DigestMismatchError,
    ImageNotFoundError,
    Layout,
    Store,
    copy_into_store,
)
from lazypull.image.errors import ImageError, PlatformNotFoundError, StoreError
from lazypull.registry import Descriptor, Platform
from tests.helpers.images import BuiltLayout, make_oci_layout, sample_layers, sha256


def _blob_files(store: Store) -> set[str]:
    return {p.name for p in store.blobs_dir.iterdir()} if store.blobs_dir.is_dir() else set()


def test_put_blob_verifies_and_is_content_addressed(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    info = store.put_blob(b"hello")
    assert info.digest == sha256(b"hello") and info.size == 5
    assert store.read_blob(info.digest) == b"hello"
    assert store.blob_path(info.digest) == tmp_path / "root/content/blobs/sha256" / info.digest[7:]
    with pytest.raises(DigestMismatchError, match="content has digest"):
        store.put_blob(b"other", expected_digest=sha256(b"not other"))
    with pytest.raises(DigestMismatchError, match="got 5 bytes, expected 6"):
        store.put_blob(b"other", expected_digest=sha256(b"other"), expected_size=6)
    assert _blob_files(store) == {info.digest[7:]}
    assert list(store.ingest_dir.iterdir()) == []


@pytest.mark.parametrize("bad", ["sha256:../../etc/passwd", "sha256:ABC", "md5:00", "", "sha256:" + "g" * 64])
def test_malformed_digests_never_become_paths(tmp_path: Path, bad: str) -> None:
    store = Store(tmp_path)
    with pytest.raises(ImageError, match="invalid"):
        store.blob_path(bad)
    with pytest.raises(ImageError, match="invalid"):
        store.put_blob(b"x", expected_digest=bad)


def test_uncommitted_ingest_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(RuntimeError), store.ingest() as w:
        w.write(b"partial data")
        raise RuntimeError("interrupted")
    assert list(store.ingest_dir.iterdir()) == []
    assert _blob_files(store) == set()


def test_killed_writer_leftovers_are_cleaned_but_live_ones_kept(tmp_path: Path) -> None:
    store = Store(tmp_path)
    # A writer killed with SIGKILL half way: its temp file stays, its lock dies with it.
    script = (
        "import os, sys\n"
        "from lazypull.image import Store\n"
        "s = Store(sys.argv[1])\n"
        "cm = s.ingest()\n"
        "w = cm.__enter__()\n"
        "w.write(b'x' * 100000); w.flush()\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=Path(__file__).parents[2])
    assert proc.returncode == -9
    leftovers = list(store.ingest_dir.iterdir())
    assert len(leftovers) == 1
    # A live writer in this process holds its lock: cleanup must not touch it.
    with store.ingest() as live:
        live.write(b"in progress")
        assert store.cleanup() == 1
        assert [p.name for p in store.ingest_dir.iterdir()] == [live.path.name]
        info = live.commit()
    assert store.read_blob(info.digest) == b"in progress"
    assert _blob_files(store) == {info.digest[7:]}


def test_writer_that_seeks_is_hashed_from_the_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.ingest() as w:
        w.write(b"AAAA")
        w.seek(0)
        w.write(b"B")
        w.seek(0, os.SEEK_END)
        w.write(b"C")
        info = w.commit()
    assert store.read_blob(info.digest) == b"BAAAC"
    assert info.digest == sha256(b"BAAAC")


def _layout_into_store(tmp_path: Path, store: Store, name: str = "127.0.0.1:5000/test/img:v1",
                       ) -> BuiltLayout:
    built = make_oci_layout(tmp_path / "layout", sample_layers(), tag="v1")
    layout = Layout(built.path)
    root = layout.root("v1")
    copy_into_store(store, root, layout, name, source=None, platforms=None)
    return built


def test_images_json_names_and_resolve(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    built = _layout_into_store(tmp_path, store)
    records = store.list_images()
    assert [r.name for r in records] == ["127.0.0.1:5000/test/img:v1"]
    doc = json.loads((tmp_path / "root/images.json").read_text())
    assert doc["version"] == 1
    assert doc["images"]["127.0.0.1:5000/test/img:v1"]["target"]["digest"] == built.root_digest
    resolved = store.resolve("127.0.0.1:5000/test/img:v1")
    img = built.image
    assert resolved.manifest_digest == img.manifest_digest
    assert resolved.config_digest == img.config_digest
    assert [d.digest for d in resolved.layers] == img.layer_digests
    assert resolved.diff_ids == img.diff_ids
    assert resolved.platform == "linux/amd64"
    assert resolved.source is None
    # Every blob reached, and verified on the way in.
    for d in [img.manifest_digest, img.config_digest, *img.layer_digests]:
        store.verify_blob(d)
    info = store.uncompressed_info(img.layer_digests[0])
    assert info == (img.diff_ids[0], len(img.tars[0]))

    store.tag("127.0.0.1:5000/test/img:v1", "example.com/other")
    assert store.get_image("example.com/other:latest").target.digest == built.root_digest
    assert store.get_image(built.root_digest[7:19]).name == "127.0.0.1:5000/test/img:v1"
    store.remove("127.0.0.1:5000/test/img:v1")
    assert store.prune() == []  # still referenced by the other name
    store.remove("example.com/other:latest")
    removed = store.prune()
    assert set(removed) == {img.manifest_digest, img.config_digest, *img.layer_digests}
    assert _blob_files(store) == set()
    assert store.uncompressed_info(img.layer_digests[0]) is None
    with pytest.raises(ImageNotFoundError, match="not found"):
        store.get_image("example.com/other")


def test_prune_waits_for_leases(tmp_path: Path) -> None:
    store = Store(tmp_path)
    info = store.put_blob(b"unnamed")
    with store.lease():
        assert store.prune() == []
        assert store.has_blob(info.digest)
    assert store.prune() == [info.digest]


def test_index_platform_selection(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    built = make_oci_layout(tmp_path / "layout", sample_layers()[:1], tag="multi",
                            platforms=["linux/amd64", "linux/arm64"])
    layout = Layout(built.path)
    copy_into_store(store, layout.root("multi"), layout, "example.com/multi:1", source=None,
                    platforms=[Platform("linux", "arm64")])
    arm = store.resolve("example.com/multi:1", "linux/arm64")
    assert arm.platform == "linux/arm64"
    assert arm.manifest_digest == built.images[1].manifest_digest
    with pytest.raises(BlobNotFoundError, match="platform linux/amd64 is not in the store"):
        store.resolve("example.com/multi:1", "linux/amd64")
    with pytest.raises(PlatformNotFoundError, match="s390x"):
        store.resolve("example.com/multi:1", "linux/s390x")


def test_put_image_requires_manifest_blob(tmp_path: Path) -> None:
    store = Store(tmp_path)
    desc = Descriptor("application/vnd.oci.image.manifest.v1+json", sha256(b"{}"), 2)
    with pytest.raises(BlobNotFoundError, match="not in the store"):
        store.put_image("example.com/x:1", desc)
    assert not (tmp_path / "images.json").exists()
    with pytest.raises(ImageError, match="invalid image name"):
        store.put_image("Not A Name", desc)


def test_corrupt_images_json_is_reported(tmp_path: Path) -> None:
    (tmp_path / "images.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"images\.json is not valid JSON"):
        Store(tmp_path).list_images()


def test_failed_copy_leaves_no_blobs_and_no_name(tmp_path: Path) -> None:
    built = make_oci_layout(tmp_path / "layout", sample_layers(), tag="v1")
    # Corrupt the last layer on disk: its digest no longer matches.
    bad = built.path / "blobs/sha256" / built.image.layer_digests[2][7:]
    bad.write_bytes(bad.read_bytes()[:-10])
    store = Store(tmp_path / "root")
    layout = Layout(built.path)
    with pytest.raises(DigestMismatchError, match=built.image.layer_digests[2]):
        copy_into_store(store, layout.root("v1"), layout, "example.com/x:1", source=None, platforms=None)
    assert store.list_images() == []
    assert _blob_files(store) == set()
    assert list(store.ingest_dir.iterdir()) == []


def test_wrong_diff_id_is_refused(tmp_path: Path) -> None:
    built = make_oci_layout(tmp_path / "layout", sample_layers(),
                            config={"rootfs": {"type": "layers", "diff_ids": [sha256(b"a"), sha256(b"b"),
                                                                             sha256(b"c")]}})
    store = Store(tmp_path / "root")
    layout = Layout(built.path)
    with pytest.raises(DigestMismatchError, match="config says diff_id"):
        copy_into_store(store, layout.root("latest"), layout, "example.com/x:1", source=None, platforms=None)
    assert store.list_images() == [] and _blob_files(store) == set()


def test_index_lock_serialises_writers(tmp_path: Path) -> None:
    store = Store(tmp_path)
    info = store.put_blob(json.dumps({"schemaVersion": 2}).encode())
    desc = Descriptor("application/vnd.oci.image.manifest.v1+json", info.digest, info.size)
    fd = os.open(tmp_path / "images.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        script = (f"import sys\nfrom lazypull.image import Store\nfrom lazypull.registry import Descriptor\n"
                  f"Store(sys.argv[1]).put_image('example.com/a:1', Descriptor({desc.media_type!r}, "
                  f"{desc.digest!r}, {desc.size}))\n")
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=Path(__file__).parents[2])
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.5)
        assert not (tmp_path / "images.json").exists()
    finally:
        os.close(fd)
    assert proc.wait(timeout=20) == 0
    assert [r.name for r in store.list_images()] == ["example.com/a:1"]
