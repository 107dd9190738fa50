"""Real containers with runc over overlayfs on extracted layers (busybox from Debian)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lazypull.errors import ContainerError
from lazypull.image.runconfig import run_config
from lazypull.runtime import ContainerOptions, Containers, Stdio, extract_layer, parse_volume
from lazypull.runtime.overlay import mountpoints, sync_filesystem
from tests.helpers.rootfs import Entry, busybox_tar, make_tar


@pytest.fixture(scope="module")
def busybox_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox rootfs as an extracted layer directory (through the real extraction code)."""
    base = tmp_path_factory.mktemp("busybox-layer")
    blob = base / "blob.tar"
    blob.write_bytes(busybox_tar())
    extract_layer(blob, base / "fs")
    return base / "fs"


def layer(tmp_path: Path, name: str, entries: list[Entry]) -> Path:
    blob = tmp_path / f"{name}.tar"
    blob.write_bytes(make_tar(entries))
    extract_layer(blob, tmp_path / name / "fs")
    return tmp_path / name / "fs"


def run(root: Path, lowers_top_first: Sequence[Path], options: ContainerOptions,
        config: dict[str, Any] | None = None, *, remove: bool = True) -> tuple[int, str, str]:
    """Create, run and (by default) remove a container; its exit status, stdout and stderr."""
    containers = Containers(root)
    record = containers.create(image="test/busybox:latest", lowers_top_first=lowers_top_first,
                               options=options, image_config=run_config({"config": config}, "test"))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            code = containers.run(record, tty=options.tty, stdio=Stdio(stdout=out, stderr=err))
        finally:
            if remove:
                containers.remove(record)
        out.seek(0)
        err.seek(0)
        return code, out.read().decode(), err.read().decode()


def assert_clean(root: Path) -> None:
    assert not [m for m in mountpoints() if m.startswith(str(root))]
    assert [p.name for p in (root / "containers").iterdir() if p.name != ".lock"] == []


def test_echo_and_exit_status(tmp_path: Path, busybox_layer: Path) -> None:
    code, out, _ = run(tmp_path, [busybox_layer], ContainerOptions(command=("/bin/busybox", "echo", "hi")))
    assert (code, out) == (0, "hi\n")
    code, out, err = run(tmp_path, [busybox_layer],
                         ContainerOptions(command=("sh", "-c", "echo out; echo err >&2; exit 7")))
    assert (code, out, err) == (7, "out\n", "err\n")
    nested = 'sh -c "kill -TERM \\$\\$"; exit $?'  # pid 1 ignores signals: kill a child shell
    code, _, _ = run(tmp_path, [busybox_layer], ContainerOptions(command=("sh", "-c", nested)))
    assert code == 128 + 15
    assert_clean(tmp_path)


def test_image_config_env_workdir_user(tmp_path: Path, busybox_layer: Path) -> None:
    config = {"Env": ["FOO=from-image", "KEEP=1"], "WorkingDir": "/home/alice", "User": "alice",
              "Cmd": ["sh", "-c", "echo $FOO $KEEP $HOME; pwd; id -u; id -g; id -G; echo $PATH"]}
    code, out, _ = run(tmp_path, [busybox_layer], ContainerOptions(), config)
    assert code == 0
    assert out.splitlines() == ["from-image 1 /home/alice", "/home/alice", "1234", "2345", "2345 50",
                                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    options = ContainerOptions(env=("FOO=from-cli",), workdir="/tmp/new/dir", user="daemon:50",
                               command=("sh", "-c", "echo $FOO $KEEP; pwd; id -u; id -g"))
    code, out, _ = run(tmp_path, [busybox_layer], options, config)
    assert (code, out.splitlines()) == (0, ["from-cli 1", "/tmp/new/dir", "1", "50"])
    code, out, _ = run(tmp_path, [busybox_layer], ContainerOptions(user="4321", command=("id",)), config)
    assert out.strip() == "uid=4321 gid=0(root)"


def test_unknown_user_refused(tmp_path: Path, busybox_layer: Path) -> None:
    with pytest.raises(ContainerError, match="unable to find user 'mallory'"):
        run(tmp_path, [busybox_layer], ContainerOptions(user="mallory", command=("true",)))
    assert_clean(tmp_path)


def test_entrypoint_and_cmd_rules(tmp_path: Path, busybox_layer: Path) -> None:
    config = {"Entrypoint": ["/bin/echo", "entry"], "Cmd": ["default-cmd"]}
    assert run(tmp_path, [busybox_layer], ContainerOptions(), config)[1] == "entry default-cmd\n"
    assert run(tmp_path, [busybox_layer], ContainerOptions(command=("given",)), config)[1] == "entry given\n"
    override = ContainerOptions(entrypoint=("/bin/echo",), command=("x",))
    out = run(tmp_path, [busybox_layer], override, config)[1]
    assert out == "x\n"
    with pytest.raises(ContainerError, match="no command"):
        run(tmp_path, [busybox_layer], ContainerOptions(), {})


def test_missing_binary_is_an_error(tmp_path: Path, busybox_layer: Path) -> None:
    with pytest.raises(ContainerError, match="runc could not run"):
        run(tmp_path, [busybox_layer], ContainerOptions(command=("/no/such/binary",)))
    assert_clean(tmp_path)


def test_multi_layer_whiteouts_and_opaque_dirs(tmp_path: Path, busybox_layer: Path) -> None:
    lower = layer(tmp_path, "l1", [
        Entry("etc/", "dir"), Entry("etc/old", data=b"old"), Entry("etc/keep", data=b"keep"),
        Entry("var/", "dir"), Entry("var/dir/", "dir"), Entry("var/dir/a", data=b"a"),
        Entry("var/dir/sub/", "dir"), Entry("var/dir/sub/b", data=b"b"), Entry("opt/x", data=b"v1")])
    upper = layer(tmp_path, "l2", [
        Entry("etc/", "dir"), Entry("etc/.wh.old"), Entry("var/", "dir"), Entry("var/dir/", "dir"),
        Entry("var/dir/.wh..wh..opq"), Entry("var/dir/c", data=b"c"), Entry("opt/x", data=b"v2")])
    script = "ls /var/dir; ls /etc | grep -v -e passwd -e group -e hosts -e hostname -e resolv; cat /opt/x"
    options = ContainerOptions(command=("sh", "-c", script))
    code, out, _ = run(tmp_path, [upper, lower, busybox_layer], options)
    assert (code, out.splitlines()) == (0, ["c", "keep", "v2"])


def test_writable_layer_and_rm(tmp_path: Path, busybox_layer: Path) -> None:
    containers = Containers(tmp_path)
    options = ContainerOptions(command=("sh", "-c", "echo data > /written; rm /bin/cat"))
    record = containers.create(image="test/busybox", lowers_top_first=[busybox_layer],
                               options=options, name="keeper")
    assert containers.run(record, tty=False) == 0
    bundle = tmp_path / "containers" / record.id
    assert (bundle / "upper" / "written").read_text() == "data\n"
    assert (busybox_layer / "bin" / "cat").is_symlink(), "the lower layer must not change"
    assert not [m for m in mountpoints() if m.startswith(str(tmp_path))], "rootfs unmounted after exit"
    found = containers.find("keeper")
    assert (found.id, containers.status(found)) == (record.id, "exited (0)")
    assert containers.find(record.id[:8]).name == "keeper"
    with pytest.raises(ContainerError, match="already in use"):
        containers.create(image="x", lowers_top_first=[busybox_layer], options=options,
                          name="keeper")
    containers.remove(found)
    assert not bundle.exists()
    with pytest.raises(ContainerError, match="no such container"):
        containers.find("keeper")
    assert_clean(tmp_path)


def test_tty(tmp_path: Path, busybox_layer: Path) -> None:
    script = "test -t 0 && test -t 1 && echo $TERM; exit 3"
    code, out, _ = run(tmp_path, [busybox_layer], ContainerOptions(tty=True, command=("sh", "-c", script)))
    assert (code, out) == (3, "xterm\r\n")
    assert_clean(tmp_path)


def test_stdin_passthrough(tmp_path: Path, busybox_layer: Path) -> None:
    containers = Containers(tmp_path)
    record = containers.create(image="t", lowers_top_first=[busybox_layer],
                               options=ContainerOptions(stdin=True, command=("cat",)))
    with tempfile.TemporaryFile() as inp, tempfile.TemporaryFile() as out:
        inp.write(b"through stdin\n")
        inp.seek(0)
        assert containers.run(record, tty=False, stdio=Stdio(stdin=inp, stdout=out)) == 0
        out.seek(0)
        assert out.read() == b"through stdin\n"
    containers.remove(record)


def test_network_none_and_host_files(tmp_path: Path, busybox_layer: Path) -> None:
    script = "ls /sys/class/net; cat /etc/hostname; grep -c localhost /etc/hosts; cat /etc/resolv.conf"
    code, out, _ = run(tmp_path, [busybox_layer],
                       ContainerOptions(network="none", hostname="boxy", command=("sh", "-c", script)))
    lines = out.splitlines()
    assert code == 0 and lines[:2] == ["lo", "boxy"] and int(lines[2]) >= 2 and "no resolvers" in lines[3]
    code, out, _ = run(tmp_path, [busybox_layer], ContainerOptions(command=("ls", "/sys/class/net")))
    assert code == 0 and set(out.split()) == set(os.listdir("/sys/class/net"))


def test_volumes(tmp_path: Path, busybox_layer: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("host file\n")
    options = ContainerOptions(volumes=(parse_volume(f"{shared}:/data"), parse_volume(f"{shared}:/ro:ro")),
                               command=("sh", "-c", "cat /data/in; echo back > /data/out; echo x > /ro/y"))
    code, out, err = run(tmp_path, [busybox_layer], options)
    assert code != 0 and out == "host file\n" and "Read-only" in err
    assert (shared / "out").read_text() == "back\n" and not (shared / "y").exists()
    with pytest.raises(ContainerError, match="does not exist"):
        parse_volume(f"{tmp_path}/nope:/x")
    with pytest.raises(ContainerError, match="named volumes"):
        parse_volume("myvol:/x")


def test_repeated_layer_runs_with_its_topmost_copy(tmp_path: Path, busybox_layer: Path) -> None:
    """An image repeating a layer (A, B, A) runs; overlayfs would refuse the same lower dir twice."""
    from types import SimpleNamespace

    from lazypull.image import Store
    from lazypull.registry import Descriptor
    from lazypull.runtime.layers import lower_dirs

    a = layer(tmp_path, "a", [Entry("opt/x", data=b"from a"), Entry("opt/a", data=b"a")])
    b = layer(tmp_path, "b", [Entry("opt/x", data=b"from b"), Entry("opt/.wh.a"), Entry("opt/b", data=b"b")])
    digests = {p: "sha256:" + format(i, "064x") for i, p in enumerate((busybox_layer, a, b), 1)}
    order = [busybox_layer, a, b, a]                       # bottom first
    image = SimpleNamespace(name="test/repeat:1", source=None, layers=[
        Descriptor(media_type="application/vnd.oci.image.layer.v1.tar+gzip", digest=digests[p], size=1)
        for p in order])
    mounts = [SimpleNamespace(digest=digests[p], lazy=True, path=p) for p in order]
    lowers = lower_dirs(tmp_path / "root", Store(tmp_path / "root"), image, mounts)  # type: ignore[arg-type]
    assert lowers == [a, b, busybox_layer]
    options = ContainerOptions(command=("sh", "-c", "cat /opt/x; echo; ls /opt"))
    code, out, _ = run(tmp_path, lowers, options)
    assert (code, out.splitlines()) == (0, ["from a", "a", "b", "x"])


def _mount_options(target: Path) -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            if fields[4] == str(target):
                return line.split(" - ", 1)[1].split()[2]
    raise AssertionError(f"{target} is not mounted")


def test_volatile_writable_layer_runs_twice(tmp_path: Path, busybox_layer: Path) -> None:
    containers = Containers(tmp_path)
    options = ContainerOptions(command=("sh", "-c", "echo again >> /written; cat /written"), volatile=True)
    record = containers.create(image="test/busybox", lowers_top_first=[busybox_layer],
                               options=options)
    rootfs = tmp_path / "containers" / record.id / "rootfs"
    assert {"volatile", "fsync=volatile"} & set(_mount_options(rootfs).split(","))   # newer kernels: fsync=
    assert containers.find(record.id).volatile
    with tempfile.TemporaryFile() as out:
        assert containers.run(record, tty=False, stdio=Stdio(stdout=out)) == 0
        # a second run mounts the same workdir again (the kernel's volatile marker is cleared first)
        assert containers.run(containers.find(record.id), tty=False, stdio=Stdio(stdout=out)) == 0
        out.seek(0)
        assert out.read() == b"again\nagain\nagain\n"
    containers.remove(containers.find(record.id))
    assert_clean(tmp_path)
    plain = containers.create(image="test/busybox", lowers_top_first=[busybox_layer],
                              options=ContainerOptions(command=("true",)))
    plain_options = _mount_options(tmp_path / "containers" / plain.id / "rootfs")
    assert not {"volatile", "fsync=volatile"} & set(plain_options.split(","))
    containers.remove(plain)
    assert_clean(tmp_path)


def test_sync_filesystem(tmp_path: Path) -> None:
    """syncfs(2) through libc: a directory's filesystem syncs; a file is not a directory."""
    (tmp_path / "written").write_bytes(b"x" * 4096)
    sync_filesystem(tmp_path)
    with pytest.raises(NotADirectoryError):
        sync_filesystem(tmp_path / "written")


def test_create_on_a_full_disk_names_the_container_and_leaves_nothing(tmp_path: Path,
                                                                      busybox_layer: Path) -> None:
    """A full disk fails the container's creation (its bundle cannot be written, as with docker), with a
    line naming the container and where, not a bare "No space left on device", and nothing left."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(disk)], check=True)
    try:
        containers = Containers(disk / "root")
        filler = disk / "filler"
        with open(filler, "wb") as fh, contextlib.suppress(OSError):
            fh.write(bytes(2 << 20))                     # ENOSPC at 1 MiB: the disk is full
        with pytest.raises(ContainerError) as caught:
            containers.create(image="test/busybox", lowers_top_first=[busybox_layer],
                              options=ContainerOptions(command=("true",)), name="full")
        message = str(caught.value)
        assert "No space left on device" in message and str(disk / "root" / "containers") in message
        assert [p.name for p in (disk / "root" / "containers").iterdir() if not p.name.startswith(".")] == []
        assert not [m for m in mountpoints() if m.startswith(str(disk) + "/")], "a rootfs stayed mounted"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
