"""A lazy pull's reply says what the client would otherwise read the store for (issue 14, the pull
phase): the metadata of nerdctl's ``fetching`` lines, and what the name meant before the pull (put back
if the client's download of a layer the server cannot serve fails). So ``lazypull pull`` of a lazy
image imports no image store: ~20 ms of imports and store reads before its request and after the reply."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from lazypull.errors import MountError
from lazypull.image.store import Store
from lazypull.snapshot import MountClient
from lazypull.snapshot.protocol import PulledImage
from tests.cli.test_import_cost import _run
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import busybox_specs, push_lazy_image
from tests.snapshot.layerkit import gzip_layer, push_image

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"


def test_the_reply_lists_the_metadata_and_what_the_name_meant_before(tmp_path: Path,
                                                                     registry: RegistryServer) -> None:
    ref = f"{registry.host}/pullreply/moved:v1"
    blob, diff_id = gzip_layer({"one.txt": b"one\n"})
    push_image(registry.url, "pullreply/moved", "v1", [(blob, OCI_GZIP, {}, diff_id)])
    root = tmp_path / "root"
    try:
        with MountClient(root) as mc:
            first = mc.pull_image(ref, insecure=True)
            assert (first.previous_known, first.previous) == (True, None)
            store = Store(root)
            resolved = store.resolve(first.name)
            assert first.metadata == [(resolved.manifest_digest, MANIFEST), (resolved.config_digest, CONFIG)]
            before = store.get_image(first.name)

            blob, diff_id = gzip_layer({"two.txt": b"two\n"})       # the tag moves
            push_image(registry.url, "pullreply/moved", "v1", [(blob, OCI_GZIP, {}, diff_id)])
            second = mc.pull_image(ref, insecure=True)
            assert second.digest != first.digest
            assert second.previous == {"name": before.name, "record": before.to_json()}
            assert store.get_image(first.name).target.digest == second.digest
    finally:
        with contextlib.suppress(Exception):
            MountClient(root, autostart=False).shutdown()


def test_a_lazy_pull_imports_no_image_store_and_still_says_what_it_fetched(tmp_path: Path,
                                                                            registry: RegistryServer) -> None:
    name, _ = push_lazy_image(tmp_path / "build", f"{registry.host}/pullreply/lazy:esgz", [busybox_specs()])
    root = tmp_path / "root"
    root.mkdir()
    try:
        pulled, loaded = _run(root, "--insecure-registry", "pull", "--snapshotter=stargz", name,
                              heavy=("lazypull.image.store", "lazypull.image.mediatypes"))
        assert pulled.returncode == 0, pulled.stderr
        assert loaded == [], f"a lazy pull imported {loaded}"
        store = Store(root)
        resolved = store.resolve(name)
        assert [line for line in pulled.stderr.splitlines() if line.startswith("fetching ")] == [
            f"fetching {resolved.manifest_digest[:15]}... {MANIFEST}",
            f"fetching {resolved.config_digest[:15]}... {CONFIG}"]
    finally:
        with contextlib.suppress(Exception):
            MountClient(root, autostart=False).shutdown()


def test_a_reply_without_previous_is_not_known_and_malformed_parts_are_named() -> None:
    base = {"name": "r/x:1", "digest": "sha256:" + "a" * 64, "layers": []}
    older = PulledImage.from_json(base)        # a server from before the reply said these
    assert (older.previous_known, older.previous, older.metadata) == (False, None, None)
    assert PulledImage.from_json({**base, "previous": None}).previous_known is True
    with pytest.raises(MountError, match="'metadata' is not a list of \\[digest, media type\\]"):
        PulledImage.from_json({**base, "metadata": [["sha256:x"]]})
    with pytest.raises(MountError, match="'previous' is not an object"):
        PulledImage.from_json({**base, "previous": "r/x:0"})
