"""``lazypull pull``: an image into the store, lazily (``--snapshotter=stargz``) or whole.

A lazy pull is the mount server's work, as ``nerdctl pull`` is containerd's: this process sends one
request and the server, with its registry connections already open, stores manifest and config and
mounts the layers. So the command imports neither the registry client nor the image store unless
some layer cannot be mounted lazily and must be downloaded here: the reply lists the metadata for
nerdctl's ``fetching`` lines and what the name meant before (put back if that download fails), which
the server looked up before it stored the new one. A full pull (``--snapshotter=overlayfs``)
downloads and extracts every layer in this process, with progress bars.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from lazypull.cli._options import GlobalOptions, get_options, global_options

if TYPE_CHECKING:
    from lazypull.image.store import ImageRecord, Store
    from lazypull.snapshot.client import MountClient
    from lazypull.snapshot.protocol import PulledImage


def _check_platforms(platform: tuple[str, ...], all_platforms: bool) -> None:
    if all_platforms and platform:
        raise click.UsageError("--platform and --all-platforms are mutually exclusive")


def _lazy_pull(opts: GlobalOptions, ref: str, platform: tuple[str, ...], all_platforms: bool,
               quiet: bool = False) -> str:
    import sys

    from lazypull.cli._lazy_notes import fetched_lines
    from lazypull.snapshot.client import MountClient

    with MountClient(opts.root) as mounts:
        pulled = mounts.pull_image(ref, insecure=bool(opts.insecure_registries), platforms=platform,
                                   all_platforms=all_platforms)

        def say(text: str) -> None:
            if not quiet:
                click.echo(text, err=True)

        if not quiet and not sys.stderr.isatty() and not all_platforms:    # nerdctl's lines
            metadata = pulled.metadata
            if metadata is None:        # not in the reply: from the store
                from lazypull.image.store import Store

                store = Store(opts.root)
                metadata = store.metadata_of(store.resolve(pulled.name, platform[0] if platform else None))
            for line in fetched_lines(metadata):
                say(line)
        if not all(m.lazy for m in pulled.layers):
            # Layers the server cannot serve (plain gzip, TOC missing) are fetched and unpacked now, as
            # stargz-snapshotter leaves them to containerd's normal unpack.
            from lazypull.cli._lazy_notes import announce_fallbacks
            from lazypull.image.platform import parse_platform
            from lazypull.image.store import Store
            from lazypull.registry import RegistryClient, default_auth
            from lazypull.runtime.layers import lower_dirs

            store = Store(opts.root)
            before: ImageRecord | None = None
            known = False       # what the name meant before (the server looked before it stored the new one)
            try:
                before, known = _previous(pulled), pulled.previous_known
                resolved = store.resolve(pulled.name, parse_platform(platform[0]) if platform else None)
                announce_fallbacks(resolved, pulled.layers, say)
                lower_dirs(opts.root, store, resolved, pulled.layers,
                           lambda: RegistryClient(insecure=opts.insecure_registries, auth=default_auth()),
                           progress=say)
            except BaseException:
                _undo_pull(store, mounts, pulled.name, before, known=known)
                raise
    return pulled.digest


def _previous(pulled: PulledImage) -> ImageRecord | None:
    """The record the pulled name had before the pull, as the server's reply gave it."""
    from lazypull.errors import MountError
    from lazypull.image.store import ImageRecord

    if pulled.previous is None:
        return None
    name, record = pulled.previous.get("name"), pulled.previous.get("record")
    if not isinstance(name, str):
        raise MountError("mount server returned a malformed pull result: 'previous' has no name")
    return ImageRecord.from_json(name, record)


def _undo_pull(store: Store, mounts: MountClient, name: str, before: ImageRecord | None, *,
               known: bool = True) -> None:
    """A pull that failed after the server named the image: no hold (the next server would mount it
    again at every start), then no name (or the previous one again) and no blobs only it referenced.
    Not ``known`` what the name meant before (a server that did not say): the name is left alone."""
    import contextlib

    from lazypull.cli._pull_undo import undo_pull
    from lazypull.errors import LazypullError

    with contextlib.suppress(LazypullError):
        mounts.release_image(name)
    if known:
        undo_pull(store, name, before)


def _full_pull(opts: GlobalOptions, ref: str, platform: tuple[str, ...], all_platforms: bool,
               quiet: bool) -> str:
    from lazypull.cli._image_progress import make_progress
    from lazypull.image.platform import parse_platform
    from lazypull.image.pull import pull_image
    from lazypull.image.store import Store
    from lazypull.registry import RegistryClient, default_auth, parse_reference
    from lazypull.runtime.layers import lower_dirs, streaming_unpacker
    from lazypull.runtime.overlay import sync_filesystem

    store = Store(opts.root)
    plats = [parse_platform(p) for p in platform]     # none: this machine's (a single manifest: any)
    # One platform: its layers are extracted while they download (what lower_dirs then finds unpacked).
    unpack = streaming_unpacker(opts.root) if not all_platforms and len(plats) <= 1 else None
    with RegistryClient(insecure=opts.insecure_registries, auth=default_auth()) as client, \
            make_progress(quiet=quiet) as progress:
        record = pull_image(store, client, parse_reference(ref), platforms=plats or None,
                            all_platforms=all_platforms, fetch_layers=True, progress=progress,
                            unpack=unpack)
    # Unpack like nerdctl does on pull, so containers start from extracted layers, on the disk.
    lower_dirs(opts.root, store, store.resolve(record.name, plats[0] if plats else None), None)
    sync_filesystem(opts.root)
    return record.target.digest


def pull(ref: str, platform: tuple[str, ...], all_platforms: bool, quiet: bool) -> None:
    """Pull ``ref`` as the global ``--snapshotter`` says; prints the manifest digest."""
    opts = get_options()
    _check_platforms(platform, all_platforms)
    if opts.snapshotter == "stargz":
        digest = _lazy_pull(opts, ref, platform, all_platforms, quiet)
    else:
        digest = _full_pull(opts, ref, platform, all_platforms, quiet)
    click.echo(digest)


@click.command("pull")
@click.option("--platform", multiple=True, help="Platform to pull (default: this machine's).")
@click.option("--all-platforms", is_flag=True, help="Pull every platform of an index.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.argument("ref")
@global_options
def pull_command(ref: str, platform: tuple[str, ...], all_platforms: bool, quiet: bool) -> None:
    """Pull an image (lazily with --snapshotter=stargz: metadata now, layers on demand)."""
    pull(ref, platform, all_platforms, quiet)


COMMANDS = [pull_command]

__all__ = ["COMMANDS", "pull", "pull_command"]
