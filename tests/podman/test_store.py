"""The store's protocol as containers/storage sees it, checked on the mount itself (no podman): names,
``info``, ``diff``, ``use``/rmdir counting, refused writes and hostile names; restart of the server."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from devtools.podman import RUN_FLAGS, remove_engine_dirs, write_engine_config
from lazypull.snapshot import MountClient
from lazypull.snapshot.client import daemon_pid
from lazypull.store.names import encode_ref
from tests.helpers.images import file
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import busybox_specs, push_lazy_image
from tests.podman.conftest import GRACE, LAZYPULL, Engines, LazyImage


def _errno(call: object, *args: object) -> int:
    try:
        call(*args)  # type: ignore[operator]
    except OSError as err:
        return int(err.errno or 0)
    return 0


def test_layer_directory_by_blob_digest(engines: Engines, lazy_image: LazyImage) -> None:
    from lazypull.registry import RegistryClient

    layer_dir = engines.store / encode_ref(lazy_image.ref) / lazy_image.layers[1]
    assert sorted(os.listdir(layer_dir)) == ["blob", "diff", "info"]
    info = json.loads((layer_dir / "info").read_bytes())
    with RegistryClient(insecure=True) as client:
        raw, _, _ = client.resolve_image(lazy_image.ref)
        manifest = json.loads(raw)
        config = json.loads(client.fetch_blob(lazy_image.ref, manifest["config"]["digest"]))
    desc = manifest["layers"][1]
    assert info == {"compressed-diff-digest": desc["digest"], "compressed-size": desc["size"],
                    "diff-digest": config["rootfs"]["diff_ids"][1], "compression": 2,
                    "diff-size": int(desc["annotations"]["io.containers.estargz.uncompressed-size"])}
    # diff: the layer's tree (landmark files hidden), through the server's own lazy mount
    diff = layer_dir / "diff"
    assert diff.is_symlink() and os.path.ismount(os.readlink(diff))
    assert sorted(os.listdir(diff)) == ["srv"]
    assert (diff / "srv" / "motd").read_bytes() == b"hi from the store\n"
    # multi-diff probes of the overlay driver are not layers here
    assert _errno(os.stat, layer_dir / "diff1") == errno.ENOENT


def test_layer_directory_by_toc_digest(engines: Engines, lazy_image: LazyImage) -> None:
    from lazypull.registry import RegistryClient

    with RegistryClient(insecure=True) as client:
        raw, _, _ = client.resolve_image(lazy_image.ref)
    desc = json.loads(raw)["layers"][0]
    toc = desc["annotations"]["containerd.io/snapshot/stargz/toc.digest"]
    by_toc = engines.store / encode_ref(lazy_image.ref) / toc
    info = json.loads((by_toc / "info").read_bytes())
    assert info["toc-digest"] == toc and "diff-digest" not in info
    assert info["flags"]["expected-layer-diffid"].startswith("sha256:")
    assert os.readlink(by_toc / "diff") == os.readlink(engines.store / encode_ref(lazy_image.ref)
                                                       / desc["digest"] / "diff")


def test_use_and_rmdir_are_counted_and_answer_enoent(engines: Engines, lazy_image: LazyImage) -> None:
    name = encode_ref(lazy_image.ref)
    layer_dir = engines.store / name / lazy_image.layers[0]
    key = f"{name}/{lazy_image.layers[0]}"
    assert _errno(open, layer_dir / "use", "w") == errno.ENOENT
    assert _errno(open, layer_dir / "use", "w") == errno.ENOENT
    assert engines.store_counts()[key] == 2
    assert _errno(os.rmdir, layer_dir) == errno.ENOENT
    assert engines.store_counts()[key] == 1
    assert layer_dir.is_dir()                   # nothing was removed
    # anything else is refused
    assert _errno(open, layer_dir / "other", "w") == errno.EROFS
    assert _errno(os.mkdir, engines.store / "x") == errno.EROFS
    assert _errno(os.unlink, layer_dir / "info") == errno.EROFS
    assert _errno(open, layer_dir / "info", "w") == errno.EROFS


@pytest.mark.parametrize("name", [
    "not base64!", "bm90IGEgcmVm",                       # junk; "not a ref"
    encode_ref("oci:/etc"),                              # a local layout: never read
    encode_ref("x" * 300)[:255],
])
def test_hostile_reference_names_are_not_here(engines: Engines, lazy_image: LazyImage, name: str) -> None:
    path = engines.store / name / lazy_image.layers[0]
    assert _errno(os.stat, path) in (errno.ENOENT, errno.EIO)
    assert _errno(os.stat, engines.store / encode_ref(lazy_image.ref) / "sha256:nothex") == errno.ENOENT
    assert _errno(os.stat, engines.store / encode_ref(lazy_image.ref) / ("sha256:" + "0" * 64)) \
        == errno.ENOENT


def test_server_restart_serves_the_store_again(engines: Engines, lazy_image: LazyImage) -> None:
    engines.podman("pull", lazy_image.ref)
    pid = daemon_pid(engines.root)
    assert pid is not None
    MountClient(engines.root, autostart=False).shutdown()
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.ismount(engines.store)    # no dead mount left to fail every podman command
    assert engines.podman("images", "-q").stdout.strip()
    with MountClient(engines.root) as client:    # a new server serves the stores listed again
        assert [s["mountpoint"] for s in client.store_request("list_stores")] == [str(engines.store)]
    assert os.path.ismount(engines.store)
    out = engines.podman("run", "--rm", *RUN_FLAGS, lazy_image.ref, "cat", "/srv/motd")
    assert out.stdout == "hi from the store\n"
    name = encode_ref(lazy_image.ref)
    assert engines.store_counts() == {f"{name}/{d}": 1 for d in lazy_image.layers}   # kept across
    time.sleep(GRACE * 3)
    assert set(lazy_image.layers) <= engines.mounted_layers()     # podman still has them: not released


def test_stopping_the_store_releases_its_layers(engines: Engines, lazy_image: LazyImage) -> None:
    engines.podman("pull", lazy_image.ref)
    assert set(lazy_image.layers) <= engines.mounted_layers()
    engines.lazypull("store", "--stop", str(engines.store))
    assert not os.path.ismount(engines.store)
    assert not set(lazy_image.layers) & engines.mounted_layers()
    assert engines.lazypull("store", "--stop", str(engines.store), check=False).returncode == 1


def test_zstd_chunked_image(engines: Engines, registry: RegistryServer, tmp_path: Path) -> None:
    name, digests = push_lazy_image(tmp_path / "img", f"{registry.host}/podman/zstd:v1",
                                    [busybox_specs(), [file("srv/motd", b"zstd hi\n")]], compression="zstd")
    out = engines.podman("run", "--rm", *RUN_FLAGS, name, "cat", "/srv/motd")
    assert out.stdout == "zstd hi\n"
    info = json.loads((engines.store / encode_ref(name) / digests[1] / "info").read_bytes())
    assert info["compression"] == 4
    assert len(list((engines.env_graph / "overlay").glob("*/additionallayer"))) == 2


def test_a_killed_server_leaves_a_mount_the_next_one_replaces(engines: Engines,
                                                              lazy_image: LazyImage) -> None:
    engines.podman("pull", lazy_image.ref)
    pid = daemon_pid(engines.root)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    # the dead store mount fails every podman command (containers/storage stats the store at start)
    dead = engines.podman("images", check=False)
    assert dead.returncode != 0 and "not connected" in dead.stderr
    with MountClient(engines.root) as client:     # the next server detaches it and serves the store
        assert [s["mountpoint"] for s in client.store_request("list_stores")] == [str(engines.store)]
    out = engines.podman("run", "--rm", *RUN_FLAGS, lazy_image.ref, "cat", "/srv/motd")
    assert out.stdout == "hi from the store\n"


def test_a_lookup_mounts_the_images_layers_early_and_unused_ones_go(engines: Engines,
                                                                    lazy_image: LazyImage) -> None:
    name = encode_ref(lazy_image.ref)
    os.stat(engines.store / name / lazy_image.layers[1])       # a lookup, no walk through diff
    deadline = time.monotonic() + 60
    while not set(lazy_image.layers) <= engines.mounted_layers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(lazy_image.layers) <= engines.mounted_layers()   # both, in the background
    assert engines.store_counts() == {}                          # nobody used them:
    while set(lazy_image.layers) & engines.mounted_layers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(lazy_image.layers) & engines.mounted_layers()     # released after the grace period


def test_other_users_cannot_use_the_store(engines: Engines, lazy_image: LazyImage) -> None:
    """A local user must not read a private image's blob, nor make the store fetch with root's
    credentials or count uses (a store at a path every user can reach)."""
    base = Path(tempfile.mkdtemp(prefix="lpp-store-", dir="/run"))
    try:
        base.chmod(0o755)
        store = base / "store"
        engines.lazypull("store", str(store))
        layer_dir = store / encode_ref(lazy_image.ref) / lazy_image.layers[1]
        assert (layer_dir / "info").is_file()                       # root: yes
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"]
        for probe in (f"cat '{layer_dir}/blob' > /dev/null", f"ls '{store}'", f": > '{layer_dir}/use'"):
            out = subprocess.run([*nobody, probe], capture_output=True, text=True, cwd="/")
            assert out.returncode != 0 and "Permission denied" in out.stderr, (probe, out)
        assert engines.lazypull("store", "--list").stdout.count(layer_dir.parent.name + "/") == 0  # no use
    finally:
        engines.lazypull("store", "--stop", str(base / "store"), check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_unusable_mountpoints_are_refused_with_one_line(engines: Engines, tmp_path: Path) -> None:
    colon = engines.lazypull("store", str(tmp_path / "a:b"), check=False)
    assert colon.returncode == 1 and "contains ':'" in colon.stderr and len(colon.stderr.splitlines()) == 1
    busy = tmp_path / "tmpfs"
    busy.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(busy)], check=True)
    try:
        taken = engines.lazypull("store", str(busy), check=False)
        assert taken.returncode == 1 and f"{busy} is already a mountpoint" in taken.stderr
        assert len(taken.stderr.splitlines()) == 1
    finally:
        subprocess.run(["umount", str(busy)], check=True)
    assert engines.lazypull("store", "--stop", str(tmp_path / "never"), check=False).stderr.startswith(
        "lazypull: error: no store is served at")


def test_daemon_store_option_serves_it_for_the_servers_life(tmp_path: Path, registry: RegistryServer,
                                                           lazy_image: LazyImage) -> None:
    """``lazypull daemon --store DIR`` (a systemd unit's way): served while the server runs."""
    root, store = tmp_path / "root", tmp_path / "store"
    env = write_engine_config(tmp_path / "engine", registry.host, store)
    engines = Engines(tmp_path, store, root, env)
    daemon = subprocess.Popen([str(LAZYPULL), "--root", str(root), "daemon", "--store", str(store)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(store) and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert os.path.ismount(store)
        out = engines.podman("run", "--rm", *RUN_FLAGS, lazy_image.ref, "cat", "/srv/motd")
        assert out.stdout == "hi from the store\n"
        assert len(list((engines.env_graph / "overlay").glob("*/additionallayer"))) == 2
    finally:
        engines.podman("rmi", "-a", "-f", check=False)
        subprocess.run(["umount", "-R", str(engines.env_graph / "overlay")], capture_output=True)
        remove_engine_dirs(tmp_path / "engine")
        daemon.terminate()
        daemon.wait(60)
    assert not os.path.ismount(store)       # a stopping server unmounts its stores
