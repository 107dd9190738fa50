"""Hostile image contents, image configs and command-line inputs (issue 9, findings 7, 9, 13, 16).

Each hostile image is built here (tars written member by member, an OCI layout, copied into a fresh
store) and run by the real command (``python -m lazypull``: runc, overlayfs, the mount server with
``--snapshotter=stargz``). Every case must end with exit status 1 and one line ``lazypull: error: ...``
naming what was wrong, no traceback, and nothing left behind: no container, no mount, no half
extracted layer, no image named by a failed conversion.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lazypull.runtime.overlay import mountpoints
from tests.helpers.rootfs import Entry, busybox_entries, make_tar

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/hostile/image:v1"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nalice:x:1234:2345:Alice:/home/alice:/bin/sh\n"
GROUP = "root:x:0:\nusers:x:2345:\n"


# -- building hostile images ------------------------------------------------------------------------

def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_layout(layout: Path, tars: list[bytes], config: dict[str, Any] | None = None,
                 raw_manifest: bytes | None = None) -> Path:
    """An OCI layout tagged ``v1``: gzip layers from ``tars`` and ``config`` as the image config's
    ``config`` object (or ``raw_manifest`` as the manifest blob, whatever it holds)."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
               **_blob(layout, gzip.compress(t, mtime=0))} for t in tars]
    image_config = {"architecture": "amd64", "os": "linux",
                    "config": {"Cmd": ["/bin/true"]} if config is None else config,
                    "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(t).hexdigest()}"
                                                              for t in tars]}}
    config_blob = _blob(layout, json.dumps(image_config).encode())
    manifest = raw_manifest if raw_manifest is not None else json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
        "layers": layers}).encode()
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **_blob(layout, manifest),
             "annotations": {"org.opencontainers.image.ref.name": "v1"}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return layout


def store_image(root: Path, layout: Path) -> None:
    """Copy the layout's ``v1`` into the store at ``root`` as :data:`IMAGE` (what a pull would do)."""
    from lazypull.image import Layout, Store, copy_into_store

    source = Layout(layout)
    copy_into_store(Store(root), source.root("v1"), source, IMAGE, source=None, platforms=None)


def etc(passwd: str | Entry = PASSWD, group: str | Entry = GROUP) -> bytes:
    """A layer with /etc/passwd and /etc/group: text, or an :class:`Entry` of another kind."""
    files = [Entry(f"etc/{name}", data=value.encode()) if isinstance(value, str) else value
             for name, value in (("passwd", passwd), ("group", group))]
    return make_tar([Entry("etc", "dir"), *files])


def raw_tar(build: Callable[[tarfile.TarFile], None], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar written by ``build`` directly (for header fields tarfile writes only in some formats)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        build(tar)
    return buf.getvalue()


def member(name: str, **fields: Any) -> Callable[[tarfile.TarFile], None]:
    """A tar with one empty regular file (or ``type``) named ``name`` with these header fields."""
    def build(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        pax = fields.pop("pax_headers", None)
        for key, value in fields.items():
            setattr(info, key, value)
        if pax:
            info.pax_headers = pax
        tar.addfile(info, io.BytesIO(b"") if info.isreg() else None)
    return build


# -- running the command --------------------------------------------------------------------------

def lazypull(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    return subprocess.run([sys.executable, "-m", "lazypull", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=300, stdin=subprocess.DEVNULL)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit status 1 and exactly one stderr line, ``lazypull: error: ...`` holding each ``expected``."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lazypull: error: "), result.stderr
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"


def assert_nothing_left(root: Path) -> None:
    """No container, no mount, no hold in the mount server and no partial or refused layer
    extraction under ``root``."""
    containers = root / "containers"
    if containers.is_dir():
        assert [p.name for p in containers.iterdir() if p.name != ".lock"] == []
    assert [m for m in mountpoints() if m.startswith(str(root) + "/")] == []
    state = root / "run" / "state.json"
    if state.exists():
        assert json.loads(state.read_text()).get("holds") == []
    snapshots = root / "snapshots"
    if snapshots.is_dir():
        leftovers = [str(p.relative_to(root)) for p in snapshots.glob("*/*") if ".partial-" in p.name]
        assert leftovers == []


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A fresh store root; its mount server (``--snapshotter=stargz``) is stopped afterwards."""
    path = tmp_path / "root"
    path.mkdir()
    yield path
    from lazypull.snapshot import MountClient

    with contextlib.suppress(Exception):
        MountClient(path, autostart=False).shutdown()


# -- the table ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """A hostile image (``tars`` + ``config``; none: no image) run with ``args``; what the error says."""

    tars: Callable[[], list[bytes]] | None
    args: tuple[str, ...]
    expected: tuple[str, ...]
    config: dict[str, Any] | None = None
    snapshotter: str = "overlayfs"
    files: dict[str, bytes] = field(default_factory=dict)   # written under tmp_path before running


RUN = ("run", "--rm", "--pull=never", "-q")
HUGE = 5 << 20

def _passwd(**kw: Any) -> Callable[[], list[bytes]]:
    return lambda: [etc(**kw)]


def _tar(build: Callable[[tarfile.TarFile], None],
         fmt: int = tarfile.PAX_FORMAT) -> Callable[[], list[bytes]]:
    return lambda: [raw_tar(build, fmt)]


ALICE = (*RUN, "-u", "alice", IMAGE)
ALICE_USERS = (*RUN, "-u", "alice:users", IMAGE)
NOT_REGULAR = "in the image is not a regular file"
BAD_CONFIG = "malformed image config"

CASES: dict[str, Case] = {
    # finding 7: /etc/passwd must be a regular file of bounded size, and is never opened otherwise
    "passwd-fifo": Case(_passwd(passwd=Entry("etc/passwd", "fifo")), ALICE, (f"/etc/passwd {NOT_REGULAR}",)),
    "passwd-device": Case(_passwd(passwd=Entry("etc/passwd", "char", devmajor=1, devminor=3)), ALICE,
                          (f"/etc/passwd {NOT_REGULAR}",)),
    "group-fifo": Case(_passwd(group=Entry("etc/group", "fifo")), ALICE_USERS,
                       (f"/etc/group {NOT_REGULAR}",)),
    "passwd-huge": Case(_passwd(passwd="#" * HUGE + "\n" + PASSWD), ALICE,
                        ("/etc/passwd in the image is larger than",)),
    "passwd-long-symlink": Case(_passwd(passwd=Entry("etc/passwd", "symlink", linkname="x" * 300)), ALICE,
                                ("cannot read /etc/passwd in the image", "File name too long")),
    # finding 13: numbers in /etc/passwd and /etc/group
    "passwd-uid-superscript": Case(_passwd(passwd="alice:x:\u00b2:1::/:/bin/sh\n"), ALICE,
                                   ("invalid uid '\u00b2' for user 'alice'",)),
    "passwd-uid-arabic-digits": Case(_passwd(passwd="alice:x:\u0663\u0664:1::/:/bin/sh\n"), ALICE,
                                     ("invalid uid",)),
    "passwd-uid-5000-digits": Case(_passwd(passwd="alice:x:" + "7" * 5000 + ":1::/:/bin/sh\n"), ALICE,
                                   ("invalid uid '7777", "for user 'alice'")),
    "group-gid-5000-digits": Case(_passwd(group="users:x:" + "9" * 5000 + ":\n"), ALICE_USERS,
                                  ("invalid gid '9999", "group 'users'")),
    "user-5000-digits": Case(_passwd(), (*RUN, "-u", "5" * 5000, IMAGE), ("unable to find user '5555",)),
    # finding 13: the image config's types
    "config-env-ints": Case(_passwd(), (*RUN, IMAGE), (BAD_CONFIG, "$.config.Env[0]"),
                            config={"Env": [1, 2], "Cmd": ["/bin/true"]}),
    "config-workdir-int": Case(_passwd(), (*RUN, IMAGE), (BAD_CONFIG, "$.config.WorkingDir"),
                               config={"WorkingDir": 5, "Cmd": ["/bin/true"]}),
    "config-cmd-ints": Case(_passwd(), (*RUN, IMAGE), (BAD_CONFIG, "$.config.Cmd[0]"),
                            config={"Cmd": [1, 2]}),
    "config-entrypoint-object": Case(_passwd(), (*RUN, IMAGE), (BAD_CONFIG, "$.config.Entrypoint"),
                                     config={"Entrypoint": {"a": 1}}),
    "config-user-list": Case(_passwd(), (*RUN, IMAGE), (BAD_CONFIG, "$.config.User"),
                             config={"User": ["root"], "Cmd": ["/bin/true"]}),
    "config-not-object": Case(_passwd(), (*RUN, IMAGE), (BAD_CONFIG, "$.config"), config=5),  # type: ignore[arg-type]
    "config-env-nul": Case(_passwd(), (*RUN, IMAGE), ("a NUL byte in `$.config.Env`",),
                           config={"Env": ["A=b\x00c"], "Cmd": ["/bin/true"]}),
    # finding 13: numbers in tar headers, on the --snapshotter=stargz fallback extraction
    "tar-uid-minus-1": Case(_tar(member("f", uid=-1)), (*RUN, IMAGE),
                            ("member 'f'", "uid '-1' is out of range"), snapshotter="stargz"),
    "tar-uid-2^40": Case(_tar(member("f", uid=2**40)), (*RUN, IMAGE),
                         ("member 'f'", f"uid '{2**40}' is out of range"), snapshotter="stargz"),
    "tar-gid-pax-5000-digits": Case(_tar(member("f", pax_headers={"gid": "3" * 5000})), (*RUN, IMAGE),
                                    ("member 'f'", "gid '3333"), snapshotter="stargz"),
    "tar-devmajor-2^40": Case(_tar(member("dev", type=tarfile.CHRTYPE, devmajor=2**40), tarfile.GNU_FORMAT),
                              (*RUN, IMAGE), ("member 'dev'", f"device number {2**40}:0 is out of range"),
                              snapshotter="stargz"),
    "tar-devminor-2^20": Case(_tar(member("dev", type=tarfile.BLKTYPE, devminor=2**20), tarfile.GNU_FORMAT),
                              (*RUN, IMAGE), ("member 'dev'", f"device number 0:{2**20} is out of range")),
    # findings 16 and 9: command-line values
    "hostname-newline": Case(None, (*RUN, "--hostname", "evil\n1.2.3.4 registry", IMAGE),
                             ("invalid hostname 'evil\\n1.2.3.4 registry'",)),
    "hostname-space": Case(None, (*RUN, "--hostname", "a b", IMAGE), ("invalid hostname 'a b'",)),
    "hostname-too-long": Case(None, (*RUN, "--hostname", "a" * 65, IMAGE), ("invalid hostname",)),
    "env-file-dev-zero": Case(None, (*RUN, "--env-file", "/dev/zero", IMAGE),
                              ("env file /dev/zero is not a regular file",)),
    "env-file-binary": Case(None, (*RUN, "--env-file", "{tmp}/binary", IMAGE), ("is not UTF-8 text",),
                            files={"binary": b"A=1\n\xff\xfe\x00\x01"}),
    "env-file-nul": Case(None, (*RUN, "--env-file", "{tmp}/nul", IMAGE), ("contains a NUL byte",),
                         files={"nul": b"A=1\x00\n"}),
    "env-file-huge": Case(None, (*RUN, "--env-file", "{tmp}/huge", IMAGE), ("is larger than 1048576 bytes",),
                          files={"huge": b"A=" + b"x" * (2 << 20) + b"\n"}),
    "layer-toc-dev-zero": Case(None, ("layer", "inspect", "--toc", "/dev/zero", "{tmp}/blob"),
                               ("TOC file /dev/zero is not a regular file",), files={"blob": b"x"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_one_clear_error(tmp_path: Path, root: Path, name: str) -> None:
    case = CASES[name]
    if case.tars is not None:
        store_image(root, write_layout(tmp_path / "layout", case.tars(), case.config))
    for file_name, data in case.files.items():
        (tmp_path / file_name).write_bytes(data)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in case.args]
    result = lazypull(root, f"--snapshotter={case.snapshotter}", *args)
    assert_one_line_error(result, *case.expected)
    assert_nothing_left(root)


# -- what is accepted, and how ----------------------------------------------------------------------

@pytest.mark.parametrize(("config", "stdout"), [
    ({"Entrypoint": "/bin/echo", "Cmd": ["one", "two"]}, "one two\n"),
    ({"Entrypoint": ["/bin/echo"], "Cmd": "/x y"}, "/x y\n"),
], ids=["string-entrypoint", "string-cmd"])
def test_string_entrypoint_or_cmd_is_one_argument(tmp_path: Path, root: Path, config: dict[str, Any],
                                                  stdout: str) -> None:
    """A JSON string is one argument, as Docker reads it (its StrSlice), never one per character."""
    store_image(root, write_layout(tmp_path / "layout", [make_tar(busybox_entries())], config))
    result = lazypull(root, "--snapshotter=overlayfs", *RUN, IMAGE)
    assert (result.returncode, result.stdout) == (0, stdout), result.stderr
    assert_nothing_left(root)


def test_string_command_is_not_split(tmp_path: Path, root: Path) -> None:
    """``"Cmd": "echo hi"`` is the program named ``echo hi`` (Docker's reading): runc says it is not there."""
    store_image(root, write_layout(tmp_path / "layout", [make_tar(busybox_entries())], {"Cmd": "echo hi"}))
    result = lazypull(root, "--snapshotter=overlayfs", *RUN, IMAGE)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("lazypull: error: ")
    assert 'exec: "echo hi": executable file not found' in result.stderr
    assert_nothing_left(root)


@pytest.mark.parametrize("snapshotter", ["stargz", "overlayfs"])
def test_mtime_beyond_timespec_is_the_epoch(tmp_path: Path, root: Path, snapshotter: str) -> None:
    """What containerd's archive does with a time no file can have (its boundTime): the epoch."""
    hostile = raw_tar(member("huge", pax_headers={"mtime": "1" + "0" * 30}))
    store_image(root, write_layout(tmp_path / "layout", [make_tar(busybox_entries()), hostile]))
    result = lazypull(root, f"--snapshotter={snapshotter}", *RUN, IMAGE, "stat", "-c", "%Y", "/huge")
    assert (result.returncode, result.stdout) == (0, "0\n"), result.stderr
    assert_nothing_left(root)


CONVERT = ("image", "convert", "--oci")


@pytest.mark.parametrize(("manifest", "expected"), [
    (b"not json", ("manifest sha256:", "is not valid JSON")),
    (b"[" * 200_000 + b"]" * 200_000, ("manifest sha256:", "is not valid JSON", "recursion")),
    (b'{"schemaVersion": 2, "config": 5, "layers": []}', ("manifest sha256:", "config")),
], ids=["not-json", "200k-deep", "config-not-descriptor"])
def test_convert_of_a_hostile_layout_manifest(tmp_path: Path, root: Path, manifest: bytes,
                                              expected: tuple[str, ...]) -> None:
    layout = write_layout(tmp_path / "layout", [etc()], raw_manifest=manifest)
    result = lazypull(root, *CONVERT, f"oci:{layout}:v1", "localhost/converted:v1")
    assert_one_line_error(result, *expected)
    assert "converted" not in lazypull(root, "images").stdout


@pytest.mark.parametrize("index", ["fifo", "deep", "dev-zero"])
def test_convert_of_a_hostile_layout_index(tmp_path: Path, root: Path, index: str) -> None:
    layout = write_layout(tmp_path / "layout", [etc()])
    (layout / "index.json").unlink()
    if index == "fifo":
        os.mkfifo(layout / "index.json")      # nobody writes: opening it to read would wait for ever
        expected = "index.json is not a regular file"
    elif index == "deep":
        (layout / "index.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
        expected = "index.json is not valid JSON"
    else:
        (layout / "index.json").symlink_to("/dev/zero")
        expected = "index.json is not a regular file"
    result = lazypull(root, *CONVERT, f"oci:{layout}", "localhost/converted:v1")
    assert_one_line_error(result, expected)


def test_convert_from_proc(root: Path) -> None:
    assert_one_line_error(lazypull(root, *CONVERT, "oci:/proc/self", "localhost/converted:v1"),
                          "/proc/self is not an OCI image layout")


def test_unwritable_root(tmp_path: Path, root: Path) -> None:
    """A store root where nothing can be created (sysfs): one line naming it, not a traceback."""
    layout = write_layout(tmp_path / "layout", [etc()])
    result = lazypull(root, "--root", "/sys/kernel", *CONVERT, f"oci:{layout}:v1", "localhost/converted:v1")
    assert_one_line_error(result, "/sys/kernel")


def test_env_file_from_a_pipe(tmp_path: Path, root: Path) -> None:
    """``--env-file <(...)`` (a pipe) is still read, as docker reads it."""
    store_image(root, write_layout(tmp_path / "layout", [make_tar(busybox_entries())]))
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as writer:
        writer.write(b"# from a pipe\nGREETING=piped\n")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "lazypull", "--root", str(root), "--snapshotter=overlayfs", *RUN,
             "--env-file", f"/dev/fd/{read_end}", IMAGE, "sh", "-c", "echo $GREETING"],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, pass_fds=(read_end,))
    finally:
        os.close(read_end)
    assert (result.returncode, result.stdout) == (0, "piped\n"), result.stderr


def test_run_detached_reads_only_the_tail_of_a_huge_container_log(tmp_path: Path) -> None:
    """``run -d`` looks for the supervisor's error at the end of the log the container also writes to:
    8 GiB of output (sparse here) must not be read into memory."""
    from lazypull.cli.run import _log_tail

    log = tmp_path / "container.log"
    with open(log, "wb") as f:
        f.truncate(8 << 30)
        f.seek(0, os.SEEK_END)
        f.write(b"\nlazypull: error: the reason\n")
    tail = _log_tail(log)
    assert len(tail) <= 64 << 10 and tail.splitlines()[-1] == "lazypull: error: the reason"
    assert _log_tail(tmp_path / "absent.log") == ""


@pytest.mark.parametrize(("blob", "kind"), [("layer", "fifo"), ("layer", "host-file"),
                                            ("config", "dev-zero")])
def test_convert_of_a_layout_whose_blob_is_not_a_file(tmp_path: Path, root: Path, blob: str,
                                                      kind: str) -> None:
    """A layout someone else wrote: a FIFO blob hung the conversion, a link to a host file (say a
    tar of /root) would have become a layer of the new image."""
    layout = write_layout(tmp_path / "layout", [etc()])
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    digest = (manifest["layers"][0] if blob == "layer" else manifest["config"])["digest"]
    path = layout / "blobs" / "sha256" / digest[7:]
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "host-file":
        host = tmp_path / "host-secret.tar"
        host.write_bytes(etc())
        path.symlink_to(host)
    else:
        path.symlink_to("/dev/zero")
    result = lazypull(root, *CONVERT, "--estargz", f"oci:{layout}:v1", "localhost/converted:v1")
    assert_one_line_error(result, f"blob {digest}", "is not a regular file" if kind == "fifo"
                          else "is a symbolic link")
    assert "converted" not in lazypull(root, "images").stdout


@pytest.mark.parametrize(("passwd", "config", "expected"), [
    ("alice:x:" + "7" * 5000 + ":1::/:/bin/sh\n", {"User": "alice", "Cmd": ["/bin/true"]},
     "invalid uid '7777"),
    (PASSWD, {"Env": [1], "Cmd": ["/bin/true"]}, "$.config.Env[0]"),
], ids=["passwd-over-fuse", "config-before-mount"])
def test_lazy_image(tmp_path: Path, root: Path, registry: Any, passwd: str, config: dict[str, Any],
                    expected: str) -> None:
    """The same verdicts when the layers are lazy FUSE mounts (eStargz from a registry); a bad config
    is refused before anything is mounted."""
    from tests.helpers.images import TarEntrySpec, directory, file
    from tests.helpers.rootfs import push_lazy_image

    layer: list[TarEntrySpec] = [directory("etc"), file("etc/passwd", passwd), file("etc/group", GROUP)]
    name, _ = push_lazy_image(tmp_path / "build", f"{registry.host}/hostile/lazy-{tmp_path.name}:v1", [layer],
                              config={"config": config})
    result = lazypull(root, "--insecure-registry", "--snapshotter=stargz", "run", "--rm", "-q", name)
    assert_one_line_error(result, expected)
    assert_nothing_left(root)


def test_error_line_never_carries_a_terminal_escape(root: Path, fault_proxy: Any) -> None:
    """A registry's error message holding an escape sequence is shown escaped, on one line."""
    from tests.helpers.registry import Fault

    body = json.dumps({"errors": [{"code": "DENIED", "message": "\x1b]0;owned\x07\x1b[2J\nsecond line"}]})
    fault_proxy.add(Fault("status", method="GET", path_contains="/manifests/", status=403, times=-1,
                          body=body.encode()))
    result = lazypull(root, "--insecure-registry", "pull", f"{fault_proxy.host}/hostile/escape:v1")
    assert_one_line_error(result, "\\x1b]0;owned\\x07\\x1b[2J second line")
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
