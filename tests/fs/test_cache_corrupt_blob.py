"""A chunk that is corrupt in the blob itself (every answer has the same wrong bytes) fails its read at
once, naming the layer, the file and the chunk; a corruption that differs between answers, or that sits
where the answer's shape puts it (a proxy flipping bytes at body offsets), is retried until an answer
verifies (issue 10 item 11)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from lazypull.fs.config import FsConfig
from lazypull.fs.fuse import FuseError
from lazypull.fs.remote import FileRangeSource
from tests.snapshot.layerkit import FILES, Blob, FaultySource, build_blob, lookup_path, open_tree

# the default 30 s read deadline: before the fix a corrupt chunk was retried for all of it
CONFIG = FsConfig(prefetch=False, background_fetch=False, whole_file_max=0, readahead=False)


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Blob:
    return build_blob(tmp_path_factory.mktemp("blob"))


def test_a_chunk_corrupt_in_the_blob_fails_at_once_and_the_others_are_served(
        blob: Blob, tmp_path: Path) -> None:
    probe = open_tree(blob, tmp_path / "probe", CONFIG)
    ino = lookup_path(probe, "bin/huge")
    fc = probe._chunks_of(ino)
    assert fc is not None
    bad = fc.chunks[2]
    probe.close()
    damaged = tmp_path / "damaged.blob"                 # the registry's copy of the blob is corrupt
    shutil.copyfile(blob.path, damaged)
    with open(damaged, "r+b") as fh:
        at = (bad.offset + bad.end) // 2
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0xFF]))
    src = FaultySource(FileRangeSource(damaged))
    tree = open_tree(blob, tmp_path / "root", CONFIG, source=src)
    try:
        ino = lookup_path(tree, "bin/huge")
        src.requests.clear()
        with pytest.raises(FuseError) as err:
            tree.read(ino, bad.chunk_offset, 100)
        assert err.value.errno == errno.EIO
        assert len(src.requests) == 2, "asked again after two identical answers that did not verify"
        message = str(err.value)
        assert "\n" not in message
        assert blob.digest in message and "'bin/huge'" in message
        assert f"chunk at {bad.chunk_offset}" in message and "corrupt" in message
        # the chunks around it are served
        data = FILES["bin/huge"]
        before = fc.chunks[1]
        assert tree.read(ino, before.chunk_offset, before.chunk_size) == \
            data[before.chunk_offset : before.chunk_offset + before.chunk_size]
        after = fc.chunks[3]
        assert tree.read(ino, after.chunk_offset, after.chunk_size) == \
            data[after.chunk_offset : after.chunk_offset + after.chunk_size]
    finally:
        tree.close()


def test_the_same_flip_in_answers_of_the_same_shape_is_still_retried(blob: Blob, tmp_path: Path) -> None:
    """``FaultySource`` flips the middle byte of an answer: two answers to the same request are the same
    wrong bytes (as the test proxy's "corrupt" fault gives), yet the blob is fine."""
    src = FaultySource(FileRangeSource(blob.path))
    tree = open_tree(blob, tmp_path, CONFIG, source=src)
    try:
        ino = lookup_path(tree, "bin/big")
        src.requests.clear()
        src.corrupt = 4
        assert tree.read(ino, 0, 20000) == FILES["bin/big"]
        assert src.corrupt == 0 and len(src.requests) == 5
    finally:
        tree.close()
