"""The seed document (lazy-pulling-with-stargz.md), command by command, with ``lazypull`` for ``nerdctl``.

Each test names the section it covers. The seed's images live on ghcr.io and ``registry2:5000``;
ours are built from busybox and pushed to Debian's docker-registry on ``127.0.0.1:PORT`` (plain
HTTP, so commands that talk to it carry ``--insecure-registry``, as the seed's ``registry2:5000``
commands do). ``HOST/e2e/foo:latest`` plays both ``example.com/foo`` and ``ghcr.io/.../ubuntu:22.04``
(like those, a list of platforms: linux/amd64 and linux/arm64).
``run`` and ``pull`` (terminals, FUSE, the mount server, runc) always run as their own process;
the other commands may run in this process through click's runner.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lazypull.format import BytesSource, FormatError, open_layer
from lazypull.registry import RegistryClient
from tests.e2e.conftest import (
    BIG_SIZE,
    MOTD,
    REPO_ROOT,
    Roots,
    SeedImage,
    cli,
    lazypull_binary,
    lazypull_mount_lines,
    mounts_under,
    ok,
    run_lazypull,
    run_on_terminal,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_GZIP_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
LAZY_CONFIG = "background_fetch = false\n"     # only what is read is fetched: laziness shows in the log
IMAGES_HEADER = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "PLATFORM", "SIZE", "BLOB SIZE", "LOCAL"]
CREATED = re.compile(r"(Less than a second|\d+ seconds?|About a minute|\d+ minutes) ago")  # go-units
DIGEST_LINE = re.compile(r"sha256:[0-9a-f]{64}")


# -- helpers ---------------------------------------------------------------------------------------

def digest_out(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a convert/push/pull prints on stdout: the image's digest."""
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and DIGEST_LINE.fullmatch(lines[0]), f"expected one digest line: {result.stdout!r}"
    return lines[0]


def human_size(n: int) -> str:
    """nerdctl's size format (1024 steps, one decimal): ``0.0 B``, ``29.0 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def image_rows(output: str) -> dict[str, dict[str, str]]:
    """``lazypull images`` parsed: REPOSITORY:TAG -> column -> value; the header must be nerdctl's."""
    lines = output.splitlines()
    assert re.split(r"\s{2,}", lines[0].strip()) == IMAGES_HEADER, lines[0]
    rows = {}
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(IMAGES_HEADER), f"row has {len(cells)} columns: {line!r}"
        row = dict(zip(IMAGES_HEADER, cells, strict=True))
        assert re.fullmatch(r"[0-9a-f]{12}", row["IMAGE ID"]), row
        assert CREATED.fullmatch(row["CREATED"]), row
        rows[f"{row['REPOSITORY']}:{row['TAG']}"] = row
    return rows


def inspect(root: Path, name: str) -> dict[str, Any]:
    """``lazypull image inspect NAME`` (one object)."""
    (obj,) = json.loads(ok(cli(root, "image", "inspect", name)).stdout)
    assert isinstance(obj, dict)
    return obj


def stored_manifest(root: Path, name: str) -> tuple[dict[str, Any], int]:
    """The manifest (this machine's platform) of a stored image, and BLOB SIZE as nerdctl counts it:
    index (if any) + manifest + config + compressed layers."""
    info = inspect(root, name)
    raw = (root / "content" / "blobs" / "sha256" / info["Manifest"].removeprefix("sha256:")).read_bytes()
    manifest = json.loads(raw)
    assert isinstance(manifest, dict)
    total = len(raw) + int(manifest["config"]["size"]) + sum(int(d["size"]) for d in manifest["layers"])
    if info["Target"]["digest"] != info["Manifest"]:
        total += int(info["Target"]["size"])
    return manifest, total


def manifest_from_registry(ref: str) -> tuple[str, str, dict[str, Any]]:
    """The digest and media type of what ``ref`` names in the registry (an index or a manifest), and
    the manifest of this machine's platform."""
    with RegistryClient(insecure=True) as client:
        _, media_type, digest = client.get_manifest(ref)
        raw, _, _ = client.resolve_image(ref)
    return digest, media_type, json.loads(raw)


def index_from_registry(ref: str) -> dict[str, Any]:
    """The index (manifest list) ``ref`` names."""
    with RegistryClient(insecure=True) as client:
        raw, media_type, _ = client.get_manifest(ref)
    assert media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST), media_type
    index = json.loads(raw)
    assert isinstance(index, dict)
    return index


def blob_from_registry(ref: str, digest: str) -> bytes:
    """``crane blob REF@DIGEST``."""
    with RegistryClient(insecure=True) as client:
        return client.fetch_blob(ref, digest)


def blob_bytes_served(seed: SeedImage, mark: int, digest: str) -> int:
    """Bytes the registry sent for GETs of blob ``digest`` since ``mark``."""
    return sum(e.bytes for e in seed.registry.access_log(mark)
               if e.method == "GET" and f"/blobs/{digest}" in e.path and e.status in (200, 206))


def tar_names(tar: bytes) -> set[str]:
    """Member names of a tar."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return {m.name.rstrip("/") for m in t.getmembers()}


def assert_tree_is_tar(top: Path, tar: bytes) -> None:
    """Every member of ``tar`` is under ``top`` (a layer's FUSE mount) with its type, mode, owner
    and content; nothing else is there."""
    names = set()
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        for member in t.getmembers():
            name = member.name.rstrip("/")
            names.add(name)
            path = top / name
            st = path.lstat()
            assert (st.st_uid, st.st_gid) == (member.uid, member.gid), name
            if member.issym():
                assert path.is_symlink() and str(path.readlink()) == member.linkname, name
                continue
            assert st.st_mode & 0o7777 == member.mode, f"{name}: mode {st.st_mode:o} != {member.mode:o}"
            if member.isdir():
                assert path.is_dir(), name
            else:
                extracted = t.extractfile(member)
                assert member.isreg() and extracted is not None, name
                assert path.read_bytes() == extracted.read(), f"{name}: content differs"
    found = {str(p.relative_to(top)) for p in top.rglob("*")}
    assert found == names, f"extra {sorted(found - names)}, missing {sorted(names - found)}"


def layer_mounts(root: Path) -> dict[str, str]:
    """``mount | grep lazypull`` for one root: layer digest -> the whole mount line (format checked)."""
    found = {}
    for line in lazypull_mount_lines(root):
        m = re.fullmatch(rf"lazypull-([0-9a-f]{{16}}) on {re.escape(str(root))}/snapshots/([0-9a-f]{{64}})"
                         r"/fs type fuse\.lazypull \((ro,[^)]*)\)", line)
        assert m, f"unexpected mount line: {line!r}"
        assert m.group(2).startswith(m.group(1)), f"fsname does not name the layer: {line!r}"
        assert "allow_other" in m.group(3), line
        found[f"sha256:{m.group(2)}"] = line
    return found


def shared_streams(blob: bytes) -> tuple[int, int]:
    """(chunks of regular files, distinct compressed streams holding them) in an eStargz blob."""
    reader = open_layer(BytesSource(blob))
    offsets = [c.offset for e in reader.entries() if e.type == "reg" and e.size for c in reader.chunks(e)]
    return len(offsets), len(set(offsets))


@dataclass(frozen=True)
class Converted:
    """One `image convert` + `push` done in the build root, and what they printed."""

    name: str
    convert: subprocess.CompletedProcess[str]
    push: subprocess.CompletedProcess[str]
    digest: str
    manifest: dict[str, Any]

    @property
    def layer_digests(self) -> list[str]:
        return [d["digest"] for d in self.manifest["layers"]]


def convert_and_push(seed: SeedImage, name: str, *flags: str, source: str | None = None) -> Converted:
    """``lazypull image convert FLAGS SRC NAME`` then ``lazypull push --insecure-registry NAME``."""
    convert = ok(cli(seed.build_root, "image", "convert", *flags, source or seed.ref, name))
    digest = digest_out(convert)
    push = ok(cli(seed.build_root, "push", "--insecure-registry", name))
    pushed, _, manifest = manifest_from_registry(name)
    assert pushed == digest
    return Converted(name, convert, push, digest, manifest)


def lazy_run_cat_motd(roots: Roots, seed: SeedImage, name: str, layers: list[str], *flags: str) -> None:
    """``lazypull --snapshotter=stargz run --rm NAME cat /srv/motd`` on a machine that has pulled
    nothing: the output is right, the big file's layer is barely fetched, no mount is left."""
    root = roots.new(f"lazy-{name.rsplit(':', 1)[1]}", config=LAZY_CONFIG)
    mark = seed.registry.log_mark()
    result = ok(run_lazypull(root, *flags, "run", "--rm", name, "cat", "/srv/motd"))
    assert result.stdout == MOTD.decode()
    served = blob_bytes_served(seed, mark, layers[2])
    assert served < BIG_SIZE // 4, f"a lazy run fetched {served} bytes of a layer it never read"
    assert mounts_under(root) == []


@pytest.fixture(scope="module")
def esgz(seed_image: SeedImage) -> Converted:
    """``lazypull image convert --estargz --oci example.com/foo example.com/foo:estargz`` + push."""
    return convert_and_push(seed_image, f"{seed_image.repo}/foo:estargz", "--estargz", "--oci")


# -- `lazypull --help`, `python -m lazypull --version` ------------------------------------------------

def _command_paths() -> Iterator[list[str]]:
    import click

    from lazypull.cli.main import cli as lazypull_cli

    def walk(group: click.Group, prefix: list[str]) -> Iterator[list[str]]:
        ctx = click.Context(group)
        for name in group.list_commands(ctx):          # the top level loads its commands on demand
            command = group.get_command(ctx, name)
            yield [*prefix, name]
            if isinstance(command, click.Group):
                yield from walk(command, [*prefix, name])

    yield from walk(lazypull_cli, [])


def test_help_for_every_command() -> None:
    from lazypull.cli.main import cli as lazypull_cli

    top = ok(run_lazypull(Path("/nonexistent"), "--help"))
    for command in ("run", "pull", "push", "images", "image"):
        assert re.search(rf"^\s+{command}\s", top.stdout, re.M), f"`lazypull --help` lacks {command}"
    for flag in ("--snapshotter", "--insecure-registry", "--root"):
        assert flag in top.stdout
    paths = list(_command_paths())
    assert ["image", "convert"] in paths and ["image", "ls"] in paths
    runner = CliRunner()

    def helptext(path: list[str]) -> str:
        result = runner.invoke(lazypull_cli, [*path, "--help"], prog_name="lazypull")
        assert result.exit_code == 0, f"lazypull {' '.join(path)} --help: {result.output}"
        assert result.output.startswith(f"Usage: lazypull {' '.join(path)} "), result.output
        return result.output

    texts = {" ".join(path): helptext(path) for path in paths}
    for flag in ("--estargz", "--oci", "--estargz-min-chunk-size", "--estargz-external-toc",
                 "--estargz-keep-diff-id", "--zstdchunked"):
        assert re.search(rf"^\s+{flag}\b", texts["image convert"], re.M), f"image convert --help lacks {flag}"
    for command in ("run", "pull", "push", "images", "image ls"):
        assert "--snapshotter" in texts[command] and "--insecure-registry" in texts[command], command
    assert "-i, --interactive" in texts["run"] and "-t, --tty" in texts["run"] and "--rm" in texts["run"]


def test_python_m_lazypull_version() -> None:
    from lazypull import __version__

    result = ok(subprocess.run([sys.executable, "-m", "lazypull", "--version"], capture_output=True,
                               text=True, cwd=REPO_ROOT))
    assert result.stdout == f"lazypull, version {__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)


# -- "Enable lazy-pulling for `nerdctl run`" -----------------------------------------------------------

def test_run_it_without_a_terminal_is_refused(roots: Roots, esgz: Converted) -> None:
    """`lazypull --snapshotter=stargz run -it --rm IMG` with stdin not a terminal: docker's and nerdctl's
    error, before anything is pulled or mounted; `-i` alone works off a terminal."""
    root = roots.new("no-tty")
    base = ["--snapshotter=stargz", "run"]
    result = run_lazypull(root, *base, "-it", "--rm", "--insecure-registry", esgz.name, stdin=b"true\n")
    assert result.returncode == 1
    assert result.stderr.startswith("lazypull: error: the input device is not a TTY"), result.stderr
    assert result.stdout == ""
    assert mounts_under(root) == [] and not (root / "images.json").exists()
    result = ok(run_lazypull(root, *base, "-i", "--rm", "--insecure-registry", esgz.name,
                             stdin=b"cat /srv/motd; echo done\n"))
    assert result.stdout == MOTD.decode() + "done\n"
    assert mounts_under(root) == []


@pytest.mark.parametrize("argv", [
    ["--snapshotter=stargz", "--insecure-registry", "run", "-it", "--rm"],
    ["run", "-it", "--rm", "--snapshotter=stargz", "--insecure-registry"],
], ids=["global-flags-first", "global-flags-after"])
def test_run_it_on_a_terminal(roots: Roots, esgz: Converted, argv: list[str]) -> None:
    """`lazypull --snapshotter=stargz run -it --rm IMG` on a terminal: an interactive shell on a tty."""
    root = roots.new("tty")
    code, output = run_on_terminal([str(lazypull_binary()), "--root", str(root), *argv, esgz.name],
                                   b"cat /srv/motd; echo tty=$(tty); exit 7\n", until=b"/ # ")
    assert code == 7, output
    assert MOTD.replace(b"\n", b"\r\n") in output, output
    assert re.search(rb"tty=/dev/pts/\d+\r\n", output), output
    assert mounts_under(root) == [], "run --rm leaves no mounts"


@pytest.mark.parametrize("snapshotter", ["overlayfs", "stargz"])
def test_benchmark_commands_print_hi(roots: Roots, seed_image: SeedImage, esgz: Converted,
                                     snapshotter: str) -> None:
    """Benchmark: `time nerdctl --snapshotter=overlayfs run -it --rm ...-org python3 -c 'print("hi")'` and
    `--snapshotter=stargz run -it --rm ...-esgz`: both print hi; only overlayfs fetches whole layers."""
    if snapshotter == "overlayfs":
        image, big_layer = seed_image.ref, seed_image.layer_digests[2]
    else:
        image, big_layer = esgz.name, esgz.layer_digests[2]
    root = roots.new(f"bench-{snapshotter}", config=LAZY_CONFIG)
    mark = seed_image.registry.log_mark()
    argv = [str(lazypull_binary()), "--root", str(root), f"--snapshotter={snapshotter}", "run", "-it", "--rm",
            "--insecure-registry", image, "sh", "-c", "echo hi"]
    code, output = run_on_terminal(argv, b"", until=b"")
    assert code == 0, output
    assert output.endswith(b"hi\r\n"), output
    # the pull's progress fits the 80-column terminal with whole status words
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode(errors="replace"))
    lines = [line for chunk in screen.split("\n") for line in chunk.split("\r")]
    assert max(len(line) for line in lines) <= 80, lines
    assert any(re.match(r"\S+\s+resolved ", line) for line in lines), screen
    if snapshotter == "overlayfs":
        done = {m.group(1) for line in lines if (m := re.match(r"(layer-sha256:\S+)\s+done ", line))}
        assert len(done) == 3, screen
    served = blob_bytes_served(seed_image, mark, big_layer)
    if snapshotter == "overlayfs":
        assert served >= BIG_SIZE, f"a full pull fetches the whole layer ({served} bytes)"
        assert not (root / "run" / "lazypull.sock").exists(), "overlayfs needs no mount server"
        # off a terminal, the output is exactly the program's
        result = ok(run_lazypull(root, "--snapshotter=overlayfs", "run", "--rm", image, "echo", "hi"))
        assert result.stdout == "hi\n"
    else:
        assert served < BIG_SIZE // 4, f"a lazy run fetched {served} bytes of a layer it never read"
    assert mounts_under(root) == []


def test_stargz_pull_of_a_legacy_image_unpacks_it(roots: Roots, seed_image: SeedImage) -> None:
    """`lazypull pull --snapshotter=stargz` of an image that is not eStargz: nothing can be served
    lazily, so the layers are fetched and unpacked by the pull (as containerd unpacks them when
    stargz-snapshotter declines), and a later run fetches nothing."""
    root = roots.new("legacy-pull")
    pull = ok(run_lazypull(root, "pull", "--snapshotter=stargz", "--insecure-registry", seed_image.ref))
    assert digest_out(pull) == seed_image.root_digest
    assert layer_mounts(root) == {}
    for layer, tar in zip(seed_image.layer_digests, seed_image.tars, strict=True):
        assert_tree_is_tar(root / "snapshots" / layer[7:] / "fs", tar)
    row = image_rows(ok(cli(root, "images")).stdout)[f"{seed_image.repo}/foo:latest"]
    assert row["SIZE"] == human_size(sum(len(t) for t in seed_image.tars))
    mark = seed_image.registry.log_mark()
    result = ok(run_lazypull(root, "run", "--rm", "--pull=never", seed_image.ref, "cat", "/srv/motd"))
    assert result.stdout == MOTD.decode()
    assert [e for e in seed_image.registry.access_log(mark) if "/blobs/" in e.path] == []


# -- "Building stargz images using `nerdctl build`" ----------------------------------------------------

def test_convert_estargz_oci_and_push(seed_image: SeedImage, esgz: Converted) -> None:
    """`nerdctl image convert --estargz --oci example.com/foo example.com/foo:estargz` and
    `nerdctl push example.com/foo:estargz`."""
    assert esgz.convert.stderr == ""
    assert digest_out(esgz.push) == esgz.digest
    source = inspect(seed_image.build_root, seed_image.ref)
    assert source["Target"]["mediaType"] == DOCKER_MANIFEST_LIST
    assert manifest_from_registry(seed_image.ref)[2]["mediaType"] == DOCKER_MANIFEST
    assert {layer["mediaType"] for layer in source["Layers"]} == {DOCKER_GZIP_LAYER}
    converted = inspect(seed_image.build_root, esgz.name)
    assert converted["Target"]["mediaType"] == OCI_INDEX and converted["Id"] == esgz.digest
    # as nerdctl without --all-platforms: the index keeps this machine's platform only
    (entry,) = index_from_registry(esgz.name)["manifests"]
    assert (entry["mediaType"], entry["platform"]) == (OCI_MANIFEST, {"architecture": "amd64", "os": "linux"})
    # what the registry now serves is the OCI eStargz image
    assert esgz.manifest["mediaType"] == OCI_MANIFEST
    assert len(esgz.manifest["layers"]) == len(seed_image.tars)
    for layer, tar in zip(esgz.manifest["layers"], seed_image.tars, strict=True):
        assert layer["mediaType"] == OCI_GZIP_LAYER
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", layer["annotations"][TOC_DIGEST])
        assert layer["annotations"]["io.containers.estargz.uncompressed-size"].isdigit()
        blob = blob_from_registry(esgz.name, layer["digest"])
        reader = open_layer(BytesSource(blob), toc_digest=layer["annotations"][TOC_DIGEST])
        assert reader.footer_kind == "estargz"
        # still a gzip'd tar of the same files (plus the TOC and the landmark)
        assert tar_names(gzip.decompress(blob)) >= tar_names(tar)
    middle = open_layer(BytesSource(blob_from_registry(esgz.name, esgz.layer_digests[1])))
    entry = middle.lookup("srv/motd")
    assert entry is not None and middle.read_file(entry) == MOTD


def test_convert_of_a_registry_image(roots: Roots, seed_image: SeedImage, esgz: Converted) -> None:
    """`image convert --estargz --oci SRC DST` where SRC was never pulled here: it is fetched first
    (global flags after the nested subcommand); the result is the same image as from a local SRC."""
    root = roots.new("convert-remote")
    result = ok(cli(root, "image", "convert", "--estargz", "--oci", "--insecure-registry", seed_image.ref,
                    f"{seed_image.repo}/foo:estargz"))
    assert digest_out(result) == esgz.digest
    rows = image_rows(ok(cli(root, "images")).stdout)
    assert sorted(rows) == [f"{seed_image.repo}/foo:estargz", f"{seed_image.repo}/foo:latest"]
    assert rows[f"{seed_image.repo}/foo:latest"]["IMAGE ID"] == seed_image.root_digest[7:19]


@pytest.mark.parametrize("flag", ["--estargz", "--zstdchunked"])
def test_convert_without_oci_warns(seed_image: SeedImage, flag: str) -> None:
    """NOTE: `--estargz` should be specified in conjunction with `--oci` (nerdctl warns, and converts)."""
    name = f"{seed_image.repo}/foo:no-oci{flag.lstrip('-')}"
    result = ok(cli(seed_image.build_root, "image", "convert", flag, seed_image.ref, name))
    assert re.fullmatch(rf"WARN\[\d{{4}}\] option {flag} should be used in conjunction with --oci\n",
                        result.stderr), result.stderr
    converted = inspect(seed_image.build_root, name)
    assert converted["Id"] == digest_out(result)
    assert all(TOC_DIGEST in layer["annotations"] for layer in converted["Layers"])
    assert converted["Target"]["mediaType"] == DOCKER_MANIFEST_LIST, "without --oci the Docker types stay"
    ok(cli(seed_image.build_root, "rmi", name))


# -- "Tips 1": `--estargz-min-chunk-size` ----------------------------------------------------------------

def test_min_chunk_size_convert_and_image_ls(seed_image: SeedImage, esgz: Converted) -> None:
    """`nerdctl image convert --oci --estargz --estargz-min-chunk-size=50000 SRC
    registry2:5000/ubuntu:22.04-chunk50000`, then `nerdctl image ls`."""
    name = f"{seed_image.host}/ubuntu:22.04-chunk50000"
    convert = ok(cli(seed_image.build_root, "image", "convert", "--oci", "--estargz",
                     "--estargz-min-chunk-size=50000", seed_image.ref, name))
    digest = digest_out(convert)
    listing = ok(cli(seed_image.build_root, "image", "ls")).stdout
    assert ok(cli(seed_image.build_root, "images")).stdout == listing
    rows = image_rows(listing)
    source = rows[f"{seed_image.repo}/foo:latest"]
    assert source["IMAGE ID"] == seed_image.root_digest.removeprefix("sha256:")[:12]
    assert source["PLATFORM"] == "linux/amd64"
    assert source["SIZE"] == human_size(sum(len(t) for t in seed_image.tars))      # unpacked
    assert source["BLOB SIZE"] == human_size(stored_manifest(seed_image.build_root, seed_image.ref)[1])
    chunked = rows[f"{seed_image.host}/ubuntu:22.04-chunk50000"]
    assert chunked["IMAGE ID"] == digest.removeprefix("sha256:")[:12]
    assert chunked["PLATFORM"] == "linux/amd64"
    assert chunked["SIZE"] == "0.0 B", "converted, never unpacked (as in the seed)"
    manifest, blob_size = stored_manifest(seed_image.build_root, name)
    assert chunked["BLOB SIZE"] == human_size(blob_size)
    # small files share gzip streams; a normal eStargz has one stream per file
    store_blobs = seed_image.build_root / "content" / "blobs" / "sha256"
    chunks, streams = shared_streams((store_blobs / manifest["layers"][0]["digest"][7:]).read_bytes())
    assert streams < chunks, "no two files share a gzip stream"
    chunks, streams = shared_streams(blob_from_registry(esgz.name, esgz.layer_digests[0]))
    assert streams == chunks
    assert manifest["layers"][0]["size"] < esgz.manifest["layers"][0]["size"]
    # "`--estargz-min-chunk-size=0` produces normal eStargz"
    zero = ok(cli(seed_image.build_root, "image", "convert", "--oci", "--estargz",
                  "--estargz-min-chunk-size=0", seed_image.ref, f"{seed_image.repo}/foo:chunk0"))
    assert digest_out(zero) == esgz.digest


def test_min_chunk_size_push_and_lazy_pull(roots: Roots, seed_image: SeedImage) -> None:
    """`nerdctl push --insecure-registry registry2:5000/ubuntu:22.04-chunk50000`, then
    `nerdctl pull --snapshotter=stargz --insecure-registry ...` and `mount | grep "stargz on"`:
    one FUSE mount per lazy layer (ours greps as `mount | grep lazypull`)."""
    name = f"{seed_image.host}/ubuntu:22.04-chunk50000"
    if cli(seed_image.build_root, "image", "inspect", name).returncode != 0:     # run alone
        ok(cli(seed_image.build_root, "image", "convert", "--oci", "--estargz",
               "--estargz-min-chunk-size=50000", seed_image.ref, name))
    digest = inspect(seed_image.build_root, name)["Id"]
    assert digest_out(ok(cli(seed_image.build_root, "push", "--insecure-registry", name))) == digest
    layers = [d["digest"] for d in manifest_from_registry(name)[2]["layers"]]

    root = roots.new("chunk50000", config=LAZY_CONFIG)
    mark = seed_image.registry.log_mark()
    pull = ok(run_lazypull(root, "pull", "--snapshotter=stargz", "--insecure-registry", name))
    assert digest_out(pull) == digest
    assert sorted(layer_mounts(root)) == sorted(layers)
    # served lazily: a file reads through its layer's mount; the big file's bytes were never fetched
    assert (root / "snapshots" / layers[1][7:] / "fs" / "srv" / "motd").read_bytes() == MOTD
    assert (root / "snapshots" / layers[2][7:] / "fs" / "data" / "big.bin").stat().st_size == BIG_SIZE
    assert blob_bytes_served(seed_image, mark, layers[2]) < BIG_SIZE // 4
    for layer, tar in zip(layers, seed_image.tars, strict=True):
        assert_tree_is_tar(root / "snapshots" / layer[7:] / "fs", tar)
    pulled = image_rows(ok(cli(root, "images")).stdout)[name]
    unpacked = human_size(sum(len(t) for t in seed_image.tars))
    assert (pulled["IMAGE ID"], pulled["SIZE"]) == (digest[7:19], unpacked)


# -- "Tips 1": `--estargz-external-toc` ---------------------------------------------------------------

@pytest.fixture(scope="module")
def external_toc(seed_image: SeedImage) -> Converted:
    """`nerdctl image convert --oci --estargz --estargz-external-toc SRC registry2:5000/ubuntu:22.04-ex`
    and `nerdctl push --insecure-registry registry2:5000/ubuntu:22.04-ex` (+ `...-ex-esgztoc`)."""
    converted = convert_and_push(seed_image, f"{seed_image.host}/ubuntu:22.04-ex", "--oci", "--estargz",
                                 "--estargz-external-toc")
    toc_push = ok(cli(seed_image.build_root, "push", "--insecure-registry", f"{converted.name}-esgztoc"))
    digest_out(toc_push)
    return converted


def test_external_toc_convert_images_push(seed_image: SeedImage, external_toc: Converted) -> None:
    """The convert prints `INFO[...] Extra image(0) ...-ex-esgztoc` then the digest; `nerdctl images`
    lists the TOC image with platform "linux"; both images are pushed."""
    name = external_toc.name
    assert re.fullmatch(rf"INFO\[\d{{4}}\] Extra image\(0\) {re.escape(name)}-esgztoc\n",
                        external_toc.convert.stderr), external_toc.convert.stderr
    rows = image_rows(ok(cli(seed_image.build_root, "images")).stdout)
    main, toc = rows[name], rows[f"{name}-esgztoc"]
    assert (main["IMAGE ID"], main["PLATFORM"], main["SIZE"]) == (
        external_toc.digest[7:19], "linux/amd64", "0.0 B")
    toc_digest, _, toc_manifest = manifest_from_registry(f"{name}-esgztoc")
    assert (toc["IMAGE ID"], toc["PLATFORM"], toc["SIZE"]) == (toc_digest[7:19], "linux", "0.0 B")
    assert main["BLOB SIZE"] == human_size(stored_manifest(seed_image.build_root, name)[1])
    # the layers carry no TOC: alone they cannot be opened; their TOCs are in the TOC image
    for layer in external_toc.layer_digests:
        with pytest.raises(FormatError):
            open_layer(BytesSource(blob_from_registry(name, layer)))
    toc_blobs = [blob_from_registry(f"{name}-esgztoc", d["digest"]) for d in toc_manifest["layers"]]
    assert toc_blobs
    assert sum(len(b) for b in toc_blobs) < sum(d["size"] for d in external_toc.manifest["layers"])


def test_external_toc_lazy_pull_and_run(roots: Roots, seed_image: SeedImage, external_toc: Converted) -> None:
    """`nerdctl pull --insecure-registry --snapshotter=stargz registry2:5000/ubuntu:22.04-ex`: the TOC
    image on the same registry is found and used; then a container runs from the pulled image."""
    name = external_toc.name
    root = roots.new("external-toc", config=LAZY_CONFIG)
    mark = seed_image.registry.log_mark()
    pull = ok(run_lazypull(root, "pull", "--insecure-registry", "--snapshotter=stargz", name))
    assert digest_out(pull) == external_toc.digest
    assert sorted(layer_mounts(root)) == sorted(external_toc.layer_digests)
    toc_digest, _, toc_manifest = manifest_from_registry(f"{name}-esgztoc")
    toc_path = re.compile(rf"/ubuntu/manifests/(22\.04-ex-esgztoc|{toc_digest})$")
    assert any(e.method == "GET" and e.status == 200 and toc_path.search(e.path)
               for e in seed_image.registry.access_log(mark)), "the TOC image's manifest was not fetched"
    for toc_layer in toc_manifest["layers"]:
        assert blob_bytes_served(seed_image, mark, toc_layer["digest"]) >= toc_layer["size"]
    assert blob_bytes_served(seed_image, mark, external_toc.layer_digests[2]) < BIG_SIZE // 4
    result = ok(run_lazypull(root, "run", "--rm", name, "cat", "/srv/motd", "/etc/hello"))
    assert result.stdout == MOTD.decode() + "hi\n"
    assert blob_bytes_served(seed_image, mark, external_toc.layer_digests[2]) < BIG_SIZE // 4
    assert sorted(layer_mounts(root)) == sorted(external_toc.layer_digests), "the pull's mounts stay"
    for layer, tar in zip(external_toc.layer_digests, seed_image.tars, strict=True):
        assert_tree_is_tar(root / "snapshots" / layer[7:] / "fs", tar)


# -- "optional `--estargz-keep-diff-id` flag" -----------------------------------------------------------

def test_keep_diff_id(roots: Roots, seed_image: SeedImage) -> None:
    """`nerdctl image convert --oci --estargz --estargz-external-toc --estargz-keep-diff-id SRC
    ...-ex-keepdiff`, push both, `crane blob ...-ex-keepdiff@CONFIG | jq -r '.rootfs.diff_ids[]'` and
    the same for the source with the same digest; an eStargz-agnostic gunzip restores the original tar.

    The seed's source is an OCI image, so the config is not touched at all; ours is first made OCI
    with a plain `image convert --oci` (layers unchanged)."""
    oci = convert_and_push(seed_image, f"{seed_image.host}/ubuntu:22.04", "--oci")
    assert [d["digest"] for d in oci.manifest["layers"]] == seed_image.layer_digests
    assert {d["mediaType"] for d in oci.manifest["layers"]} == {OCI_GZIP_LAYER}
    name = f"{seed_image.host}/ubuntu:22.04-ex-keepdiff"
    converted = convert_and_push(seed_image, name, "--oci", "--estargz", "--estargz-external-toc",
                                 "--estargz-keep-diff-id", source=oci.name)
    assert re.search(rf"Extra image\(0\) {re.escape(name)}-esgztoc$", converted.convert.stderr, re.M)
    digest_out(ok(cli(seed_image.build_root, "push", "--insecure-registry", f"{name}-esgztoc")))
    # as in the seed, one config digest names the config in both repositories: nothing in it changed
    config_digest = converted.manifest["config"]["digest"]
    assert config_digest == oci.manifest["config"]["digest"]
    config = json.loads(blob_from_registry(name, config_digest))
    source_config = json.loads(blob_from_registry(oci.name, config_digest))
    assert config["rootfs"]["diff_ids"] == source_config["rootfs"]["diff_ids"] == seed_image.diff_ids
    assert inspect(seed_image.build_root, name)["RootFS"]["Layers"] == seed_image.diff_ids
    assert set(converted.layer_digests).isdisjoint(seed_image.layer_digests)
    for layer, tar in zip(converted.manifest["layers"], seed_image.tars, strict=True):
        assert TOC_DIGEST in layer["annotations"]
        assert gzip.decompress(blob_from_registry(name, layer["digest"])) == tar
    lazy_run_cat_motd(roots, seed_image, name, converted.layer_digests, "--snapshotter=stargz",
                      "--insecure-registry")


def test_keep_diff_id_needs_external_toc(seed_image: SeedImage) -> None:
    result = cli(seed_image.build_root, "image", "convert", "--oci", "--estargz", "--estargz-keep-diff-id",
                 seed_image.ref, f"{seed_image.repo}/foo:bad")
    assert result.returncode == 2
    assert "--estargz-keep-diff-id must be specified with --estargz-external-toc" in result.stderr
    assert f"{seed_image.repo}/foo:bad" not in ok(cli(seed_image.build_root, "images")).stdout


# -- "Tips 2: Using zstd instead of gzip (a.k.a. zstd:chunked)" ---------------------------------------

def test_zstdchunked_convert_push_lazy_run(roots: Roots, seed_image: SeedImage) -> None:
    """`nerdctl image convert --zstdchunked --oci example.com/foo example.com/foo:zstdchunked` and
    `nerdctl push example.com/foo:zstdchunked`; then a lazy run of it."""
    converted = convert_and_push(seed_image, f"{seed_image.repo}/foo:zstdchunked", "--zstdchunked", "--oci")
    assert converted.convert.stderr == ""
    assert converted.manifest["mediaType"] == OCI_MANIFEST
    for layer in converted.manifest["layers"]:
        assert layer["mediaType"] == OCI_ZSTD_LAYER
        reader = open_layer(BytesSource(blob_from_registry(converted.name, layer["digest"])))
        assert reader.compression == "zstd" and reader.footer_kind.startswith("zstd")
    lazy_run_cat_motd(roots, seed_image, converted.name, converted.layer_digests, "--insecure-registry",
                      "--snapshotter=stargz")


# -- a run of an image never pulled leaves nothing mounted after --rm -----------------------------------

def test_run_never_pulled_mounts_while_running_only(roots: Roots, esgz: Converted) -> None:
    """`lazypull --snapshotter=stargz run --rm` of an image this machine never pulled: the layers are
    mounted while the container runs, and nothing stays mounted after it exits."""
    root = roots.new("never-pulled", config=LAZY_CONFIG)
    argv = [str(lazypull_binary()), "--root", str(root), "--snapshotter=stargz", "run", "-i", "--rm",
            "--insecure-registry", esgz.name, "sh", "-c", "echo ready; read x; echo $x"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        first = proc.stdout.readline()
        if first != b"ready\n":
            pytest.fail(f"run printed {first!r}; stderr: {proc.communicate(timeout=30)[1]!r}")
        assert sorted(layer_mounts(root)) == sorted(esgz.layer_digests), "one FUSE mount per lazy layer"
        assert any(m.startswith(f"{root}/containers/") for m in mounts_under(root)), "no rootfs overlay"
        out, err = proc.communicate(b"bye\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == b"bye\n"
    assert lazypull_mount_lines(root) == [] and mounts_under(root) == []
    assert ok(run_lazypull(root, "ps", "-a")).stdout.splitlines()[1:] == []
    assert esgz.name in image_rows(ok(cli(root, "images")).stdout)
