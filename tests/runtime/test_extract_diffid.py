"""Both ways of extracting a layer whole (from the stored blob, and while it downloads) read its
uncompressed stream to the end and check the config's DiffID over all of it, what follows the tar's
end-of-archive blocks included (an eStargz layer's TOC, bytes a lossless conversion kept): they accept
and refuse the same layers, with the same one-line error, and leave nothing behind when they refuse.
The lazy view agrees where it can tell: it accepts an eStargz layer whose tar is followed by bytes (it
shows what the TOC lists, the full extractions the same tree), and refuses one whose TOC member is
followed by anything but the footer (never read lazily, so the full extraction decides)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from lazypull.errors import LazypullError
from lazypull.format.footer import ESTARGZ_FOOTER_SIZE
from lazypull.fs.config import FsConfig
from lazypull.fs.layer.inodes import InodeTable
from lazypull.fs.layer.toc import open_toc
from lazypull.fs.remote import FileRangeSource, RecordingSource, RemoteBlob
from lazypull.fs.stats import LayerStats
from lazypull.image import Store, pull_image
from lazypull.image.errors import DigestMismatchError
from lazypull.registry import RegistryClient
from lazypull.runtime.extract import LayerExtractError, StreamingExtraction, extract_layer
from lazypull.runtime.layers import lower_dirs, snapshot_dir, streaming_unpacker
from lazypull.snapshot import MountClient
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import Entry, make_tar
from tests.security.test_lazy_extract_parity import extracted_view, lazy_view
from tests.snapshot.layerkit import build_blob, push_image

REPO_ROOT = Path(__file__).resolve().parents[2]
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ENTRIES = [Entry("etc/", "dir", mode=0o755), Entry("etc/motd", data=b"hello\n"),
           Entry("bin/tool", data=os.urandom(20_000), mode=0o755),
           Entry("bin/link", "symlink", linkname="tool")]
# What follows the tar's end: the DiffID covers it, tar never reads it.
AFTER = b"bytes after the end-of-archive blocks " * 30


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor(write_checksum=True).compress(data)
    return data


def damaged(member: bytes) -> bytes:
    """``member`` with one byte of its (incompressible, so stored) data flipped: the checksum at its end
    fails, nothing before it does."""
    at = len(member) // 2
    return member[:at] + bytes([member[at] ^ 0xFF]) + member[at + 1:]


def streamed(blob: Path, dest: Path, label: str, skip_estargz_metadata: bool = False) -> StreamingExtraction:
    """A streaming extraction fed ``blob`` in download-sized pieces."""
    job = StreamingExtraction(dest, label=label, skip_estargz_metadata=skip_estargz_metadata)
    data = blob.read_bytes()
    step = 16 << 10
    for i in range(0, len(data), step):
        job.feed(data[i:i + step])
    return job


def nothing_left(dest: Path) -> bool:
    """No layer and no partial extraction of it."""
    return not dest.exists() and (not dest.parent.exists() or list(dest.parent.iterdir()) == [])


AFTER_THE_TAR: dict[str, Callable[[bytes], bytes]] = {
    # a second gzip member of random bytes (stored blocks), one byte of them flipped
    "gzip-damaged-member": lambda tar: gzip.compress(tar) + damaged(gzip.compress(os.urandom(64 << 10))),
    # beyond what the decompressor reads ahead while tar reads: found only by reading to the end
    "gzip-garbage": lambda tar: gzip.compress(tar) + gzip.compress(os.urandom(1 << 20)) + b"garbage",
    "zstd-damaged-frame": lambda tar: compress(tar, "zstd") + damaged(compress(os.urandom(64 << 10), "zstd")),
}


@pytest.mark.parametrize("case", sorted(AFTER_THE_TAR))
def test_damage_after_the_tar_is_refused_by_both_extractions(tmp_path: Path, case: str) -> None:
    """The whole-blob path used to stop where tar stops and accept these; the streaming one refused."""
    blob = tmp_path / "blob"
    blob.write_bytes(AFTER_THE_TAR[case](make_tar(ENTRIES)))
    with pytest.raises(LayerExtractError) as whole:
        extract_layer(blob, tmp_path / "whole" / "fs", label="layer sha256:abc")
    job = streamed(blob, tmp_path / "streamed" / "fs", "layer sha256:abc")
    with pytest.raises(LayerExtractError) as stream:
        job.finish()
    job.abort()
    assert str(whole.value) == str(stream.value)
    text = str(whole.value)
    assert text.startswith("layer sha256:abc: ") and "\n" not in text, text
    assert nothing_left(tmp_path / "whole" / "fs") and nothing_left(tmp_path / "streamed" / "fs")


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_the_diff_id_covers_what_follows_the_tar(tmp_path: Path, kind: str) -> None:
    tar = make_tar(ENTRIES)
    blob = tmp_path / "blob"
    blob.write_bytes(compress(tar + AFTER, kind))
    whole = sha256(tar + AFTER)
    with pytest.raises(DigestMismatchError) as err:      # what a reader stopping at the tar's end hashes
        extract_layer(blob, tmp_path / "short" / "fs", label="layer sha256:abc", diff_id=sha256(tar))
    assert str(err.value) == (f"layer sha256:abc: uncompressed content has digest {whole}, "
                              f"config says diff_id {sha256(tar)}")
    assert nothing_left(tmp_path / "short" / "fs")
    stats = extract_layer(blob, tmp_path / "whole" / "fs", diff_id=whole)
    assert stats is not None and stats.members == len(ENTRIES)
    job = streamed(blob, tmp_path / "streamed" / "fs", "layer sha256:abc")
    assert job.finish() == (whole, len(tar + AFTER))
    job.commit()
    assert extracted_view(tmp_path / "streamed" / "fs") == extracted_view(tmp_path / "whole" / "fs")
    assert (tmp_path / "whole" / "fs" / "etc" / "motd").read_bytes() == b"hello\n"


def test_a_wrong_diff_id_is_one_refusal_on_every_full_path(registry: RegistryServer, tmp_path: Path) -> None:
    """A full pull (extracting while it downloads) and the run of a lazily pulled image whose layer the
    server does not mount (downloaded, then extracted from the store; it used to skip the DiffID) refuse
    the same layer with the same line; nothing is extracted. The honest image works both ways."""
    tar = make_tar(ENTRIES)
    data = gzip.compress(tar + AFTER, mtime=0)
    digest, whole, short = sha256(data), sha256(tar + AFTER), sha256(tar)
    push_image(registry.url, "diffid/full", "short", [(data, OCI_GZIP, {}, short)])
    push_image(registry.url, "diffid/full", "whole", [(data, OCI_GZIP, {}, whole)])
    expected = f"layer {digest}: uncompressed content has digest {whole}, config says diff_id {short}"

    def pull_streaming(root: Path, tag: str) -> None:
        with RegistryClient(insecure=True) as client:
            pull_image(Store(root), client, f"{registry.host}/diffid/full:{tag}",
                       unpack=streaming_unpacker(root))

    def pull_lazily_then_extract(root: Path, tag: str) -> list[Path]:
        store = Store(root)
        with RegistryClient(insecure=True) as client:
            name = pull_image(store, client, f"{registry.host}/diffid/full:{tag}", fetch_layers=False).name
        return lower_dirs(root, store, store.resolve(name), None, lambda: RegistryClient(insecure=True))

    with pytest.raises(DigestMismatchError) as streaming:
        pull_streaming(tmp_path / "a", "short")
    with pytest.raises(DigestMismatchError) as whole_blob:
        pull_lazily_then_extract(tmp_path / "b", "short")
    assert str(streaming.value) == str(whole_blob.value) == expected
    for root in (tmp_path / "a", tmp_path / "b"):
        assert nothing_left(snapshot_dir(root, digest))

    pull_streaming(tmp_path / "c", "whole")
    [lower] = pull_lazily_then_extract(tmp_path / "d", "whole")
    assert lower == snapshot_dir(tmp_path / "d", digest)
    assert extracted_view(snapshot_dir(tmp_path / "c", digest)) == extracted_view(lower)


def lazy_table(tmp: Path, path: Path, digest: str, annotations: dict[str, str],
               toc: bytes | None = None) -> InodeTable:
    """What a lazy mount of the layer shows (its TOC opened as the mount server opens it)."""
    remote = RemoteBlob(FileRangeSource(path), LayerStats(digest),
                        FsConfig(prefetch=False, background_fetch=False))
    reader = open_toc(digest, annotations, RecordingSource(remote, tmp / f"{path.name}.record"),
                      (lambda: toc) if toc is not None else None)
    return InodeTable(reader)


def test_an_estargz_layer_whose_tar_is_followed_by_bytes_is_one_tree(tmp_path: Path) -> None:
    """A lossless conversion keeps what followed the source tar's end (its DiffID is the source's): the
    lazy view shows what the TOC lists, both extractions the same tree, with the DiffID of all of it."""
    tar = make_tar(ENTRIES)
    layer = build_blob(tmp_path, tar + AFTER, keep_diff_id=True, external_toc=True)
    assert layer.result.diff_id == sha256(tar + AFTER)
    lazy = lazy_view(lazy_table(tmp_path, layer.path, layer.digest, layer.annotations, layer.result.toc_blob))
    extract_layer(layer.path, tmp_path / "whole" / "fs", skip_estargz_metadata=True,
                  diff_id=layer.result.diff_id)
    job = streamed(layer.path, tmp_path / "streamed" / "fs", f"layer {layer.digest}", True)
    assert job.finish() == (layer.result.diff_id, len(tar + AFTER))
    job.commit()
    assert lazy == extracted_view(tmp_path / "whole" / "fs") == extracted_view(tmp_path / "streamed" / "fs")
    assert "bin/tool" in lazy
    with pytest.raises(DigestMismatchError, match="config says diff_id " + sha256(tar)):
        extract_layer(layer.path, tmp_path / "short" / "fs", skip_estargz_metadata=True, diff_id=sha256(tar))
    assert nothing_left(tmp_path / "short" / "fs")


@pytest.mark.parametrize("extra", ["member", "damaged-member"])
def test_bytes_between_the_toc_and_the_footer_are_left_to_the_full_extraction(tmp_path: Path,
                                                                             extra: str) -> None:
    """An eStargz layer with a gzip member between its TOC member and its footer: the lazy view never
    reads it, so it refuses to mount the layer (the server then downloads it whole) instead of showing a
    layer whose full extraction fails. It used to mount both."""
    layer = build_blob(tmp_path, make_tar(ENTRIES))
    data = layer.path.read_bytes()
    member = gzip.compress(AFTER) if extra == "member" else damaged(gzip.compress(os.urandom(64 << 10)))
    spliced = data[:-ESTARGZ_FOOTER_SIZE] + member + data[-ESTARGZ_FOOTER_SIZE:]    # the TOC offset holds
    path = tmp_path / "spliced.blob"
    path.write_bytes(spliced)
    with pytest.raises(LazypullError) as lazy:
        lazy_table(tmp_path, path, sha256(spliced), layer.annotations)
    assert f"{len(member)} bytes follow its gzip member" in str(lazy.value), lazy.value
    dest = tmp_path / "whole" / "fs"
    if extra == "member":
        stats = extract_layer(path, dest, skip_estargz_metadata=True,
                              diff_id=sha256(gzip.decompress(spliced)))
        assert stats is not None and (dest / "bin" / "tool").is_file()
    else:
        with pytest.raises(LayerExtractError, match="cannot decompress what follows its tar"):
            extract_layer(path, dest, skip_estargz_metadata=True, diff_id=layer.result.diff_id)
        assert nothing_left(dest)


GO_LAYERS = {      # Go-written layers (tests/data/vectors) and the DiffID Go computed for each
    "tiny.esgz": "tiny.build.json",              # TOC entry and end-of-archive in the TOC member
    "many-min.esgz": "many-min.build.json",
    "tiny-ext.esgz": "tiny-ext.build.json",      # external TOC: no end-of-archive blocks at all
    "tiny-legacy.stargz": "tiny.build.json",
    "tiny.zstd": "tiny.zstd.build.json",         # zstd:chunked: skippable frames are not in the stream
    "tiny-ll-ext.esgz": "tiny.tar",              # lossless: the source tar, its trailing zeros kept
    "tiny.cs.zstd": "tiny.tar",
}


@pytest.mark.parametrize("name", sorted(GO_LAYERS))
def test_go_written_layers_have_the_diff_id_go_computed(vectors: Path, tmp_path: Path, name: str) -> None:
    source = vectors / GO_LAYERS[name]
    diff_id = (sha256(source.read_bytes()) if source.suffix == ".tar"
               else json.loads(source.read_text())["diffID"])
    dest = tmp_path / "whole" / "fs"
    assert extract_layer(vectors / name, dest, skip_estargz_metadata=True, diff_id=diff_id) is not None
    job = streamed(vectors / name, tmp_path / "streamed" / "fs", f"layer {name}", skip_estargz_metadata=True)
    assert job.finish()[0] == diff_id
    job.commit()
    assert extracted_view(dest) == extracted_view(tmp_path / "streamed" / "fs") != {}


def test_both_snapshotters_refuse_a_plain_layer_with_a_wrong_diff_id(registry: RegistryServer,
                                                                     tmp_path: Path) -> None:
    """Through the command: ``--snapshotter=stargz pull`` unpacks a layer the server cannot mount (plain
    gzip) from the stored blob, and used to name the image without a DiffID check; now both snapshotters
    print the same line, name no image and leave no layer extracted."""
    tar = make_tar(ENTRIES)
    data = gzip.compress(tar + AFTER, mtime=0)
    push_image(registry.url, "diffid/cli", "v1", [(data, OCI_GZIP, {}, sha256(tar))])
    root = tmp_path / "root"
    env = dict(os.environ, LAZYPULL_ROOT=str(root))

    def lazypull(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lazypull", *args], capture_output=True, text=True,
                              env=env, cwd=REPO_ROOT, timeout=180)

    expected = (f"lazypull: error: layer {sha256(data)}: uncompressed content has digest "
                f"{sha256(tar + AFTER)}, config says diff_id {sha256(tar)}")
    try:
        for snapshotter in ("stargz", "overlayfs"):
            pulled = lazypull(f"--snapshotter={snapshotter}", "pull", "-q", f"{registry.host}/diffid/cli:v1")
            assert (pulled.returncode, pulled.stderr.strip().splitlines()) == (1, [expected]), pulled.stderr
            images = lazypull("images")
            assert images.returncode == 0 and "diffid/cli" not in images.stdout
            assert nothing_left(snapshot_dir(root, sha256(data)))
    finally:
        with contextlib.suppress(Exception), MountClient(root, autostart=False) as client:
            client.shutdown()


def test_an_image_without_a_diff_id_per_layer_is_refused_before_any_download(tmp_path: Path) -> None:
    """Nothing to check a layer against: refused as a full pull refuses it, before fetching anything."""
    from types import SimpleNamespace

    from lazypull.errors import ContainerError
    from lazypull.registry import Descriptor

    digest = sha256(b"a layer")
    image = SimpleNamespace(name="test/no-diff-ids:1", source=None, diff_ids=[], layers=[
        Descriptor(media_type=OCI_GZIP, digest=digest, size=7)])

    def no_client() -> RegistryClient:
        raise AssertionError("nothing may be downloaded")

    with pytest.raises(ContainerError, match="1 layers but its config lists 0 diff_ids"):
        lower_dirs(tmp_path / "root", Store(tmp_path / "root"), image, None, no_client)  # type: ignore[arg-type]
    assert nothing_left(snapshot_dir(tmp_path / "root", digest))
