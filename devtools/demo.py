"""``make demo``: time ``python3 -c 'print("hi")'`` in a container, full pull vs lazy pull.

What it does, printing each step:

1. builds a small Python image from Debian packages (``debootstrap --variant=minbase`` plus
   ``python3`` from the mirror apt is configured with), cached under ``$LAZYPULL_DEMO_CACHE``
   (default ``/var/cache/lazypull-demo``): minutes the first time, seconds afterwards;
2. keeps two variants of it in a cached build store: the legacy gzip image and its eStargz
   conversion (``lazypull convert --estargz --oci``);
3. starts Debian's ``docker-registry`` on 127.0.0.1 (free port, temporary storage) and pushes both;
4. runs, each from an empty store::

       lazypull --snapshotter=overlayfs run --rm REG/demo/python:org  python3 -c 'print("hi")'
       lazypull --snapshotter=stargz    run --rm REG/demo/python:esgz python3 -c 'print("hi")'

   and prints both times, the bytes the registry served for each and the ratios;
5. does the same over the benchmark's ``wan`` link (100 Mbit/s, 20 ms RTT): a registry in a network
   namespace behind a veth pair shaped with tc tbf (``bench.netshape``), reached through the delay
   proxy (``bench.delayproxy``), as ``make bench`` measures; an unshaped loopback flatters the full
   pull, which then costs little more than gunzip and disk writes. Skipped, saying why, where the
   namespace cannot be made (or ``bench/`` is not importable: run from the repository);
6. stops everything it started (mount servers, registries, namespace) and deletes the temporary stores.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.registry import RegistryError, RegistryServer
from lazypull.errors import LazypullError
from lazypull.selfexec import lazypull_argv

DEFAULT_CACHE = Path(os.environ.get("LAZYPULL_DEMO_CACHE", "/var/cache/lazypull-demo"))
SOURCES_DIR = Path("/etc/apt/sources.list.d")
SUITE = "bookworm"
PACKAGES = ("python3",)
ORG_NAME = "lazypull-demo.local/python:org"
ESGZ_NAME = "lazypull-demo.local/python:esgz"
COMMAND = ("python3", "-c", 'print("hi")')
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class DemoError(LazypullError):
    """A demo step failed; the message says which and why."""


def say(text: str) -> None:
    """One progress line (stdout, flushed: the demo is watched live)."""
    print(text, flush=True)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Print a step's title, then how long it took."""
    say(f"==> {title}")
    start = time.monotonic()
    yield
    say(f"    done in {time.monotonic() - start:.1f} s")


# -- 1. the root filesystem --------------------------------------------------------------------------

def apt_mirror(suite: str = SUITE, sources_dir: Path = SOURCES_DIR) -> str:
    """The URI apt uses for ``suite`` (deb822 ``.sources`` or one-line ``.list`` files)."""
    for path in sorted(sources_dir.glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if not line.startswith("#") and ":" in line:
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if ("deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split()
                    and fields.get("enabled", "yes").lower() != "no" and fields.get("uris")):
                return fields["uris"].split()[0]
    for path in sorted(sources_dir.glob("*.list")):
        for line in path.read_text().splitlines():
            parts = re.sub(r"\[[^]]*\]", "", line).split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite:
                return parts[1]
    raise DemoError(f"no apt source for Debian {suite} in {sources_dir}")


def build_rootfs_tar(cache: Path, packages: Sequence[str] = PACKAGES, suite: str = SUITE) -> Path:
    """A tar of a Debian ``suite`` minbase rootfs with ``packages`` (built once, then cached)."""
    key = hashlib.sha256("\n".join([suite, *sorted(packages)]).encode()).hexdigest()[:12]
    out = cache / f"rootfs-{suite}-{key}.tar"
    if out.exists():
        say(f"    cached: {out}")
        return out
    if shutil.which("debootstrap") is None:
        raise DemoError("debootstrap is not installed (scripts/install-deps.sh installs it)")
    mirror = apt_mirror(suite)
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache))
    target = work / "root"
    try:
        cmd = ["debootstrap", "--variant=minbase", f"--cache-dir={debs}", "--include=" + ",".join(packages),
               suite, str(target), mirror]
        say(f"    $ {shlex.join(cmd)}   (a few minutes the first time)")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            tail = ([*tail, line.rstrip()])[-30:]
            if line.startswith(("I: Retrieving", "I: Validating")):
                continue  # one line per package: too chatty
            say(f"    {line.rstrip()}")
        if proc.wait() != 0:
            raise DemoError("debootstrap failed:\n" + "\n".join(tail))
        for rel in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for child in (target / rel).glob("*"):
                if child.is_file() and child.name != "lock":
                    child.unlink()
        tmp_tar = work / "rootfs.tar"
        subprocess.run(["tar", "--create", "--file", str(tmp_tar), "--directory", str(target), "--format=pax",
                        "--numeric-owner", "--sort=name", "--xattrs", "--xattrs-include=*",
                        "--pax-option=delete=atime,delete=ctime", "."], check=True)
        os.replace(tmp_tar, out)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- 2. the images -----------------------------------------------------------------------------------

def _write_blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_layout(tar: Path, layout: Path, tag: str) -> None:
    """An OCI layout holding one image: the rootfs tar as one gzip layer, ``Cmd`` python3."""
    from isal import igzip

    raw = tar.read_bytes()
    layer = igzip.compress(raw, compresslevel=2)
    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_write_blob(layout, layer)}
    config = {
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Env": [DEFAULT_PATH, "LANG=C.UTF-8"], "Cmd": ["python3"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_write_blob(layout, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = {"mediaType": manifest["mediaType"], **_write_blob(layout, json.dumps(manifest).encode()),
                     "annotations": {"org.opencontainers.image.ref.name": tag}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


def build_images(cache: Path, tar: Path) -> Path:
    """The build store (cached) with the legacy image and its eStargz conversion."""
    from lazypull.image import ConvertOptions, Layout, Store, convert_image, copy_into_store

    root = cache / f"store-{tar.stem}"
    store = Store(root)
    if store.find_image(ORG_NAME) is None:
        say(f"    packing {tar.name} ({tar.stat().st_size >> 20} MiB) as a gzip layer")
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            write_layout(tar, Path(tmp), "org")
            layout = Layout(Path(tmp))
            copy_into_store(store, layout.root("org"), layout, ORG_NAME, source=None, platforms=None)
    if store.find_image(ESGZ_NAME) is None:
        say("    converting to eStargz (lazypull image convert --estargz --oci)")
        with store.lease():
            result = convert_image(store.root_image(ORG_NAME), store,
                                   ConvertOptions(layer_format="estargz", oci=True))
            store.put_image(ESGZ_NAME, result.root)
    for name in (ORG_NAME, ESGZ_NAME):
        resolved = store.resolve(name)
        size = sum(d.size for d in resolved.layers)
        say(f"    {name}: {len(resolved.layers)} layer(s), {size / (1 << 20):.1f} MiB compressed")
    return root


def push(build_root: Path, registry: RegistryServer) -> dict[str, str]:
    """Push both images to the registry; their references there."""
    from lazypull.image import Store, push_image
    from lazypull.registry import RegistryClient

    store = Store(build_root)
    refs = {}
    with RegistryClient(insecure=True) as client:
        for name, tag in ((ORG_NAME, "org"), (ESGZ_NAME, "esgz")):
            ref = f"{registry.host}/demo/python:{tag}"
            push_image(store, client, name, dest=ref)
            say(f"    pushed {ref}")
            refs[tag] = ref
    return refs


# -- 3. the runs -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunResult:
    """One timed ``lazypull run``."""

    mode: str
    seconds: float
    fetched: int
    output: str


def timed_run(root: Path, snapshotter: str, ref: str, registry: RegistryServer) -> RunResult:
    """``lazypull --snapshotter=S run --rm REF python3 -c 'print("hi")'`` from the empty store ``root``."""
    argv = ["lazypull", f"--snapshotter={snapshotter}", "--insecure-registry", "run", "--rm", ref, *COMMAND]
    say(f"    $ time {shlex.join(argv)}")
    mark = registry.log_mark()
    env = dict(os.environ, LAZYPULL_ROOT=str(root))
    start = time.monotonic()
    proc = subprocess.run(lazypull_argv(*argv[1:]), env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    seconds = time.monotonic() - start
    if proc.returncode != 0 or proc.stdout != "hi\n":
        raise DemoError(f"{snapshotter} run failed (exit {proc.returncode}): stdout {proc.stdout!r}, "
                        f"stderr: {proc.stderr.strip()[-2000:]}")
    fetched = registry.blob_bytes_served(mark)
    say(f"    {proc.stdout.strip()}")
    say(f"    real {seconds:.2f} s, {fetched / (1 << 20):.1f} MiB fetched from the registry")
    return RunResult(snapshotter, seconds, fetched, proc.stdout)


def stop_mount_server(root: Path) -> None:
    """Stop the mount server of ``root`` if one runs (it unmounts what it serves)."""
    from lazypull.snapshot import MountClient

    MountClient(root, autostart=False).shutdown()


def leftover_mounts(prefix: Path) -> list[str]:
    """Mountpoints under ``prefix`` (there must be none after ``run --rm``)."""
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(prefix))]


@dataclass(frozen=True)
class LinkResult:
    """The two starts over one link, and what the link was."""

    link: str
    full: RunResult
    lazy: RunResult


LOOPBACK = "loopback: registry on 127.0.0.1, no bandwidth limit, no latency"


def report(results: Sequence[LinkResult]) -> None:
    """The comparison table: one block per link, saying what the link was."""
    for result in results:
        say("")
        say(f"link: {result.link}")
        say(f"    {'':28}{'time':>10}{'fetched':>14}")
        for label, run in (("overlayfs (full pull)", result.full), ("stargz (lazy pull)", result.lazy)):
            say(f"    {label:28}{run.seconds:>8.2f} s{run.fetched / (1 << 20):>10.1f} MiB")
        speedup = result.full.seconds / result.lazy.seconds if result.lazy.seconds else float("inf")
        fewer = result.full.fetched / result.lazy.fetched if result.lazy.fetched else float("inf")
        say(f"    lazy pulling: {speedup:.1f}x faster to the first output, {fewer:.1f}x fewer bytes fetched")


def both_runs(work: Path, refs: dict[str, str], registry: RegistryServer, label: str) -> tuple[RunResult,
                                                                                               RunResult]:
    """The full start, then the lazy one, each from an empty store under ``work``."""
    with step(f"full pull ({label}): --snapshotter=overlayfs, empty store"):
        full = timed_run(work / "full", "overlayfs", refs["org"], registry)
    lazy_root = work / "lazy"
    try:
        with step(f"lazy pull ({label}): --snapshotter=stargz, empty store"):
            lazy = timed_run(lazy_root, "stargz", refs["esgz"], registry)
    finally:
        stop_mount_server(lazy_root)
    return full, lazy


class LinkUnavailable(DemoError):
    """The shaped link cannot be set up here (the demo goes on without it)."""


def shaped_runs(build_root: Path, work: Path, profile_name: str = "wan") -> LinkResult:
    """Both starts over the benchmark's shaped link ``profile_name``: the registry in a network
    namespace behind a tbf-shaped veth pair, reached through the delay proxy (what bench/run.py does)."""
    try:
        from bench.delayproxy import DelayProxy
        from bench.netshape import PROFILES, NetNamespace, NetShapeError
    except ImportError as err:
        raise LinkUnavailable(f"bench/ is not importable ({err}): run the demo from the repository "
                              "(make demo)") from err
    profile = PROFILES[profile_name]
    link = (f"{profile.name}: {profile.rate_mbit:g} Mbit/s each way (tc tbf on a veth pair into a network "
            f"namespace), {profile.rtt * 1000:g} ms round trip (delay proxy), as make bench")
    with contextlib.ExitStack() as stack:
        ns = NetNamespace()
        stack.callback(ns.close)
        try:
            ns.create()
        except NetShapeError as err:
            raise LinkUnavailable(f"no network namespace here: {err}") from err
        registry = stack.enter_context(RegistryServer(listen_host=ns.ns_ip, exec_prefix=ns.exec_prefix()))
        with step(f"registry in network namespace {ns.name} on {registry.host}"):
            pushed = push(build_root, registry)      # before the shaping: setting up is not measured
        proxy = DelayProxy(ns.ns_ip, registry.port)
        stack.callback(proxy.stop)
        proxy.start()
        try:
            ns.shape(profile.rate_mbit)
        except NetShapeError as err:
            raise LinkUnavailable(f"cannot shape the link: {err}") from err
        proxy.set_rtt(profile.rtt)
        # through the proxy: 127.0.0.1 (plain HTTP as for any loopback registry), same repositories
        refs = {tag: f"127.0.0.1:{proxy.port}/{ref.split('/', 1)[1]}" for tag, ref in pushed.items()}
        say(f"==> link {link}")
        full, lazy = both_runs(work, refs, registry, profile.name)
    return LinkResult(link, full, lazy)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help=f"where the rootfs and the built images are kept (default {DEFAULT_CACHE})")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("the demo mounts filesystems and runs containers: run it as root")
        return 2
    cache: Path = args.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with step(f"Debian {SUITE} minbase + {', '.join(PACKAGES)} root filesystem"):
            tar = build_rootfs_tar(cache)
        with step("images: legacy gzip and eStargz"):
            build_root = build_images(cache, tar)
        work = Path(tempfile.mkdtemp(prefix="lazypull-demo-", dir="/var/tmp"))
        try:
            results = []
            with RegistryServer() as registry:
                with step(f"local registry on {registry.host}"):
                    refs = push(build_root, registry)
                full, lazy = both_runs(work / "loopback", refs, registry, "loopback")
                results.append(LinkResult(LOOPBACK, full, lazy))
            try:
                results.append(shaped_runs(build_root, work / "wan"))
            except LinkUnavailable as err:
                say(f"    shaped link skipped: {err}")
            left = leftover_mounts(work)
            if left:
                raise DemoError(f"mounts left behind: {left}")
            report(results)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except (LazypullError, RegistryError, subprocess.CalledProcessError) as err:
        say(f"demo failed: {err}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
