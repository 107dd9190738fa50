"""What `images` counts: SIZE only for unpacked layers (annotation, recorded size, or the files on disk);
BLOB SIZE for manifest, config and layers; names split as nerdctl shows them."""

from __future__ import annotations

import json
from pathlib import Path

from lazypull.image import Layout, Store, copy_into_store
from lazypull.image.summary import split_name, summarize
from tests.helpers.images import make_oci_layout, sample_layers


def test_sizes(tmp_path: Path) -> None:
    built = make_oci_layout(tmp_path / "l", sample_layers(), tag="v1")
    layout = Layout(built.path)
    store = Store(tmp_path / "root")
    copy_into_store(store, layout.root("v1"), layout, "example.com/s:1", source=None, platforms=None,
                    verify_diff_ids=False)
    record = store.get_image("example.com/s:1")
    summary = summarize(store, record)
    manifest = built.image.manifest
    assert summary.blob_size == built.image.manifest_size + manifest["config"]["size"] + sum(
        layer["size"] for layer in manifest["layers"])
    assert summary.size == 0 and summary.platform == "linux/amd64"
    # Layer 2 unpacked (no recorded size): its files count.
    fs = tmp_path / "root/snapshots" / built.image.layer_digests[2][7:] / "fs"
    (fs / "sub").mkdir(parents=True)
    (fs / "sub/a").write_bytes(b"x" * 1000)
    (fs / "b").write_bytes(b"y" * 24)
    (fs / "link").symlink_to("b")
    assert summarize(store, record).size == 1024 + len("b")
    # A recorded uncompressed size wins over walking the tree.
    store.record_uncompressed(built.image.layer_digests[2], built.image.diff_ids[2], 4096)
    assert summarize(store, record).size == 4096


def test_damaged_entry_still_gets_a_row(tmp_path: Path) -> None:
    built = make_oci_layout(tmp_path / "l", sample_layers()[:1], tag="v1")
    layout = Layout(built.path)
    store = Store(tmp_path / "root")
    copy_into_store(store, layout.root("v1"), layout, "example.com/s:1", source=None, platforms=None)
    path = store.blob_path(built.image.manifest_digest)
    assert path is not None
    path.write_text(json.dumps({"schemaVersion": 2, "layers": "nope"}))
    summary = summarize(store, store.get_image("example.com/s:1"))
    assert summary.platform == "unknown" and summary.size == 0


def test_split_name() -> None:
    assert split_name("docker.io/library/ubuntu:22.04") == ("ubuntu", "22.04")
    assert split_name("docker.io/someone/tool:1") == ("someone/tool", "1")
    toc_name = "registry2:5000/ubuntu:22.04-ex-esgztoc"
    assert split_name(toc_name) == ("registry2:5000/ubuntu", "22.04-ex-esgztoc")
    assert split_name("127.0.0.1:5000/a@sha256:" + "a" * 64) == ("127.0.0.1:5000/a", "<none>")


def test_local_size(tmp_path: Path) -> None:
    """LOCAL: an extracted layer counts whole, any other layer what the chunk cache holds of it."""
    built = make_oci_layout(tmp_path / "l", sample_layers(), tag="v1")
    layout = Layout(built.path)
    store = Store(tmp_path / "root")
    copy_into_store(store, layout.root("v1"), layout, "example.com/s:1", source=None, platforms=None,
                    verify_diff_ids=False)
    record = store.get_image("example.com/s:1")
    asked: list[str] = []

    def cached(digest: str) -> int:
        asked.append(digest)
        return 100

    summary = summarize(store, record, cached)
    assert summary.size == 0 and summary.local_size == 100 * len(built.image.layer_digests)
    store.record_uncompressed(built.image.layer_digests[2], built.image.diff_ids[2], 4096)
    (tmp_path / "root/snapshots" / built.image.layer_digests[2][7:] / "fs").mkdir(parents=True)
    asked.clear()
    summary = summarize(store, record, cached)
    assert summary.size == 4096 and summary.local_size == 4096 + 100 * (len(built.image.layer_digests) - 1)
    assert built.image.layer_digests[2] not in asked and len(asked) == len(built.image.layer_digests) - 1
