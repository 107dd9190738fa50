"""Image commands, as nerdctl spells them: ``image convert|ls|inspect|rm|tag|push|pull|prune`` and the
top-level aliases ``images``, ``pull``, ``push``, ``rmi``, ``tag``.

Output is nerdctl's: ``images`` is a table padded like Go's tabwriter (4 spaces between columns),
sizes in binary units with one decimal ("83.4 MiB"), times as "14 seconds ago"; ``convert`` prints
``INFO[0005] Extra image(0) NAME-esgztoc`` on stderr for the TOC image, then the new digest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from lazypull.cli._image_progress import make_progress
from lazypull.cli._options import GlobalOptions, get_options, global_options
from lazypull.cli.pull import pull_command
from lazypull.errors import LazypullError
from lazypull.image import Layout, Store, complete_image, normalize_name, pull_image
from lazypull.image import mediatypes as mt
from lazypull.image.convert import ConvertOptions, ConvertResult, LayerFormat, convert_image
from lazypull.image.errors import ImageError
from lazypull.image.model import Root
from lazypull.image.platform import host_platform, parse_platform
from lazypull.image.push import push_image
from lazypull.image.record import read_record
from lazypull.image.summary import ImageSummary, split_name, summarize
from lazypull.registry import Platform, RegistryClient, default_auth, parse_reference

_START = time.monotonic()
_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"]


# ---- formatting (nerdctl / containerd / docker-units behaviour) --------------------------------------

def human_size(size: float) -> str:
    """containerd's progress.Bytes: binary units, one decimal ("0.0 B", "151.3 KiB", "83.4 MiB")."""
    i = 0
    while size >= 1024 and i < len(_UNITS) - 1:
        size /= 1024
        i += 1
    return f"{size:.1f} {_UNITS[i]}"


def human_duration(seconds: float) -> str:
    """docker/go-units HumanDuration ("Less than a second", "1 second", "14 seconds", "About an hour")."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = math.floor(seconds / 3600 + 0.5)  # Go: int(math.Round(d.Hours()))
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def since(created: dt.datetime, now: dt.datetime | None = None) -> str:
    """"14 seconds ago"."""
    now = now or dt.datetime.now(dt.UTC)
    return human_duration(max(0.0, (now - created).total_seconds())) + " ago"


def tabulate(rows: Sequence[Sequence[str]], padding: int = 4) -> str:
    """Go's tabwriter(minwidth 4, padding 4): every column but the last padded to its widest cell."""
    if not rows:
        return ""
    widths = [max(max(len(r[i]) for r in rows) + padding, 4) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + row[-1])
    return "\n".join(lines) + "\n"


def logrus(level: str, message: str) -> None:
    """A logrus-style line on stderr, as nerdctl prints them (``INFO[0005] ...``)."""
    click.echo(f"{level}[{int(time.monotonic() - _START):04d}] {message}", err=True)


# ---- helpers ------------------------------------------------------------------------------------------

def _store(opts: GlobalOptions) -> Store:
    return Store(opts.root)


def _client(opts: GlobalOptions, insecure: bool = False) -> RegistryClient:
    return RegistryClient(insecure=opts.insecure_registries or insecure, auth=default_auth())


def _platforms(platform: tuple[str, ...], all_platforms: bool) -> list[Platform] | None:
    if all_platforms and platform:
        raise click.UsageError("--platform and --all-platforms are mutually exclusive")
    if all_platforms:
        return None
    return [parse_platform(p) for p in platform] if platform else [host_platform()]


def _familiar(name: str) -> str:
    return parse_reference(name).familiar()


# ---- images / image ls --------------------------------------------------------------------------------

def _list(quiet: bool, no_trunc: bool, names: tuple[str, ...]) -> None:
    store = _store(get_options())
    records = store.list_images()
    if names:
        wanted = {normalize_name(n) for n in names}
        records = [r for r in records if r.name in wanted]
    if quiet:
        for r in records:
            click.echo(r.target.digest if no_trunc else r.target.digest.removeprefix("sha256:")[:12])
        return
    cached = _chunk_cache_usage(store.root)
    summaries: list[ImageSummary] = [summarize(store, r, cached) for r in records]
    # nerdctl's columns, then LOCAL: what the layers hold here (SIZE counts a lazy layer whole)
    rows = [["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "PLATFORM", "SIZE", "BLOB SIZE", "LOCAL"]]
    for s in summaries:
        rows.append([s.repository, s.tag, s.digest if no_trunc else s.digest.removeprefix("sha256:")[:12],
                     since(s.created), s.platform, human_size(s.size), human_size(s.blob_size),
                     human_size(s.local_size)])
    click.echo(tabulate(rows), nl=False)


def _chunk_cache_usage(root: Path) -> Callable[[str], int]:
    """Bytes a layer (by digest) holds in the mount server's chunk cache (where config.toml puts it)."""
    from lazypull.fs import FsConfig, load_config, stored_bytes

    try:
        config = load_config(root)
    except LazypullError:
        config = FsConfig()     # a broken config.toml: the mount server's own error says so
    directory = config.chunk_dir(root)

    def usage(digest: str) -> int:
        try:
            return stored_bytes(directory, digest)
        except LazypullError:           # not a sha256 digest: nothing of it can be cached
            return 0
    return usage


@click.command("images")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option("--no-trunc", is_flag=True, help="Show full image IDs.")
@click.argument("names", nargs=-1)
@global_options
def images_command(quiet: bool, no_trunc: bool, names: tuple[str, ...]) -> None:
    """List images in the local store."""
    _list(quiet, no_trunc, names)


# ---- inspect ------------------------------------------------------------------------------------------

@click.command("inspect")
@click.option("--platform", help="Platform of an index to describe (default: this machine's).")
@click.argument("names", nargs=-1, required=True)
@global_options
def inspect_command(platform: str | None, names: tuple[str, ...]) -> None:
    """Show images as JSON (one object per name, in a list)."""
    store = _store(get_options())
    out = []
    for name in names:
        record = store.get_image(name)
        resolved = store.resolve(record.name, platform)
        config = resolved.config
        out.append({
            "Id": record.target.digest,
            "RepoTags": [_familiar(r.name) for r in store.list_images()
                         if r.target.digest == record.target.digest],
            "RepoDigests": [f"{split_name(record.name)[0]}@{record.target.digest}"],
            "Name": record.name,
            "Target": record.target.to_json(),
            "Created": record.created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "ImageCreated": config.get("created"),
            "Source": record.source,
            "Platform": resolved.platform,
            "Architecture": config.get("architecture"),
            "Os": config.get("os"),
            "Manifest": resolved.manifest_digest,
            "ConfigDigest": resolved.config_digest,
            "Config": config.get("config") or {},
            "RootFS": {"Type": (config.get("rootfs") or {}).get("type", "layers"),
                       "Layers": resolved.diff_ids},
            "Layers": [d.to_json() for d in resolved.layers],
            "Size": sum(d.size for d in resolved.layers),
        })
    click.echo(json.dumps(out, indent=4))


# ---- rmi / tag ----------------------------------------------------------------------------------------

def _users(root: Path, name: str) -> list[str]:
    """Ids of the containers created from the image ``name``."""
    from lazypull.runtime import Containers

    if not (root / "containers").is_dir():
        return []
    return [c.id for c in Containers(root).records() if c.image == name]


def _remove(names: tuple[str, ...], force: bool) -> None:
    opts = get_options()
    store = _store(opts)
    failed = []
    for name in names:
        try:
            found = store.get_image(name)
            users = _users(opts.root, found.name)
            if users and not force:
                raise ImageError(f"image {found.name} is in use by container {users[0][:12]} "
                                 "(remove the container, or use -f)")
            record = store.remove(found.name)
        except ImageError as err:
            if not force:  # -f: names not in the store are not an error
                failed.append(str(err))
            continue
        click.echo(f"Untagged: {record.name}@{record.target.digest}")
        _release_mounts(get_options().root, record.name)
    for digest in store.prune(also=_free_layers(opts.root)):
        click.echo(f"Deleted: {digest}")
    if failed:
        raise ImageError("; ".join(failed))


def _free_layers(root: Path) -> Callable[[set[str]], object]:
    """For ``Store.prune``: free the per-layer state and cached chunks of the layers no image, container,
    hold or mount uses any more (``snapshot.layerstate``)."""
    def free(live: set[str]) -> object:
        from lazypull.fs import load_config
        from lazypull.runtime import Containers
        from lazypull.snapshot.layerstate import layers_in_use, prune_layer_state

        lowers = ([p for c in Containers(root).records() for p in c.lowers]
                  if (root / "containers").is_dir() else [])
        return prune_layer_state(root, live | layers_in_use(root, lowers), load_config(root))
    return free


def _release_mounts(root: Path, name: str) -> None:
    """Drop the hold ``pull`` took on a lazily pulled image's layer mounts (if a mount server runs)."""
    from lazypull.snapshot import MountClient

    if not (root / "run" / "lazypull.sock").exists():
        return
    with contextlib.suppress(LazypullError, OSError), MountClient(root, autostart=False) as mounts:
        mounts.release_image(name)


@click.command("rmi")
@click.option("-f", "--force", is_flag=True, help="Ignore names that are not in the store.")
@click.argument("names", nargs=-1, required=True)
@global_options
def rmi_command(force: bool, names: tuple[str, ...]) -> None:
    """Remove images (their blobs go when no image needs them)."""
    _remove(names, force)


@click.command("tag")
@click.argument("source")
@click.argument("target")
@global_options
def tag_command(source: str, target: str) -> None:
    """Give the image SOURCE another name TARGET."""
    _store(get_options()).tag(source, target)


@click.command("prune")
@click.option("--learned", is_flag=True,
              help="Also forget what the node learned of every layer's first reads (the fetch-ahead of "
                   "the next cold start; kept by rmi and prune otherwise).")
@global_options
def prune_command(learned: bool) -> None:
    """Delete blobs no named image uses, and the layer state and cached chunks no image uses."""
    opts = get_options()
    for digest in _store(opts).prune(also=_free_layers(opts.root)):
        click.echo(f"Deleted: {digest}")
    if learned:
        from lazypull.fs.layer.learned import forget
        from lazypull.layerdir import learned_dir

        click.echo(f"Forgot the learned reads of {forget(learned_dir(opts.root))} layer(s)")


# ---- pull / push --------------------------------------------------------------------------------------

def _push(ref: str, platform: tuple[str, ...], all_platforms: bool, quiet: bool) -> None:
    opts = get_options()
    store = _store(opts)
    if len(platform) > 1:
        raise click.UsageError("push takes one --platform (or --all-platforms)")
    if platform and all_platforms:
        raise click.UsageError("--platform and --all-platforms are mutually exclusive")
    with _client(opts) as client, make_progress(quiet=quiet) as progress:
        result = push_image(store, client, ref, platform=parse_platform(platform[0]) if platform else None,
                            progress=progress)
    click.echo(result.digest)
    if result.toc_image is not None:
        logrus("INFO", f"pushed TOC image {_familiar(str(result.toc_image.ref))} ({result.toc_image.digest})")


@click.command("push")
@click.option("--platform", multiple=True, help="Push only this platform's manifest of an index.")
@click.option("--all-platforms", is_flag=True, help="Push every platform (the default for an index).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.argument("ref")
@global_options
def push_command(ref: str, platform: tuple[str, ...], all_platforms: bool, quiet: bool) -> None:
    """Push an image from the store to its registry (and its -esgztoc TOC image, if any)."""
    _push(ref, platform, all_platforms, quiet)


# ---- convert ------------------------------------------------------------------------------------------

def _source_root(store: Store, src: str, opts: GlobalOptions, platforms: list[Platform] | None) -> Root:
    """SRC as an image: an ``oci:`` layout, a stored image, or else a registry image pulled first.

    A stored image whose blobs are not all local (pulled lazily, or built on lazily mounted base
    layers) is completed first: the missing blobs by digest from its source repository.
    """
    if src.startswith("oci:"):
        layout, tag = Layout.from_reference(src)
        return layout.root(tag)
    record = store.find_image(src)
    with contextlib.ExitStack() as clients, make_progress() as progress:
        if record is None:
            client = clients.enter_context(_client(opts))
            record = pull_image(store, client, src, platforms=platforms, all_platforms=platforms is None,
                                progress=progress)
        else:
            record = complete_image(store, record.name, lambda: clients.enter_context(_client(opts)),
                                    platforms=platforms, progress=progress)
    return store.open(record.target)


@click.command("convert")
@click.option("--estargz", is_flag=True, help="Convert layers to eStargz (use with --oci).")
@click.option("--estargz-record-in", type=click.Path(dir_okay=False),
              help="Prioritised files from `ctr-remote optimize --record-out` (experimental).")
@click.option("--estargz-compression-level", type=int, default=9, show_default=True,
              help="eStargz gzip level (0-9).")
@click.option("--estargz-chunk-size", type=int, default=0, help="eStargz chunk size (0: 4 MiB).")
@click.option("--estargz-min-chunk-size", type=int, default=0,
              help="Minimal bytes per gzip stream (0: one stream per chunk).")
@click.option("--estargz-external-toc", is_flag=True,
              help="Put the TOC in a separate DST-esgztoc image (experimental).")
@click.option("--estargz-keep-diff-id", is_flag=True,
              help="Keep the layers' DiffIDs (needs --estargz-external-toc; experimental).")
@click.option("--zstdchunked", is_flag=True, help="Convert layers to zstd:chunked (use with --oci).")
@click.option("--zstdchunked-compression-level", type=int, default=3, show_default=True,
              help="zstd:chunked level.")
@click.option("--zstdchunked-chunk-size", type=int, default=0, help="zstd:chunked chunk size (0: 4 MiB).")
@click.option("--zstdchunked-record-in", type=click.Path(dir_okay=False),
              help="Prioritised files from `ctr-remote optimize --record-out` (experimental).")
@click.option("--uncompress", is_flag=True, help="Decompress layers.")
@click.option("--gzip", "gzip_", is_flag=True, help="(Re)compress layers with plain gzip.")
@click.option("--oci", is_flag=True, help="Convert Docker media types to OCI ones.")
@click.option("--platform", multiple=True,
              help="Convert this platform (repeatable; default: this machine's).")
@click.option("--all-platforms", is_flag=True, help="Convert every platform.")
@click.argument("src")
@click.argument("dst")
@global_options
def convert_command(estargz: bool, estargz_record_in: str | None, estargz_compression_level: int,
                    estargz_chunk_size: int, estargz_min_chunk_size: int, estargz_external_toc: bool,
                    estargz_keep_diff_id: bool, zstdchunked: bool, zstdchunked_compression_level: int,
                    zstdchunked_chunk_size: int, zstdchunked_record_in: str | None, uncompress: bool,
                    gzip_: bool, oci: bool, platform: tuple[str, ...], all_platforms: bool, src: str,
                    dst: str) -> None:
    """Convert SRC into a new image DST (eStargz, zstd:chunked, uncompressed; Docker -> OCI).

    SRC is a stored image, an oci:DIR[:TAG] layout, or a registry image (pulled first). DST is a
    store name (push it with `lazypull push`) or an oci:DIR[:TAG] layout.
    """
    opts = get_options()
    chosen = [name for flag, name in ((estargz, "estargz"), (zstdchunked, "zstdchunked"),
                                      (uncompress, "uncompress"), (gzip_, "gzip")) if flag]
    if len(chosen) > 1:
        raise click.UsageError("--estargz, --zstdchunked, --uncompress and --gzip are mutually exclusive")
    if not chosen and not oci:
        raise click.UsageError("nothing to do: give --estargz, --zstdchunked, --uncompress, --gzip or --oci")
    layer_format: LayerFormat | None = chosen[0] if chosen else None  # type: ignore[assignment]
    if estargz_keep_diff_id and not estargz_external_toc:
        raise click.UsageError("option --estargz-keep-diff-id must be specified with --estargz-external-toc")
    if zstdchunked_record_in and layer_format != "zstdchunked":
        raise click.UsageError("option --zstdchunked-record-in must be used with --zstdchunked")
    record_in = zstdchunked_record_in if layer_format == "zstdchunked" else estargz_record_in
    if layer_format == "zstdchunked" and estargz_record_in:
        raise click.UsageError("option --estargz-record-in must be used with --estargz; "
                               "use --zstdchunked-record-in")
    if layer_format in ("estargz", "zstdchunked") and not oci:
        logrus("WARN", f"option --{layer_format} should be used in conjunction with --oci")
    options = ConvertOptions(
        layer_format=layer_format, oci=oci,
        estargz_level=estargz_compression_level, estargz_chunk_size=estargz_chunk_size,
        estargz_min_chunk_size=estargz_min_chunk_size, estargz_external_toc=estargz_external_toc,
        estargz_keep_diff_id=estargz_keep_diff_id,
        record=read_record(record_in) if record_in else None,
        zstd_level=zstdchunked_compression_level, zstd_chunk_size=zstdchunked_chunk_size,
        platforms=_platforms(platform, all_platforms),
    )
    options.check()
    store = _store(opts)
    if dst.startswith("oci:"):
        layout, tag = Layout.from_reference(dst)
        with store.lease(), make_progress() as progress:
            result = convert_image(_source_root(store, src, opts, options.platforms), layout, options,
                                   progress)
        tag_in_layout(result, layout, tag, dst)
        click.echo(result.root.digest)
        return
    dst_name = normalize_name(dst)
    with store.lease():
        with make_progress() as progress:
            result = convert_image(_source_root(store, src, opts, options.platforms), store, options,
                                   progress)
        name_in_store(result, store, dst_name)
    click.echo(result.root.digest)


def tag_in_layout(result: ConvertResult, layout: Layout, tag: str | None, dst: str) -> None:
    """Tag a conversion's image (and its -esgztoc TOC image) in the OCI layout DST."""
    layout.add_entry(result.root, tag)
    if result.toc_image is not None:
        toc_tag = (tag or "latest") + mt.TOC_IMAGE_SUFFIX
        layout.add_entry(result.toc_image, toc_tag)
        logrus("INFO", f"Extra image(0) {dst.rsplit(':', 1)[0] if tag else dst}:{toc_tag}")


def name_in_store(result: ConvertResult, store: Store, name: str) -> None:
    """Name a conversion's image (and its -esgztoc TOC image) in the store; call with the lease held.

    If naming fails, the blobs the conversion added that nothing else uses are discarded.
    """
    try:
        store.put_image(name, result.root)
        if result.toc_image is not None:
            toc_name = _toc_name(name)
            store.put_image(toc_name, result.toc_image)
            logrus("INFO", f"Extra image(0) {_familiar(toc_name)}")
    except LazypullError:
        store.discard_unreferenced(result.added)
        raise


def _toc_name(name: str) -> str:
    ref = parse_reference(name)
    if not ref.tag:
        raise ImageError(f"{name}: an external-TOC image needs a tagged destination (the TOC image is "
                         f"TAG{mt.TOC_IMAGE_SUFFIX})")
    return str(ref.with_tag(ref.tag + mt.TOC_IMAGE_SUFFIX))


# ---- the group ----------------------------------------------------------------------------------------

@click.group("image")
@global_options
def image_group() -> None:
    """Manage images: convert, ls, inspect, rm, tag, push, pull, prune."""


# `lazypull image X` and the top-level `pull`, `push`, `tag`, `images`, `rmi` are the same commands.
for _command in (convert_command, inspect_command, tag_command, push_command, pull_command, prune_command):
    image_group.add_command(_command)
image_group.add_command(images_command, name="ls")
image_group.add_command(rmi_command, name="rm")

# `pull` itself is lazypull.cli.pull's (a lazy pull imports none of this module's dependencies).
COMMANDS: list[click.Command] = [image_group, images_command, push_command, rmi_command, tag_command]

__all__ = ["COMMANDS", "human_duration", "human_size", "name_in_store", "since", "tabulate", "tag_in_layout"]
