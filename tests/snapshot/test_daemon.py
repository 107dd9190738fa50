"""The mount server end to end: ``MountClient`` starts ``lazypull daemon``, which mounts the lazy layers of
an image pulled (manifest and config only) from a real registry over real FUSE; supervision restarts a
killed server, which restores the mounts and reuses the chunk cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.errors import LazypullError, MountError
from lazypull.image import Store, pull_image
from lazypull.registry import RegistryClient, parse_manifest
from lazypull.snapshot import MountClient, daemon_pid
from tests.helpers.registry import Fault, FaultProxy, RegistryServer
from tests.snapshot.layerkit import FILES, build_blob, gzip_layer, push_image

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _lazypull_mounts(root: Path) -> list[str]:
    out = subprocess.run(["mount"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "lazypull" in line and str(root) in line]


def _gone(pid: int, seconds: float) -> bool:
    """Wait up to ``seconds`` for process ``pid`` to exit; whether it did."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            # an exited process that nobody reaped yet (a zombie) is gone too, once its last thread
            # is (the leader turns Z first; the others still hold the sockets and /dev/fuse)
            if (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                    and len(os.listdir(f"/proc/{pid}/task")) <= 1):
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def image(registry: RegistryServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """(store root, image name, lazy layer digest): an image with a plain layer under an eStargz one."""
    tmp = tmp_path_factory.mktemp("daemon")
    blob = build_blob(tmp, prioritized_files=["etc/hello.txt"])
    plain, plain_diff = gzip_layer({"base.txt": b"base\n"})
    ref = f"{registry.host}/lazy/daemon:v1"
    push_image(registry.url, "lazy/daemon", "v1", [
        (plain, OCI_GZIP, {}, plain_diff),
        (blob.path.read_bytes(), OCI_GZIP, blob.annotations, blob.result.diff_id),
    ])
    root = tmp / "root"
    with RegistryClient(insecure=True) as client:
        record = pull_image(Store(root), client, ref, fetch_layers=False)
    (root / "config.toml").write_text("prefetch_timeout = 5.0\nbackground_fetch = false\n"
                                      "read_deadline = 2.0\n")
    yield root, record.name, blob.digest
    MountClient(root, autostart=False).shutdown()
    for line in _lazypull_mounts(root):
        subprocess.run(["umount", "-l", line.split()[2]], check=False)


def test_mount_image_serves_lazy_layers(image: tuple[Path, str, str]) -> None:
    root, name, digest = image
    mc = MountClient(root)
    layers = mc.mount_image(name, insecure=True)
    assert [layer.lazy for layer in layers] == [False, True]
    assert layers[0].path is None
    lazy = layers[1]
    assert lazy.digest == digest and lazy.path == root / "snapshots" / digest[7:] / "fs"
    assert mc.wait_prefetch([digest], 10)
    assert (lazy.path / "etc/hello.txt").read_bytes() == b"hello\n"
    assert (lazy.path / "bin/big").read_bytes() == FILES["bin/big"]
    assert len(_lazypull_mounts(root)) == 1, "one mount per lazy layer"
    # Mounting the same image again (another holder) shares the mount.
    again = mc.mount_image(name, insecure=True, holder="container-1")
    assert again[1].path == lazy.path and len(_lazypull_mounts(root)) == 1
    infos = mc.list_mounts()
    assert [i.digest for i in infos] == [digest]
    assert set(infos[0].holders) == {name, "container-1"}
    stats = mc.stats()["layers"][digest]
    assert stats["prefetch_state"] in ("done", "skipped") and stats["requests"] >= 2
    cli = subprocess.run([sys.executable, "-m", "lazypull", "--root", str(root), "fs", "stats", "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(cli.stdout)["layers"][digest]["bytes_fetched"] == stats["bytes_fetched"]
    table = subprocess.run([sys.executable, "-m", "lazypull", "--root", str(root), "fs", "stats"],
                           capture_output=True, text=True, check=True)
    assert digest[7:19] in table.stdout
    mc.close()


def test_killed_daemon_is_restarted_and_mounts_restored_with_cache(image: tuple[Path, str, str]) -> None:
    root, name, digest = image
    mc = MountClient(root)
    layers = mc.mount_image(name, insecure=True)
    path = layers[1].path
    assert path is not None
    assert (path / "bin/big").read_bytes() == FILES["bin/big"]
    pid = daemon_pid(root)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert _gone(pid, 5.0), "the server survived SIGKILL"
    # the keeper holds the connection: the mount stays (reads wait for the next server; without the
    # keeper they failed with ENOTCONN, tests/reliability/test_daemon.py kills both)
    assert len(_lazypull_mounts(root)) == 1
    infos = mc.list_mounts()              # restarts the server, which serves the mount again
    assert daemon_pid(root) not in (None, pid)
    assert [i.digest for i in infos] == [digest]
    assert (path / "bin/big").read_bytes() == FILES["bin/big"]
    assert (path / "etc/hello.txt").read_bytes() == b"hello\n"
    stats = mc.stats()["layers"][digest]
    assert stats["requests"] == 0 and stats["bytes_fetched"] == 0, "TOC and chunks came from the cache"
    assert len(_lazypull_mounts(root)) == 1
    mc.close()


def test_sigterm_unmounts_cleanly_and_the_next_server_restores(image: tuple[Path, str, str]) -> None:
    root, name, digest = image
    mc = MountClient(root)
    path = mc.mount_image(name, insecure=True)[1].path
    assert path is not None
    pid = daemon_pid(root)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    assert _gone(pid, 10.0), "the server did not exit on SIGTERM"
    assert _lazypull_mounts(root) == [], "SIGTERM unmounts everything"
    assert not (root / "run" / "lazypull.sock").exists() and daemon_pid(root) is None
    held = json.loads((root / "run" / "state.json").read_text())["holds"]
    assert any(h["image"] == name for h in held), "the holds stay for the next server"
    assert [i.digest for i in mc.list_mounts()] == [digest]
    assert (path / "etc/hello.txt").read_bytes() == b"hello\n"
    # A container's mount returns once the prefetch is done (up to prefetch_timeout).
    mc.mount_image(name, insecure=True, holder="after-restart")
    assert mc.list_mounts()[0].prefetch_done
    mc.release_image(name, holder="after-restart")
    mc.close()


def test_concurrent_mounts_of_one_image_share_one_mount(image: tuple[Path, str, str]) -> None:
    import threading

    root, name, digest = image
    results: list[object] = []

    def mount(holder: str) -> None:
        with MountClient(root) as mc:
            try:
                results.append(mc.mount_image(name, insecure=True, holder=holder)[1].path)
            except Exception as err:  # reported below
                results.append(err)

    threads = [threading.Thread(target=mount, args=(f"parallel-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(set(map(str, results))) == 1 and not isinstance(results[0], Exception), results
    assert len(_lazypull_mounts(root)) == 1
    with MountClient(root) as mc:
        for i in range(4):
            mc.release_image(name, holder=f"parallel-{i}")
        infos = mc.list_mounts()
        assert not [h for i in infos for h in i.holders if h.startswith("parallel-")]
        assert [i.digest for i in infos] == ([digest] if _lazypull_mounts(root) else [])


def test_release_unmounts_when_nobody_holds(image: tuple[Path, str, str]) -> None:
    root, name, digest = image
    mc = MountClient(root)
    mc.mount_image(name, insecure=True)
    mc.mount_image(name, insecure=True, holder="container-2")
    holders = mc.list_mounts()[0].holders
    assert name in holders and "container-2" in holders
    for holder in holders:
        if holder != "container-2":
            mc.release_image(name, holder=holder)
    assert len(_lazypull_mounts(root)) == 1, "container-2 still holds it"
    assert [i.digest for i in mc.list_mounts()] == [digest]
    mc.release_image(name, holder="container-2")
    assert _lazypull_mounts(root) == []
    assert mc.list_mounts() == []
    with pytest.raises(MountError, match="not held"):
        mc.release_image(name, holder="nobody")
    with pytest.raises(Exception, match="nope"):
        mc.mount_image("127.0.0.1:1/nope:v1")
    assert mc.unmount_unused() == []
    mc.close()


def test_pull_image_in_the_server_stores_metadata_and_mounts(
        image: tuple[Path, str, str], registry: RegistryServer, tmp_path: Path) -> None:
    """``lazypull pull --snapshotter=stargz`` is one request: the server stores manifest and config with
    its own registry client and mounts the lazy layers; a failed pull names the image and changes nothing."""
    _, name, digest = image
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text("background_fetch = false\n")
    with MountClient(root) as mc:
        try:
            mc.ping()
            mark = registry.log_mark()
            pulled = mc.pull_image(name, insecure=True)
            manifest_reads = [e for e in registry.access_log(mark) if "/manifests/" in e.path]
            assert len(manifest_reads) == 1, "the layers' early mounts and the pull share one manifest read"
            with RegistryClient(insecure=True) as client:
                _, _, manifest_digest = client.resolve_image(name)
            assert pulled.digest == manifest_digest
            assert [m.lazy for m in pulled.layers] == [False, True]
            lazy = pulled.layers[1]
            assert lazy.digest == digest and lazy.path is not None
            assert (lazy.path / "etc/hello.txt").read_bytes() == b"hello\n"
            record = Store(root).find_image(pulled.name)
            assert record is not None and record.target.digest == pulled.digest
            assert not Store(root).has_blob(digest), "a lazy pull downloads no layer"
            assert [i.holders for i in mc.list_mounts()] == [[pulled.name]]
            missing = name.rsplit(":", 1)[0] + ":no-such-tag"
            with pytest.raises(LazypullError, match="no-such-tag"):
                mc.pull_image(missing, insecure=True)
            assert Store(root).find_image(missing) is None
            assert [i.digest for i in mc.list_mounts()] == [digest], "the server still serves the image"
        finally:
            pid = daemon_pid(root)
            mc.shutdown()
    assert pid is not None and _gone(pid, 10.0)
    assert _lazypull_mounts(root) == []


def test_failed_pull_leaves_no_early_mounts(image: tuple[Path, str, str], fault_proxy: FaultProxy,
                                            tmp_path: Path) -> None:
    """The layers start mounting as soon as the manifest is read; a config that fails verification
    afterwards fails the pull, and the layers mounted early are unmounted again."""
    _, _, digest = image
    ref = f"{fault_proxy.host}/lazy/daemon:v1"
    with RegistryClient(insecure=True) as client:
        raw, media_type, _ = client.resolve_image(ref)
    config = parse_manifest(raw, media_type).config.digest
    fault_proxy.add(Fault("flip", method="GET", path_contains=config, times=-1))
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text("background_fetch = false\n")
    try:
        with MountClient(root) as mc:
            pid = daemon_pid(root)
            with pytest.raises(LazypullError, match=config[7:19]):
                mc.pull_image(ref, insecure=True)
            assert mc.list_mounts() == []
            assert _lazypull_mounts(root) == []
            assert Store(root).find_image(ref) is None
            fault_proxy.clear()
            pulled = mc.pull_image(ref, insecure=True)          # the server still works
            assert [m.digest for m in pulled.layers if m.lazy] == [digest]
            pid = daemon_pid(root)
            mc.shutdown()
    finally:
        fault_proxy.clear()
    assert pid is not None and _gone(pid, 10.0)
