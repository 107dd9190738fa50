"""``ls -l`` of a huge lazy directory: no xattr round trip per file for a layer without xattrs.

``ls -l`` asks every file's extended attributes (SELinux label, ACL): GETXATTR requests for each file,
each a round trip to the mount server (minutes for a 1M-entry layer). A layer that has no xattr at
all answers ENOSYS, which the kernel remembers for the whole mount and stops asking. overlayfs, which
asks its lowers for ``trusted.overlay.*``, still merges such a layer with one that has xattrs (an
opaque directory, whiteouts, ``user.*`` values) and copies up from it. Counted at the server's
handlers (the requests that reached it), not timed.
"""

from __future__ import annotations

import collections
import errno
import io
import os
import subprocess
import tarfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest

from lazypull.fs.fuse import is_mounted, unmount
from lazypull.fs.fuse.ops import Operations, Reply
from lazypull.fs.fuse.protocol import Request
from tests.fs.test_layer_fuse import mounted
from tests.helpers.registry import RegistryServer
from tests.snapshot.layerkit import Blob, build_blob, edge_tar, push_blob

FILES = 200


def plain_tar() -> bytes:
    """A layer without any xattr: a directory of 200 files, and what the top layer hides or merges."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes | None = None) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if data is None else tarfile.REGTYPE
            info.mode = 0o755 if data is None else 0o644
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        for d in ("many/", "etc/", "opq/", "usr/"):
            add(d)
        for i in range(FILES):
            add(f"many/f{i:03d}", f"file {i}\n".encode())
        add("etc/removed", b"hidden by the top layer's whiteout\n")
        add("etc/base.conf", b"from the bottom layer\n")
        add("opq/old", b"hidden by the top layer's opaque directory\n")
    return buf.getvalue()


@pytest.fixture
def requests_seen(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[tuple[str, str]]:
    """(layer digest, "getxattr" | "listxattr") -> requests that reached the mount server's handlers."""
    seen: collections.Counter[tuple[str, str]] = collections.Counter()

    def counting(name: str) -> Callable[[Operations, Request], Reply]:
        handler: Callable[[Operations, Request], Reply] = getattr(Operations, name)

        def count(self: Operations, req: Request) -> Reply:
            seen[(str(getattr(self.tree, "digest", "")), name)] += 1
            return handler(self, req)
        return count

    for name in ("getxattr", "listxattr"):
        monkeypatch.setattr(Operations, name, counting(name))
    return seen


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Blob, Blob]:
    """(a layer without xattrs, the layerkit's edge layer with xattrs, whiteouts and an opaque dir)."""
    tmp = tmp_path_factory.mktemp("xattr-blobs")
    return build_blob(tmp, plain_tar(), name="plain"), build_blob(tmp, edge_tar(), name="edge")


@pytest.fixture
def pushed(blobs: tuple[Blob, Blob], registry: RegistryServer, unique_repo: str) -> str:
    for blob in blobs:
        push_blob(registry.url, unique_repo, blob.path.read_bytes())
    return unique_repo


def ls_l(path: Path) -> list[str]:
    out = subprocess.run(["ls", "-l", str(path)], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[1:]        # ("total N" first)


def test_ls_l_of_a_layer_without_xattrs_asks_no_xattr_per_file(
        tmp_path: Path, blobs: tuple[Blob, Blob], registry: RegistryServer, pushed: str,
        requests_seen: collections.Counter[tuple[str, str]]) -> None:
    plain, edge = blobs
    with mounted(tmp_path / "plain", plain, registry.host, pushed) as (_, mnt, _f):
        assert len(ls_l(mnt / "many")) == FILES
        # (was 403: two per file and the directory) the first one's ENOSYS, then none for this mount
        assert requests_seen[(plain.digest, "getxattr")] == 1, requests_seen
        assert len(ls_l(mnt / "many")) == FILES
        with pytest.raises(OSError) as info:
            os.getxattr(mnt / "many" / "f000", "user.x")
        assert info.value.errno == errno.EOPNOTSUPP
        assert requests_seen[(plain.digest, "getxattr")] == 1, requests_seen
        assert os.listxattr(mnt / "many" / "f000") == []          # listing still answers: none
    # a layer with xattrs keeps answering them (one request per question, values served)
    with mounted(tmp_path / "edge", edge, registry.host, pushed) as (_, mnt, _f):
        ls_l(mnt / "etc")
        assert requests_seen[(edge.digest, "getxattr")] >= 4, requests_seen
        assert os.getxattr(mnt / "etc" / "cap", "user.foo") == b"bar"


def test_overlay_over_a_layer_without_xattrs(tmp_path: Path, blobs: tuple[Blob, Blob],
                                             registry: RegistryServer, pushed: str,
                                             requests_seen: collections.Counter[tuple[str, str]]) -> None:
    plain, edge = blobs
    dirs = {name: tmp_path / name for name in ("upper", "work", "merged")}
    for d in dirs.values():
        d.mkdir()
    with ExitStack() as stack:
        _, bottom, _f = stack.enter_context(mounted(tmp_path / "plain", plain, registry.host, pushed))
        _, top, _f = stack.enter_context(mounted(tmp_path / "edge", edge, registry.host, pushed))
        merged = dirs["merged"]
        opts = f"lowerdir={top}:{bottom},upperdir={dirs['upper']},workdir={dirs['work']}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
        stack.callback(lambda: unmount(str(merged)) if is_mounted(str(merged)) else None)

        assert len(ls_l(merged / "many")) == FILES
        assert (merged / "many" / "f007").read_bytes() == b"file 7\n"
        assert not (merged / "etc" / "removed").exists()                  # the top's whiteout
        assert os.listdir(merged / "opq") == ["keep"]                    # the top's opaque dir
        assert (merged / "etc" / "base.conf").read_bytes() == b"from the bottom layer\n"
        assert os.getxattr(merged / "etc" / "cap", "user.foo") == b"bar"  # the top's xattrs
        assert os.listxattr(merged / "many" / "f001") == []
        with open(merged / "many" / "f001", "ab") as f:                  # copy-up from the bottom
            f.write(b"appended\n")
        assert (dirs["upper"] / "many" / "f001").read_bytes() == b"file 1\nappended\n"
        assert (merged / "many" / "f001").read_bytes() == b"file 1\nappended\n"
        assert requests_seen[(plain.digest, "getxattr")] == 1, requests_seen
