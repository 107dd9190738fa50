"""``lazypull image optimize``: a real run (mount server, FUSE, runc) of a two-layer busybox image from
Debian's docker-registry records the files it reads, and DST has them before ``.prefetch.landmark``,
so a lazy mount of DST prefetches them in its first request."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.errors import MountError
from lazypull.format import BytesSource, open_layer
from lazypull.fs.layer.access import (
    LOG_NAME,
    AccessRecorder,
    is_recording,
    read_access_log,
    recorder_for,
    request_recording,
    withdraw_request,
)
from lazypull.image import Store, pull_image
from lazypull.image import mediatypes as mt
from lazypull.image.errors import ImageError
from lazypull.image.optimize import RecordEntry, build_record
from lazypull.image.record import parse_record
from lazypull.registry import RegistryClient
from lazypull.runtime.overlay import mountpoints, unmount
from tests.helpers.images import directory, file, make_oci_layout
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import busybox_specs, push_image_layers

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF = b"setting=1\n"


ROOTS = (".", "root", "fresh")      # the store roots tests use under tmp_path


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path) -> Iterator[None]:
    """Stop the mount servers and containers a failing test may leave under ``tmp_path`` (the known
    roots only: walking the tree would enter the FUSE mounts)."""
    yield
    from lazypull.snapshot import MountClient

    for root in (tmp_path / name for name in ROOTS):
        if (root / "run" / "lazypull.sock").exists():
            with contextlib.suppress(Exception):
                MountClient(root, autostart=False).shutdown()
        if (root / "runc").is_dir():
            ids = subprocess.run(["runc", "--root", str(root / "runc"), "list", "-q"], capture_output=True,
                                 text=True).stdout.split()
            for container_id in ids:
                subprocess.run(["runc", "--root", str(root / "runc"), "delete", "-f", container_id],
                               capture_output=True)
    for point in sorted((m for m in mountpoints() if m.startswith(str(tmp_path) + "/")), key=len,
                        reverse=True):
        with contextlib.suppress(Exception):
            unmount(Path(point))


@pytest.fixture(scope="module")
def app_image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox (layer 0) plus an app layer (layer 1) with a config file the workload reads and others
    it does not."""
    name = f"{registry.host}/lazypull-optimize/app:v1"
    app = [directory("etc"), directory("etc/app"), file("etc/app/unused", b"u" * 5000),
           file("etc/app/conf", CONF), directory("srv"), file("srv/data", os.urandom(300 << 10))]
    # srv/data (incompressible, last) keeps the start of the layer out of the tail read with the TOC
    config = {"config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]}}
    return push_image_layers(tmp_path_factory.mktemp("optimize-image"), name, [busybox_specs(), app],
                             config=config)


def lazypull(root: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    return subprocess.run([sys.executable, "-m", "lazypull", *args], capture_output=True, env=env,
                          cwd=REPO_ROOT, timeout=timeout)


def read_record(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def toc_names(store: Store, desc_digest: str) -> list[str]:
    reader = open_layer(BytesSource(store.read_blob(desc_digest)))
    return [e.name for e in reader.toc.entries]


# ---- the whole command ---------------------------------------------------------------------------


def test_optimize_records_reads_and_prioritises_them(tmp_path: Path, app_image: str,
                                                     registry: RegistryServer) -> None:
    root = tmp_path / "root"
    record_out = tmp_path / "record.json"
    dst = f"{registry.host}/lazypull-optimize/app:opt"
    result = lazypull(root, "--insecure-registry", "image", "optimize", "--oci", "--period", "60",
                      "--entrypoint", '["/bin/busybox"]', "--args", '["cat", "/etc/app/conf"]',
                      "--record-out", str(record_out), app_image, dst)
    assert result.returncode == 0, result.stderr.decode()
    assert CONF in result.stderr                       # the workload's output is shown
    digest = result.stdout.decode().strip()
    store = Store(root)
    src = store.resolve(app_image)
    # The record: ctr-remote's lines, naming SRC's manifest and the layer that served each file.
    entries = read_record(record_out)
    assert all(set(e) == {"path", "manifestDigest", "layerIndex"} for e in entries)
    assert {e["manifestDigest"] for e in entries} == {src.manifest_digest}
    where = {e["path"]: e["layerIndex"] for e in entries}
    assert where["bin/busybox"] == 0
    assert where["etc/app/conf"] == 1
    assert where["etc/passwd"] == 0          # read by the runtime at create time (user and groups)
    assert "etc/app/unused" not in where and "srv/data" not in where
    assert [e["path"] for e in entries].index("bin/busybox") < [e["path"] for e in entries].index(
        "etc/app/conf")                                # first-access order
    # DST: OCI eStargz, each layer's recorded files before the landmark, the others after it.
    assert store.get_image(dst).target.digest == digest
    out = store.resolve(dst)
    assert all(d.media_type == mt.OCI_LAYER_GZIP for d in out.layers)
    names0, names1 = toc_names(store, out.layers[0].digest), toc_names(store, out.layers[1].digest)
    assert names0.index("bin/busybox") < names0.index(".prefetch.landmark")
    assert names1.index("etc/app/conf") < names1.index(".prefetch.landmark") < names1.index("etc/app/unused")
    assert names1.index(".prefetch.landmark") < names1.index("srv/data")
    # Nothing left: no temporary image, container or mount.
    names = {r.name for r in store.list_images()}
    assert names == {store.get_image(app_image).name, store.get_image(dst).name}
    assert [p.name for p in (root / "containers").iterdir() if p.name != ".lock"] == []
    assert [m for m in mountpoints() if m.startswith(str(root))] == []

    # A lazy mount of DST (pushed) fetches the recorded files in its prefetch: reading them needs no
    # further request, reading an unrecorded file does.
    pushed = lazypull(root, "--insecure-registry", "push", dst)
    assert pushed.returncode == 0, pushed.stderr.decode()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.toml").write_text("background_fetch = false\n")
    lazy_store = Store(fresh)
    with RegistryClient(insecure=True) as client:
        pull_image(lazy_store, client, dst, fetch_layers=False)
    from lazypull.snapshot import MountClient

    mark = registry.log_mark()
    with MountClient(fresh) as mc:
        mounts = mc.mount_image(dst, insecure=True, holder="test")
        app_layer = mounts[1]
        assert app_layer.lazy and app_layer.path is not None
        before = mc.stats()["layers"][app_layer.digest]
        assert before["prefetch_state"] == "done" and before["prefetch_bytes"] > 0
        gets = [e for e in registry.access_log(mark)
                if e.method == "GET" and e.path.endswith(app_layer.digest)]
        assert len(gets) == before["requests"]            # the TOC (from the end), then the prefetch
        assert before["prefetch_bytes"] in [e.bytes for e in gets]   # the whole prefetch: one response
        assert (app_layer.path / "etc/app/conf").read_bytes() == CONF
        after = mc.stats()["layers"][app_layer.digest]
        assert after["requests"] == before["requests"] and after["misses_waited"] == 0
        assert (app_layer.path / "etc/app/unused").read_bytes() == b"u" * 5000
        assert mc.stats()["layers"][app_layer.digest]["requests"] > before["requests"]
        mc.release_image(dst, holder="test")
    assert list(fresh.glob("snapshots/*/access.jsonl")) == []   # recording is off unless asked for


def test_wait_line_ends_the_run_and_zstdchunked(tmp_path: Path, app_image: str) -> None:
    """The workload would sleep for 60 s (within the 100 s period): the awaited line ends it (it never
    wakes up to say SLEPT, which it would if optimize let it finish); DST is zstd:chunked."""
    root = tmp_path / "root"
    record_out = tmp_path / "record.json"
    (tmp_path / "vol").mkdir()
    (tmp_path / "vol" / "x").write_bytes(b"from the host\n")
    result = lazypull(root, "--insecure-registry", "image", "optimize", "--oci", "--zstdchunked",
                      "--period", "100", "--wait-line", "READY", "-e", "WHAT=conf",
                      "-v", f"{tmp_path / 'vol'}:/data:ro",
                      "--args",
                      '["sh", "-c", "cat /etc/app/$WHAT /data/x; echo READY; sleep 60; echo SLEPT"]',
                      "--record-out", str(record_out), app_image, "optimized:zstd")
    assert result.returncode == 0, result.stderr.decode()
    assert b"SLEPT" not in result.stderr, "the workload ran to its end"
    assert CONF + b"from the host\nREADY\n" in result.stderr
    assert b"the awaited line appeared" in result.stderr
    paths = [str(e["path"]) for e in read_record(record_out)]
    assert "etc/app/conf" in paths and "etc/app/unused" not in paths
    assert not any(p.startswith("data") for p in paths)        # the volume is no layer
    store = Store(root)
    out = store.resolve("optimized:zstd")
    assert all(d.media_type == mt.OCI_LAYER_ZSTD for d in out.layers)
    names = toc_names(store, out.layers[1].digest)
    assert names.index("etc/app/conf") < names.index(".prefetch.landmark") < names.index("etc/app/unused")


def test_period_stops_a_long_workload_run_as_asked(tmp_path: Path, app_image: str) -> None:
    """The period ends a workload that would sleep for 100 s (it never wakes up to say SLEPT); user,
    working dir, env file and host network reach the container."""
    root = tmp_path / "root"
    (tmp_path / "env").write_text("# from a file\nWHO=from-file\n")
    result = lazypull(root, "--insecure-registry", "image", "optimize", "--period", "1.5", "-u", "alice",
                      "--oci", "--estargz-external-toc",
                      "--cwd", "/tmp", "--env-file", str(tmp_path / "env"), "--net-host",
                      "--args", '["sh", "-c", "id -un; pwd; echo $WHO; ls /sys/class/net | grep -vx lo | '
                      'head -c1 | wc -c; cat /etc/app/conf; sleep 100; echo SLEPT"]',
                      app_image, "optimized:p")
    assert result.returncode == 0, result.stderr.decode()
    assert b"SLEPT" not in result.stderr, "the workload ran to its end"
    assert b"alice\n/tmp\nfrom-file\n1\n" + CONF in result.stderr
    assert b"the period of 1.5s is over" in result.stderr
    assert [p.name for p in (root / "containers").iterdir() if p.name != ".lock"] == []
    store = Store(root)
    assert store.find_image("optimized:p-esgztoc") is not None      # the external TOC image
    layer = store.resolve("optimized:p").layers[1]
    assert layer.annotations.get(mt.TOC_DIGEST)


def test_no_optimize_converts_without_running(tmp_path: Path, app_image: str) -> None:
    root = tmp_path / "root"
    record_out = tmp_path / "record.json"
    result = lazypull(root, "--insecure-registry", "image", "optimize", "--no-optimize", "--oci",
                      "--record-out", str(record_out), app_image, "plain:esgz")
    assert result.returncode == 0, result.stderr.decode()
    assert record_out.read_text() == ""
    # no container, no mount server (the store's top-level directories exist from the start, empty)
    assert not any((root / "containers").iterdir()) and not (root / "run" / "daemon.log").exists()
    store = Store(root)
    for layer in store.resolve("plain:esgz").layers:
        assert toc_names(store, layer.digest)[0] == ".no.prefetch.landmark"


def test_oci_layout_index_in_and_out_and_the_record_replays_with_convert(tmp_path: Path) -> None:
    """SRC an index in an OCI layout, with a layer repeated: this machine's image is run, the record
    names its manifest (not the index), DST (a layout) is an index of that platform only, and ``image convert
    --estargz-record-in`` with the written record makes the very same DST."""
    from lazypull.image import ImageIndex, Layout

    app = [directory("etc"), directory("etc/app"), file("etc/app/conf", CONF), file("etc/app/unused", b"x")]
    # The app layer twice (1 and 3): one mount, one overlay lower dir, files recorded for the top one.
    built = make_oci_layout(tmp_path / "src", [busybox_specs(), app, [file("other", b"o")], app], tag="v1",
                            platforms=["linux/amd64", "linux/arm64"], config={"config": {"Cmd": ["sh"]}})
    root = tmp_path / "root"
    record_out = tmp_path / "record.json"
    result = lazypull(root, "image", "optimize", "--oci", "--platform", "linux/amd64",
                      "--args", '["cat", "/etc/app/conf"]', "--record-out", str(record_out),
                      f"oci:{built.path}:v1", f"oci:{tmp_path / 'dst'}:opt")
    assert result.returncode == 0, result.stderr.decode()
    amd64 = next(i for i in built.images if i.platform == "linux/amd64")
    entries = read_record(record_out)
    assert {e["manifestDigest"] for e in entries} == {amd64.manifest_digest}
    assert ("etc/app/conf", 3) in {(e["path"], e["layerIndex"]) for e in entries}
    assert not any(e["layerIndex"] in (1, 2) for e in entries)
    dst = Layout(tmp_path / "dst").root("opt")
    assert isinstance(dst, ImageIndex)
    assert dst.digest() == result.stdout.decode().strip()
    assert [str(e.platform) for e in dst.manifests()] == ["linux/amd64"]
    replay = lazypull(root, "image", "convert", "--estargz", "--oci", "--platform", "linux/amd64",
                      "--estargz-record-in", str(record_out), f"oci:{built.path}:v1",
                      f"oci:{tmp_path / 'dst2'}:opt")
    assert replay.returncode == 0, replay.stderr.decode()
    assert replay.stdout.decode().strip() == dst.digest()


def test_a_workload_that_cannot_start_fails_and_leaves_nothing(tmp_path: Path, app_image: str) -> None:
    root = tmp_path / "root"
    result = lazypull(root, "--insecure-registry", "image", "optimize", "--entrypoint", "/no/such/program",
                      app_image, "never:made")
    assert result.returncode == 1
    assert b"lazypull: error:" in result.stderr and b"/no/such/program" in result.stderr, result.stderr
    store = Store(root)
    assert [r.name for r in store.list_images()] == [store.get_image(app_image).name]
    assert [p.name for p in (root / "containers").iterdir() if p.name != ".lock"] == []
    assert [m for m in mountpoints() if m.startswith(str(root))] == []


def test_the_next_run_cleans_up_after_a_killed_one(tmp_path: Path, app_image: str) -> None:
    """An optimize killed (SIGKILL) during its run leaves its container (still running), the container's
    hold on the layer mounts and the temporary image; the next optimize removes them and records."""
    root = tmp_path / "root"
    log = tmp_path / "first.log"
    with open(log, "wb") as err:
        first = subprocess.Popen(
            [sys.executable, "-m", "lazypull", "--insecure-registry", "image", "optimize", "--period", "100",
             "--args", '["sh", "-c", "echo READY; sleep 100"]', app_image, "never:made"],
            stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ, LAZYPULL_ROOT=str(root)),
            cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 90
        while b"READY" not in log.read_bytes():
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        first.kill()
        first.wait()
    store = Store(root)
    assert len(store.list_images()) == 2                      # SRC and the temporary image
    second = lazypull(root, "--insecure-registry", "image", "optimize", "--period", "10",
                      "--args", '["cat", "/etc/app/conf"]', "--record-out", str(tmp_path / "rec"),
                      app_image, "made:now")
    assert second.returncode == 0, second.stderr.decode()
    assert second.stderr.count(b"left by an interrupted optimize") == 2   # container and image
    assert "etc/app/conf" in {e["path"] for e in read_record(tmp_path / "rec")}
    assert {r.name for r in store.list_images()} == {store.get_image(app_image).name,
                                                      store.get_image("made:now").name}
    assert [p.name for p in (root / "containers").iterdir() if p.name != ".lock"] == []
    assert [m for m in mountpoints() if m.startswith(str(root))] == []
    assert subprocess.run(["runc", "--root", str(root / "runc"), "list", "-q"], capture_output=True,
                          text=True).stdout.split() == []


def test_layers_mounted_before_recording_are_refused_and_released(tmp_path: Path, app_image: str) -> None:
    """A layer someone else already has mounted cannot be recorded (its reads may be cached in the
    kernel): the run is refused, naming the holder, and our own hold is dropped again."""
    from lazypull.cli.optimize import run_workload
    from lazypull.image import convert_image
    from lazypull.image.convert import ConvertOptions
    from lazypull.runtime import ContainerOptions
    from lazypull.snapshot import MountClient

    store = Store(tmp_path)
    with store.lease():
        with RegistryClient(insecure=True) as client:
            record = pull_image(store, client, app_image)
        converted = convert_image(store.open(record.target), store,
                                  ConvertOptions(layer_format="estargz", oci=True, estargz_level=1))
        store.put_image("mounted:before", converted.root)
    digests = [d.digest for d in store.resolve("mounted:before").layers]
    with MountClient(tmp_path) as mc:
        mc.mount_image("mounted:before", holder="someone-else", wait_prefetch=False)
        with pytest.raises(MountError, match="held by someone-else"):
            run_workload(tmp_path, store, "mounted:before", digests, ContainerOptions(), period=5,
                         wait_line=None)
        assert {tuple(m.holders) for m in mc.list_mounts()} == {("someone-else",)}
        assert not any((tmp_path / "snapshots" / d[7:] / "record-access").exists() for d in digests)


@pytest.mark.parametrize(("args", "message"), [
    (["--args", "not json"], b"not JSON"),
    (["--args", '{"a": 1}'], b"expected a JSON array of strings"),
    (["--estargz-compression-level", "12"], b"invalid --estargz-compression-level 12"),
    (["-v", "relative:/x"], b"named volumes are not supported"),
], ids=["args-not-json", "args-not-list", "bad-level", "bad-volume"])
def test_bad_flags_are_refused_before_running(tmp_path: Path, args: list[str], message: bytes) -> None:
    result = lazypull(tmp_path, "image", "optimize", *args, "oci:/nonexistent", "dst:x", timeout=60)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr.decode()
    assert not (tmp_path / "run" / "daemon.log").exists()      # no mount server was started


# ---- the parts -----------------------------------------------------------------------------------


def test_build_record_orders_by_first_access_and_takes_the_top_copy_of_a_layer() -> None:
    layers = ["sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "a" * 64]
    accesses = {layers[0]: [("bin/sh", 5), ("etc/x", 30)], layers[1]: [("app/run", 10), ("bin/sh", 40)]}
    entries = build_record("sha256:" + "m" * 64, layers, accesses)
    assert [(e.path, e.layer_index) for e in entries] == [("bin/sh", 2), ("app/run", 1), ("etc/x", 2)]
    text = "".join(e.to_json() for e in entries)
    assert text.splitlines()[0] == ('{"path":"bin/sh","manifestDigest":"sha256:' + "m" * 64
                                    + '","layerIndex":2}')
    assert parse_record(text).files_for("sha256:" + "m" * 64, 2) == ["bin/sh", "etc/x"]
    with pytest.raises(ImageError, match="which the image does not have"):
        build_record("sha256:" + "m" * 64, layers, {"sha256:" + "c" * 64: [("x", 1)]})


def test_optimize_image_with_a_given_workload(tmp_path: Path) -> None:
    """The library path: the workload (the seam to the runtime) sees the temporary eStargz image while
    it is named, the record it returns orders DST, and the temporary image is gone afterwards."""
    from lazypull.image import Layout
    from lazypull.image.convert import ConvertOptions
    from lazypull.image.optimize import optimize_image
    from lazypull.registry import Platform

    app = [directory("etc"), file("etc/a", b"a"), file("etc/b", b"b"), file("etc/c", b"c")]
    built = make_oci_layout(tmp_path / "src", [[file("base", b"0")], app], tag="v1")
    store = Store(tmp_path / "root")
    seen: list[str] = []

    def workload(name: str, digests: list[str]) -> dict[str, list[tuple[str, int]]]:
        resolved = store.resolve(name)
        assert [d.digest for d in resolved.layers] == digests
        assert all(d.annotations.get(mt.TOC_DIGEST) for d in resolved.layers)    # lazily mountable
        seen.append(name)
        return {digests[1]: [("etc/c", 20), ("etc/a", 10)]}

    dst = Layout(tmp_path / "dst")
    with store.lease():
        result = optimize_image(store, Layout(built.path).root("v1"), dst,
                                ConvertOptions(layer_format="estargz", oci=True), Platform("linux", "amd64"),
                                workload)
    assert [(e.path, e.layer_index) for e in result.entries] == [("etc/a", 1), ("etc/c", 1)]
    assert result.manifest_digest == built.images[0].manifest_digest
    assert seen and store.find_image(seen[0]) is None and store.list_images() == []
    layer = result.convert.layers[1].desc
    names = [e.name for e in open_layer(BytesSource((tmp_path / "dst" / "blobs" / "sha256" /
                                                     layer.digest[7:]).read_bytes())).toc.entries]
    assert names.index("etc/a") < names.index("etc/c") < names.index(".prefetch.landmark")
    assert names.index(".prefetch.landmark") < names.index("etc/b")
    with pytest.raises(ImageError, match="eStargz or zstd:chunked"):
        optimize_image(store, Layout(built.path).root("v1"), dst, ConvertOptions(layer_format="gzip"),
                       Platform("linux", "amd64"), workload)


@pytest.mark.parametrize(("path", "line_part"), [
    ("etc/caf\u00e9", '"etc/caf\u00e9"'),
    ("a<b>&c", '"a\\u003cb\\u003e\\u0026c"'),
    (b"bad\xff".decode("utf-8", "surrogateescape"), '"bad\\udcff"'),
], ids=["unicode", "html-escaped", "not-utf8"])
def test_record_entry_names_round_trip(path: str, line_part: str) -> None:
    line = RecordEntry(path, "sha256:" + "0" * 64, 0).to_json()
    assert line.startswith('{"path":' + line_part + ",")
    line.encode("utf-8")                                    # writable as UTF-8
    assert parse_record(line).files_for("sha256:" + "0" * 64, 0) == [path]


def test_recorder_notes_each_inode_once_in_order_from_many_threads(tmp_path: Path) -> None:
    request_recording(tmp_path)
    recorder = recorder_for(tmp_path)
    assert recorder is not None and is_recording(tmp_path)
    withdraw_request(tmp_path)
    assert recorder_for(tmp_path / "other") is None

    def work() -> None:
        for ino in range(200):
            recorder.note(ino, f"f{ino}")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = read_access_log(tmp_path)
    assert sorted(a.path for a in got) == sorted(f"f{i}" for i in range(200))
    assert [a.time_ns for a in got] == sorted(a.time_ns for a in got)
    recorder.close()
    recorder.note(999, "late")                         # closed: ignored, no error
    assert len(read_access_log(tmp_path)) == 200


def test_access_log_cut_last_line_is_ignored_and_garbage_is_an_error(tmp_path: Path) -> None:
    (tmp_path / LOG_NAME).write_bytes(b'{"path":"a","time_ns":1}\n{"path":"b","ti')
    assert [a.path for a in read_access_log(tmp_path)] == ["a"]
    (tmp_path / LOG_NAME).write_bytes(b'{"path":"a","time_ns":1}\nnot json\n')
    with pytest.raises(MountError, match="line 2 is malformed"):
        read_access_log(tmp_path)
    assert read_access_log(tmp_path / "missing") == []


def test_recorder_stops_quietly_when_the_log_cannot_be_written(tmp_path: Path) -> None:
    recorder = AccessRecorder(tmp_path / LOG_NAME)
    os.close(recorder._fd)  # type: ignore[arg-type]   # the fd goes bad under it (as on EIO)
    recorder.note(1, "x")                              # logged, not raised
    assert recorder._fd is None


def test_recorder_keeps_names_that_are_not_utf8(tmp_path: Path) -> None:
    name = b"etc/\xff\xfe".decode("utf-8", "surrogateescape")
    recorder = AccessRecorder(tmp_path / LOG_NAME)
    recorder.note(7, name)
    recorder.note(8, "odd\ud800")                         # not from surrogateescape: still no error
    recorder.close()
    assert [a.path for a in read_access_log(tmp_path)] == [name, "odd\ud800"]
