"""Issue 9, finding 3: one image must never be served another image's cached content.

The chunk cache keeps one namespace per layer blob: a hostile TOC claiming the chunkDigest (and size) of
a secret file of another image gets its own blob's bytes (which fail verification: EIO), never the
secret, and cannot learn whether this node has the secret cached. A layer's record, cache and mount are
shared only with sources that serve its blob (``origins``).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import random
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from lazypull.errors import MountError
from lazypull.format import BytesSource, open_layer
from lazypull.format.footer import estargz_footer, parse_footer
from lazypull.format.tarheader import TarHeader, encode_go_header
from lazypull.fs.config import FsConfig
from lazypull.fs.remote import FileRangeSource
from lazypull.image import Store, pull_image
from lazypull.registry import NotFoundError, RegistryClient
from lazypull.snapshot.manager import LayerManager
from tests.helpers.registry import FaultProxy, RegistryServer
from tests.snapshot.layerkit import build_blob, open_tree, push_image, read_all

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED = "io.containers.estargz.uncompressed-size"
SECRET = random.Random(9).randbytes(3000)
DECOY = random.Random(10).randbytes(3000)       # same size: only the claimed digests are stolen


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _hostile(blob: bytes, name: str, digest: str) -> tuple[bytes, dict[str, str], str]:
    """``blob`` with its TOC entry ``name`` claiming ``digest`` (file and chunk): the blob, annotations
    (the TOC digest of the new TOC: the TOC itself verifies) and diff_id."""
    footer = parse_footer(blob[-51:], len(blob))
    toc = json.loads(open_layer(BytesSource(blob)).toc_json)
    hits = [e for e in toc["entries"] if e["name"] == name]
    assert hits
    for entry in hits:
        entry["digest"] = entry["chunkDigest"] = digest
    raw = json.dumps(toc).encode()
    tar = encode_go_header(TarHeader(name="stargz.index.json", size=len(raw)))
    member = gzip.compress(tar + raw + bytes(-len(raw) % 512) + bytes(1024))
    out = blob[: footer.toc_offset] + member + estargz_footer(footer.toc_offset)
    plain = gzip.decompress(out)
    notes = {TOC_DIGEST: "sha256:" + hashlib.sha256(raw).hexdigest(), UNCOMPRESSED: str(len(plain))}
    return out, notes, "sha256:" + hashlib.sha256(plain).hexdigest()


def _secret_digest() -> str:
    return "sha256:" + hashlib.sha256(SECRET).hexdigest()


def test_hostile_toc_never_gets_another_images_cached_chunk(registry: RegistryServer, tmp_path: Path) -> None:
    a = build_blob(tmp_path, _tar({"secret/key": SECRET}), name="a")
    decoy = build_blob(tmp_path, _tar({"stolen": DECOY}), name="b").path.read_bytes()
    b_blob, b_notes, b_diff = _hostile(decoy, "stolen", _secret_digest())
    b_digest = "sha256:" + hashlib.sha256(b_blob).hexdigest()
    push_image(registry.url, "iso/a", "v1",
               [(a.path.read_bytes(), OCI_GZIP, a.annotations, a.result.diff_id)])
    push_image(registry.url, "iso/b", "v1", [(b_blob, OCI_GZIP, b_notes, b_diff)])
    proxy = FaultProxy(registry).start()            # B's registry traffic, counted
    root = tmp_path / "root"
    store = Store(root)
    with RegistryClient(insecure=True) as client:
        rec_a = pull_image(store, client, f"{registry.host}/iso/a:v1", fetch_layers=False)
        rec_b = pull_image(store, client, f"{proxy.host}/iso/b:v1", fetch_layers=False)
    manager = LayerManager(root, FsConfig(background_fetch=False, prefetch=False, read_deadline=3.0))
    try:
        [ma] = manager.mount_image(rec_a.name, insecure=True, holder="victim")
        assert ma.path is not None and (ma.path / "secret/key").read_bytes() == SECRET
        assert manager.cache.layer(a.digest).contains(_secret_digest(), len(SECRET))
        [mb] = manager.mount_image(rec_b.name, insecure=True, holder="attacker")
        assert mb.lazy and mb.path is not None and mb.digest == b_digest
        # the existence oracle: B's namespace does not answer for A's chunk
        assert not manager.cache.layer(b_digest).contains(_secret_digest(), len(SECRET))
        gets = len(proxy.blob_gets)
        with pytest.raises(OSError) as caught:
            (mb.path / "stolen").read_bytes()
        assert caught.value.errno == errno.EIO       # B's own bytes, which do not match the claimed digest
        assert len(proxy.blob_gets) > gets, "B's read went to B's blob, not to the cache"
        assert not manager.cache.layer(b_digest).contains(_secret_digest(), len(SECRET))
        # nothing of B's landed next to A's chunks, and A's are intact
        assert manager.cache.layer(a.digest).get(_secret_digest(), len(SECRET)) == SECRET
        assert (ma.path / "secret/key").read_bytes() == SECRET
    finally:
        manager.close()
        proxy.stop()


def test_cached_layer_is_not_served_to_a_source_that_does_not_serve_its_blob(tmp_path: Path) -> None:
    """Mounting a digest whose TOC record and chunks are cached, from a source that has other bytes (or
    none): refused, though no TOC or chunk has to be fetched."""
    a = build_blob(tmp_path, _tar({"secret/key": SECRET}), name="a")
    first = open_tree(a, tmp_path / "root")
    try:
        assert read_all(first, _ino(first, "secret/key")) == SECRET
    finally:
        first.close()
    other = tmp_path / "other.blob"             # as long as A's blob, other bytes
    other.write_bytes(bytes(a.path.stat().st_size))
    with pytest.raises(MountError, match="serves other bytes than its blob"):
        open_tree(a, tmp_path / "root", source=_Renamed(FileRangeSource(other), "hostile/repo"))

    class Missing(_Renamed):
        def read_ranges(self, ranges: Any, deadline: float | None = None) -> list[bytes]:
            raise NotFoundError("404 blob unknown to registry")

    with pytest.raises(MountError, match="does not serve its blob"):
        open_tree(a, tmp_path / "root", source=Missing(FileRangeSource(a.path), "hostile/repo2"))
    # the origin that served it once is still trusted, and a new one serving the same blob is accepted
    again = open_tree(a, tmp_path / "root", source=_Renamed(FileRangeSource(a.path), "mirror/repo"))
    try:
        assert read_all(again, _ino(again, "secret/key")) == SECRET
        assert (tmp_path / "root/snapshots" / a.digest[7:] / "origins").read_text().splitlines()[-1] \
            == "test/mirror/repo"
    finally:
        again.close()


def test_mounted_layer_is_not_shared_with_an_image_whose_registry_lacks_the_blob(
        registry: RegistryServer, tmp_path: Path) -> None:
    """Image C names A's layer digest and A's TOC digest but its repository does not serve the blob: the
    mount server must not hand C the mount A's image holds."""
    a = build_blob(tmp_path, _tar({"secret/key": SECRET}), name="a")
    layer = (a.path.read_bytes(), OCI_GZIP, a.annotations, a.result.diff_id)
    push_image(registry.url, "iso/a2", "v1", [layer])
    push_image(registry.url, "iso/c", "v1", [layer])
    root = tmp_path / "root"
    store = Store(root)
    with RegistryClient(insecure=True) as client:
        rec_a = pull_image(store, client, f"{registry.host}/iso/a2:v1", fetch_layers=False)
        rec_c = pull_image(store, client, f"{registry.host}/iso/c:v1", fetch_layers=False)
    # C's repository no longer serves the blob (as a hostile image's never did)
    with httpx.Client(base_url=registry.url) as http:
        assert http.delete(f"/v2/iso/c/blobs/{a.digest}").status_code == 202
    manager = LayerManager(root, FsConfig(background_fetch=False, prefetch=False, read_deadline=3.0))
    try:
        [ma] = manager.mount_image(rec_a.name, insecure=True, holder="victim")
        assert ma.path is not None and (ma.path / "secret/key").read_bytes() == SECRET
        [mc] = manager.mount_image(rec_c.name, insecure=True, holder="attacker")
        assert not mc.lazy and mc.path is None      # refused lazily (the full download fails as well)
        assert [i.holders for i in manager.list_mounts()] == [["victim"]]
    finally:
        manager.close()


class _Renamed:
    """A blob source presented as another registry repository (its origin)."""

    def __init__(self, inner: FileRangeSource, repository: str) -> None:
        self.inner = inner
        self.ref = _Ref(repository)

    @property
    def size(self) -> int:
        return self.inner.size

    def read_ranges(self, ranges: Any, deadline: float | None = None) -> list[bytes]:
        return self.inner.read_ranges(ranges, deadline)

    def describe(self) -> str:
        return f"{self.ref.repository}@test"


class _Ref:
    def __init__(self, repository: str) -> None:
        self.registry = "test"
        self.repository = repository


def _ino(tree: Any, path: str) -> int:
    from tests.snapshot.layerkit import lookup_path

    return lookup_path(tree, path)
