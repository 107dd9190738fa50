"""``LayerFs``: what the layers of one mount server share (activity, image groups, miss-wait histogram) is
that server's, never another server's in the same process."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from lazypull.format.layerkind import LayerSpec
from lazypull.fs import FileRangeSource, FsConfig, LayerFs, LayerTree
from tests.snapshot.layerkit import FILES, Blob, FaultySource, build_blob, lookup_path

CONFIG = FsConfig(prefetch=False, background_fetch=True, background_pause=0.0, background_quiet=1.0,
                  read_deadline=5.0, warm_connections=0, learn_window=0)


@dataclass
class ImageSource(FaultySource):
    """A blob source naming the image it belongs to, as ``RegistryBlobSource`` does."""

    ref: str = ""


def _open(lfs: LayerFs, blob: Blob, ref: str) -> tuple[LayerTree, ImageSource]:
    src = ImageSource(FileRangeSource(blob.path), ref=ref)
    spec = LayerSpec.from_descriptor(blob.digest, blob.result.blob_size, "", blob.annotations)
    tree = lfs.open_layer(spec, src)
    tree.fetcher.drop_preloaded()       # every chunk read goes to the source
    src.requests.clear()
    return tree, src


def test_background_fetch_waits_for_its_own_servers_foreground_work_only(tmp_path: Path) -> None:
    blob = build_blob(tmp_path)
    mine, other = LayerFs(tmp_path / "a", CONFIG), LayerFs(tmp_path / "b", CONFIG)
    tree, src = _open(mine, blob, "registry.test/app:1")
    told: list[float] = []          # what the background fetch was told each time it asked to start
    ask = mine.activity.quiet_remaining

    def asked(quiet: float) -> float:
        told.append(ask(quiet))
        return told[-1]

    mine.activity.quiet_remaining = asked  # type: ignore[method-assign]
    try:
        with mine.activity.busy():                  # a mount of this server in progress
            tree.start()
            deadline = time.monotonic() + 60
            while len(told) < 2:                    # it asked, was told to wait, and asked again
                assert time.monotonic() < deadline, "the background fetch never asked to start"
                time.sleep(0.02)
            assert all(wait > 0 for wait in told)
            assert src.requests == [] and tree.stats.background_state == "waiting"
        with other.activity.busy():                 # another server's work does not hold this one back
            assert tree.background.finished.wait(60)
            assert tree.stats.background_state == "done" and src.requests
    finally:
        tree.close()


def test_image_groups_and_miss_waits_are_per_server(tmp_path: Path) -> None:
    blob = build_blob(tmp_path)
    config = CONFIG.replace(background_fetch=False)
    a, b = LayerFs(tmp_path / "a", config), LayerFs(tmp_path / "b", config)
    ref = "registry.test/app:1"
    tree_a, _ = _open(a, blob, ref)
    tree_b, _ = _open(b, blob, ref)
    try:
        assert a.groups.trees_of(ref) == [tree_a] and b.groups.trees_of(ref) == [tree_b]
        ino = lookup_path(tree_a, "etc/hello.txt")
        assert tree_a.read(ino, 0, 4096) == FILES["etc/hello.txt"]      # a miss, waited on
        assert a.miss_wait.snapshot()[2] == 1 and b.miss_wait.snapshot()[2] == 0
    finally:
        tree_a.close()
        tree_b.close()
    assert a.groups.trees_of(ref) == [] and b.groups.trees_of(ref) == []
