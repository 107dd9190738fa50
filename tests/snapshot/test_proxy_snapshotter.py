"""The containerd snapshotter's bookkeeping without containerd: overlay mounts of chains, commit, views,
label updates, removal rules, and errors containerd maps to its error kinds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lazypull.errors import MountError
from lazypull.fs.config import FsConfig
from lazypull.snapshot.proxy.snapshotter import (
    DIGEST_LABEL,
    REF_LABEL,
    TARGET_LABEL,
    SnapshotError,
    Snapshotter,
)
from lazypull.snapshot.proxy.wire import KIND_ACTIVE, KIND_COMMITTED, KIND_VIEW


class _Manager:
    """Stands in for the mount server's manager: refuses lazy mounts or returns a fixed path."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.released: list[str] = []
        self.mounted: list[tuple[str, str, Any]] = []
        self.waited: list[tuple[list[str], float]] = []
        self.config = FsConfig(prefetch_timeout=7.0)

    def wait_prefetch(self, digests: list[str], timeout: float) -> bool:
        self.waited.append((digests, timeout))
        return True

    def mount_registry_layer(self, ref: str, digest: str, annotations: dict[str, str], *, holder: str,
                             insecure: bool = False, client: Any = None) -> Path:
        self.mounted.append((ref, digest, client))
        if self.path is None:
            raise MountError("not lazy")
        return self.path

    def release_holder(self, holder: str) -> bool:
        self.released.append(holder)
        return True


def _code(func: Any, *args: Any) -> str:
    with pytest.raises(SnapshotError) as err:
        func(*args)
    return err.value.code


def test_chain_commit_view_and_remove(tmp_path: Path) -> None:
    sn = Snapshotter(tmp_path, _Manager(None))  # type: ignore[arg-type]
    [bind] = sn.prepare("a-active", "", {})
    assert bind["type"] == "bind" and "rw" in bind["options"]
    sn.commit("a", "a-active", {"x": "1"})
    assert sn.stat("a")["kind"] == KIND_COMMITTED and sn.stat("a")["labels"] == {"x": "1"}
    sn.prepare("b-active", "a", {})
    sn.commit("b", "b-active", {})
    [overlay] = sn.prepare("c", "b", {})
    opts = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overlay["options"]}
    assert overlay["type"] == "overlay"
    a_dir, b_dir = (str(tmp_path / "containerd" / "snapshots" / i / "fs") for i in ("1", "2"))
    assert opts["lowerdir"] == f"{b_dir}:{a_dir}" and opts["upperdir"].endswith("/3/fs")
    assert sn.mounts("c") == [overlay]
    [view] = sn.view("v", "b", {})
    assert view["options"] == [f"lowerdir={b_dir}:{a_dir}"]
    assert sn.stat("v")["kind"] == KIND_VIEW and sn.stat("c")["kind"] == KIND_ACTIVE
    assert {i["name"] for i in sn.list_snapshots()} == {"a", "b", "c", "v"}
    assert _code(sn.remove, "b") == "FAILED_PRECONDITION"
    sn.remove("c")
    sn.remove("v")
    sn.remove("b")
    assert not (tmp_path / "containerd" / "snapshots" / "2").exists()
    # state survives a restart
    again = Snapshotter(tmp_path, _Manager(None))  # type: ignore[arg-type]
    assert [i["name"] for i in again.list_snapshots()] == ["a"]


def test_errors_and_label_updates(tmp_path: Path) -> None:
    sn = Snapshotter(tmp_path, _Manager(None))  # type: ignore[arg-type]
    sn.prepare("k", "", {})
    assert _code(sn.prepare, "k", "", {}) == "ALREADY_EXISTS"
    assert _code(sn.prepare, "x", "k", {}) == "FAILED_PRECONDITION"     # parent not committed
    assert _code(sn.prepare, "x", "missing", {}) == "NOT_FOUND"
    assert _code(sn.prepare, "", "", {}) == "INVALID_ARGUMENT"
    assert _code(sn.commit, "n", "missing", {}) == "NOT_FOUND"
    sn.commit("n", "k", {"a": "1", "b": "2"})
    assert _code(sn.mounts, "n") == "FAILED_PRECONDITION"
    info = sn.update({"name": "n", "labels": {"a": "9"}}, ["labels.a", "labels.b"])
    assert info["labels"] == {"a": "9"}
    assert _code(sn.update, {"name": "n", "labels": {}}, ["parent"]) == "INVALID_ARGUMENT"
    (tmp_path / "containerd" / "snapshots" / "1" / "fs" / "f").write_bytes(b"x" * 5000)
    size, inodes = sn.usage("n")
    assert size >= 5000 and inodes == 1


def test_remote_snapshot_is_committed_under_the_target(tmp_path: Path) -> None:
    lower = tmp_path / "lazy-layer"
    lower.mkdir()
    manager = _Manager(lower)
    sn = Snapshotter(tmp_path, manager)  # type: ignore[arg-type]
    labels = {TARGET_LABEL: "sha256:chain1", REF_LABEL: "reg/x:1", DIGEST_LABEL: "sha256:" + "a" * 64}
    assert _code(sn.prepare, "extract-1", "", labels) == "ALREADY_EXISTS"
    assert sn.stat("sha256:chain1")["kind"] == KIND_COMMITTED
    assert "extract-1" not in {i["name"] for i in sn.list_snapshots()}
    [bind] = sn.view("v", "sha256:chain1", {})
    assert bind["source"] == str(lower)
    assert manager.waited == []
    sn.prepare("container", "sha256:chain1", {})       # a container's rootfs: wait for the prefetch
    assert manager.waited == [(["sha256:" + "a" * 64], 7.0)]
    sn.remove("container")
    sn.remove("v")
    sn.remove("sha256:chain1")
    assert manager.released == ["containerd:sha256:chain1"]
    # not lazily mountable: an ordinary active snapshot for containerd to unpack into
    plain = Snapshotter(tmp_path / "p", _Manager(None))  # type: ignore[arg-type]
    assert plain.prepare("extract-2", "", labels)[0]["type"] == "bind"


def test_cri_labels_make_a_remote_snapshot_read_with_the_images_credentials(tmp_path: Path) -> None:
    from lazypull.registry import Credentials
    from lazypull.snapshot.cri.keychain import Keychain
    from lazypull.snapshot.proxy.snapshotter import CRI_DIGEST_LABEL, CRI_REF_LABEL

    lower = tmp_path / "lazy-layer"
    lower.mkdir()
    manager = _Manager(lower)
    keychain = Keychain(lambda insecure, auth: ("client-for", auth.credentials("reg.example")))
    keychain.add("reg.example/private/app:1", Credentials("u", "p"))
    sn = Snapshotter(tmp_path, manager, keychain=keychain)  # type: ignore[arg-type]
    digest = "sha256:" + "d" * 64
    labels = {TARGET_LABEL: "sha256:chain1", CRI_REF_LABEL: "reg.example/private/app:1",
              CRI_DIGEST_LABEL: digest, "containerd.io/snapshot/stargz/toc.digest": "sha256:" + "e" * 64}
    assert _code(sn.prepare, "extract-1", "", labels) == "ALREADY_EXISTS"
    assert manager.mounted == [("reg.example/private/app:1", digest, ("client-for", Credentials("u", "p")))]
    sn.prepare("container", "sha256:chain1", {})
    assert manager.waited == [([digest], 7.0)]
    # an image pulled without credentials: the server's own client (None here)
    other = {**labels, TARGET_LABEL: "sha256:chain2", CRI_REF_LABEL: "reg.example/public/app:1"}
    assert _code(sn.prepare, "extract-2", "", other) == "ALREADY_EXISTS"
    assert manager.mounted[-1][2] is None
    # only one of the pair: an ordinary Prepare, containerd unpacks
    half = {TARGET_LABEL: "sha256:chain3", CRI_REF_LABEL: "reg.example/private/app:1"}
    assert sn.prepare("extract-3", "", half)[0]["type"] == "bind"
    assert len(manager.mounted) == 2
