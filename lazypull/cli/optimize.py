"""``lazypull image optimize``: convert an image with the files a run of it uses first (``ctr-remote
image optimize``).

The run: the temporary eStargz copy of SRC is mounted by the mount server with the layers' access
recorders on (``lazypull.fs.layer.access``), a container is started over it with runc (network
``none`` unless ``--net host``), and stopped when its command exits, when ``--wait-line`` appears in
its output, or after ``--period`` seconds. Its output goes to our stderr; stdout gets DST's digest.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import click

from lazypull.cli._image_progress import make_progress
from lazypull.cli._options import get_options, global_options
from lazypull.cli.image import _source_root, image_group, logrus, name_in_store, tag_in_layout
from lazypull.errors import LazypullError, MountError
from lazypull.image import Layout, Store, normalize_name
from lazypull.image.convert import ConvertOptions, LayerFormat
from lazypull.image.errors import ImageError
from lazypull.image.optimize import (
    RecordEntry,
    build_record,
    convert_with_record,
    final_options,
    is_temporary,
    make_temporary,
)
from lazypull.image.platform import host_platform, parse_platform
from lazypull.runtime import (
    ContainerOptions,
    ContainerRecord,
    Containers,
    Stdio,
    new_container_id,
    parse_env,
    parse_volume,
)

KILL_RETRY = 0.5     # seconds between kills of a container that outlived its period (it may be starting)
OWNER_LABEL = "lazypull.optimize.pid"   # on the temporary image and the container: the optimize process


def _alive(pid_text: str | None) -> bool:
    """Whether the process a label names still runs."""
    try:
        pid = int(pid_text or "")
        if pid <= 0:
            return False
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(root: Path, store: Store) -> list[str]:
    """Remove what an earlier ``image optimize`` killed mid-run left (its container, with its hold on
    the layer mounts, and its temporary image); the names removed. Live runs are left alone."""
    from lazypull.cli.run import remove_container

    removed: list[str] = []
    containers = Containers(root)
    for record in containers.records():
        owner = record.labels.get(OWNER_LABEL)
        if owner is not None and not _alive(owner):
            with contextlib.suppress(LazypullError):
                remove_container(root, containers, record, force=True)
                removed.append(record.name)
    for image in store.list_images():
        if is_temporary(image.name) and not _alive(image.labels.get(OWNER_LABEL)):
            blobs = sorted(store.referenced_blobs(image.target))
            with contextlib.suppress(LazypullError):
                store.remove(image.name)
                store.discard_unreferenced(blobs)
                removed.append(image.name)
    return removed


def parse_json_list(text: str, flag: str) -> tuple[str, ...]:
    """A JSON array of strings (``--args '["-c", "x"]'``); ``--entrypoint`` also takes a plain string."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: nested too deep
        if flag == "--entrypoint":
            return (text,)
        raise click.BadParameter(f"not JSON: {err}", param_hint=flag) from err
    if isinstance(value, str) and flag == "--entrypoint":
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise click.BadParameter("expected a JSON array of strings", param_hint=flag)
    return tuple(value)


class _Watch:
    """Ends a running container after ``period`` s or once ``wait_line`` shows in its output, and
    copies that output to our stderr."""

    def __init__(self, containers: Containers, container_id: str, period: float, wait_line: str | None):
        self.containers = containers
        self.container_id = container_id
        self.period = period
        self.wait_line = wait_line.encode() if wait_line else None
        self.stop = threading.Event()        # the container must end (period over, line seen)
        self.exited = threading.Event()      # it has ended
        self._wake = threading.Event()       # either of the above happened
        self.reason = ""
        read_fd, write_fd = os.pipe()
        self.output = os.fdopen(write_fd, "wb")
        self._reader = threading.Thread(target=self._copy, args=(read_fd,), daemon=True)
        self._killer = threading.Thread(target=self._kill_when_due, daemon=True)

    def __enter__(self) -> _Watch:
        self._reader.start()
        self._killer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.exited.set()
        self._wake.set()
        self.output.close()
        self._reader.join(timeout=5)
        self._killer.join(timeout=5)

    def _copy(self, fd: int) -> None:
        pending = b""
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while data := pipe.read(1 << 16):
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.buffer.write(data)
                    sys.stderr.buffer.flush()
                if self.wait_line is not None and not self.stop.is_set():
                    pending = (pending + data)[-(len(self.wait_line) + (1 << 16)):]
                    if self.wait_line in pending:
                        self.reason = "the awaited line appeared"
                        self.stop.set()
                        self._wake.set()

    def _kill_when_due(self) -> None:
        deadline = time.monotonic() + self.period
        while not self.exited.is_set():
            if not self.stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._wake.wait(remaining)
                    continue
                self.reason = f"the period of {self.period:g}s is over"
                self.stop.set()
            self.containers.runc.kill(self.container_id, "KILL")
            self.exited.wait(KILL_RETRY)


def run_workload(root: Path, store: Store, image: str, digests: list[str], options: ContainerOptions, *,
                 period: float, wait_line: str | None) -> dict[str, list[tuple[str, int]]]:
    """Run ``image`` with its layers' access recorders on; the accesses per layer digest."""
    from lazypull.fs import is_recording, read_access_log, request_recording, withdraw_request
    from lazypull.runtime.layers import lower_dirs
    from lazypull.snapshot import MountClient
    from lazypull.snapshot.paths import RunPaths

    paths = RunPaths(root)
    layer_dirs = {digest: paths.layer_dir(digest) for digest in digests}
    for layer_dir in layer_dirs.values():
        request_recording(layer_dir)
    containers = Containers(root)
    container_id = new_container_id()
    record: ContainerRecord | None = None
    with MountClient(root) as client:
        try:
            mounts = client.mount_image(image, holder=container_id, wait_prefetch=False)
            for layer_dir in layer_dirs.values():
                withdraw_request(layer_dir)
            stale = [m.digest for m in mounts if m.lazy and not is_recording(layer_dirs[m.digest])]
            if stale:
                names = {r.id: r.name for r in containers.records()}
                holders = {m.digest: m.holders for m in client.list_mounts()}
                who = sorted({names.get(h, h) for d in stale for h in holders.get(d, [])
                              if h != container_id})
                raise MountError(f"cannot record file accesses: layer(s) {', '.join(stale)} were mounted "
                                 f"before recording started (held by {', '.join(who) or 'nobody'}); remove "
                                 "those containers (lazypull rm -f NAME) or let them finish, then retry")
            resolved = store.resolve(image)
            # A layer repeated in the image is one mount; overlayfs refuses a lower dir twice (ELOOP).
            # Its topmost place is the one that counts (the lower copy is hidden by it entirely).
            lowers = list(dict.fromkeys(lower_dirs(root, store, resolved, mounts)))
            from lazypull.image.runconfig import run_config

            record = containers.create(image=image, image_config=run_config(resolved.config, image),
                                       lowers_top_first=lowers, options=options,
                                       name=f"optimize-{container_id[:12]}", snapshotter="stargz",
                                       container_id=container_id)
            with _Watch(containers, container_id, period, wait_line) as watch:
                stdio = Stdio(stdout=watch.output, stderr=watch.output)
                code = containers.run(record, tty=False, stdio=stdio)
            if watch.reason:
                logrus("INFO", f"stopped the workload: {watch.reason}")
            elif code != 0:
                logrus("WARN", f"the workload exited with status {code}; recording what it read anyway")
            return {digest: [(a.path, a.time_ns) for a in read_access_log(layer_dir)]
                    for digest, layer_dir in layer_dirs.items()}
        finally:
            for layer_dir in layer_dirs.values():
                withdraw_request(layer_dir)
            if record is not None:
                with contextlib.suppress(LazypullError):
                    containers.remove(record, force=True)
            with contextlib.suppress(MountError):
                client.release_image(image, holder=container_id)


def _summary(entries: Sequence[RecordEntry]) -> str:
    """``layer 0: 3, layer 1: 2`` (files recorded per layer)."""
    counts = Counter(e.layer_index for e in entries)
    return ", ".join(f"layer {i}: {counts[i]}" for i in sorted(counts)) or "none"


@click.command("optimize", context_settings={"allow_interspersed_args": True})
@click.option("--period", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds to run the workload before stopping it.")
@click.option("--wait-line", metavar="TEXT", help="Stop the workload once its output shows TEXT.")
@click.option("--entrypoint", help="Entrypoint of the workload (JSON array or one path).")
@click.option("--args", "args_", metavar="JSON", help="Arguments for the entrypoint (JSON array).")
@click.option("-e", "--env", multiple=True, metavar="KEY=VALUE", help="Environment variable of the workload.")
@click.option("--env-file", multiple=True, type=click.Path(dir_okay=False), help="Read KEY=VALUE lines.")
@click.option("-u", "--user", help="User of the workload: name|uid[:group|gid] (default: the image's).")
@click.option("-w", "--cwd", "--workdir", "workdir", help="Working directory (default: the image's).")
@click.option("-v", "--volume", "volumes", multiple=True, metavar="SRC:DST[:ro]",
              help="Bind-mount a host path.")
@click.option("--net", "network", type=click.Choice(["none", "host"]), default="none", show_default=True,
              help="Network of the workload (none: loopback only).")
@click.option("--net-host", is_flag=True, help="Same as --net host (ctr-remote's spelling).")
@click.option("--no-optimize", is_flag=True, help="Convert without running anything (no prioritised files).")
@click.option("--record-out", type=click.Path(dir_okay=False),
              help="Write the access record (ctr-remote's JSON lines) here.")
@click.option("--zstdchunked", is_flag=True, help="Make zstd:chunked layers (default: eStargz).")
@click.option("--estargz-compression-level", type=int, default=9, show_default=True,
              help="eStargz gzip level (0-9).")
@click.option("--estargz-chunk-size", type=int, default=0, help="eStargz chunk size (0: 4 MiB).")
@click.option("--estargz-min-chunk-size", type=int, default=0,
              help="Minimal bytes per gzip stream (0: one stream per chunk).")
@click.option("--estargz-external-toc", is_flag=True,
              help="Put the TOC in a separate DST-esgztoc image (experimental).")
@click.option("--zstdchunked-compression-level", type=int, default=3, show_default=True,
              help="zstd:chunked level.")
@click.option("--zstdchunked-chunk-size", type=int, default=0, help="zstd:chunked chunk size (0: 4 MiB).")
@click.option("--oci", is_flag=True, help="Convert Docker media types to OCI ones.")
@click.option("--platform", help="Platform to run and convert (default: this machine's).")
@click.argument("src")
@click.argument("dst")
@global_options
def optimize_command(period: float, wait_line: str | None, entrypoint: str | None, args_: str | None,
                     env: tuple[str, ...], env_file: tuple[str, ...], user: str | None, workdir: str | None,
                     volumes: tuple[str, ...], network: str, net_host: bool, no_optimize: bool,
                     record_out: str | None, zstdchunked: bool, estargz_compression_level: int,
                     estargz_chunk_size: int, estargz_min_chunk_size: int, estargz_external_toc: bool,
                     zstdchunked_compression_level: int, zstdchunked_chunk_size: int, oci: bool,
                     platform: str | None, src: str, dst: str) -> None:
    """Run SRC, record the files it reads, and convert it to DST with those files first.

    SRC is a stored image, an oci:DIR[:TAG] layout or a registry image (pulled first); DST a store
    name or an oci:DIR[:TAG] layout. DST's layers are eStargz (or zstd:chunked) with the files the
    run opened, in the order it opened them, before `.prefetch.landmark`: a lazy run fetches them
    in one request at mount.
    """
    opts = get_options()
    plat = parse_platform(platform) if platform else host_platform()
    layer_format: LayerFormat = "zstdchunked" if zstdchunked else "estargz"
    options = ConvertOptions(
        layer_format=layer_format, oci=oci, estargz_level=estargz_compression_level,
        estargz_chunk_size=estargz_chunk_size, estargz_min_chunk_size=estargz_min_chunk_size,
        estargz_external_toc=estargz_external_toc, zstd_level=zstdchunked_compression_level,
        zstd_chunk_size=zstdchunked_chunk_size, platforms=[plat])
    final_options(options, plat)         # bad conversion flags fail before anything runs
    container = ContainerOptions(
        entrypoint=parse_json_list(entrypoint, "--entrypoint") if entrypoint is not None else None,
        command=parse_json_list(args_, "--args") if args_ is not None else None,
        env=parse_env(env, env_file), user=user, workdir=workdir,
        volumes=tuple(parse_volume(v) for v in volumes), network="host" if net_host else network,
        labels={OWNER_LABEL: str(os.getpid())})
    if layer_format == "estargz" and not oci:
        logrus("WARN", "option --estargz should be used in conjunction with --oci")
    store = Store(opts.root)
    layout, tag = Layout.from_reference(dst) if dst.startswith("oci:") else (None, None)
    dst_name = None if layout is not None else normalize_name(dst)

    def write_record(entries: list[RecordEntry]) -> None:
        logrus("INFO", f"recorded {len(entries)} file(s) ({_summary(entries)})")
        if record_out:
            try:
                Path(record_out).write_text("".join(e.to_json() for e in entries))
            except OSError as err:
                raise ImageError(f"cannot write the record to {record_out}: {err.strerror}") from err

    with store.lease():
        src_root = _source_root(store, src, opts, [plat])
        entries: list[RecordEntry] = []
        if not no_optimize:
            # The progress display is closed while the workload runs: its output goes to our stderr.
            for name in clean_leftovers(opts.root, store):
                logrus("INFO", f"removed {name}, left by an interrupted optimize")
            with make_progress() as progress:
                temp = make_temporary(store, src_root, plat, progress, labels={OWNER_LABEL: str(os.getpid())})
            try:
                logrus("INFO", f"running the workload for up to {period:g}s")
                accesses = run_workload(opts.root, store, temp.name, temp.layer_digests, container,
                                        period=period, wait_line=wait_line)
            finally:
                temp.discard(store)
            entries = build_record(temp.image.digest(), temp.layer_digests, accesses)
        write_record(entries)
        with make_progress() as progress:
            converted = convert_with_record(src_root, layout if layout is not None else store, options, plat,
                                            entries, progress)
        if layout is not None:
            tag_in_layout(converted, layout, tag, dst)
        else:
            assert dst_name is not None
            name_in_store(converted, store, dst_name)
    click.echo(converted.root.digest)


image_group.add_command(optimize_command)

COMMANDS: list[click.Command] = []   # `optimize` lives in the `image` group (added above)

__all__ = ["COMMANDS", "clean_leftovers", "optimize_command", "parse_json_list", "run_workload"]
