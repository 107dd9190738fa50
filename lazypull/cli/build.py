"""``lazypull build``: build an image from a Dockerfile, its base images mounted lazily.

``FROM`` images are pulled as ``run`` pulls them (manifest and config only with the stargz
snapshotter, the layers mounted through the mount server and fetched on demand); the build holds
their mounts under its own id and releases them when it ends, however it ends.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

import click

from lazypull.cli._options import GlobalOptions, get_options, global_options
from lazypull.cli._signals import exit_on_signals
from lazypull.errors import MountError

if TYPE_CHECKING:
    from lazypull.build.executor import BaseImage
    from lazypull.registry import Descriptor, RegistryClient


class _Bases:
    """The build's :class:`BaseProvider`: pulls, mounts (held by the build) and lists the lower dirs."""

    def __init__(self, opts: GlobalOptions, build_id: str, quiet: bool) -> None:
        from lazypull.image import Store

        self.opts = opts
        self.store = Store(opts.root)
        self.build_id = build_id
        self.quiet = quiet
        self.held: list[str] = []
        self._client: RegistryClient | None = None     # for the base layer downloads (made at the first)

    def __call__(self, ref: str, platform: str | None) -> BaseImage:
        from lazypull.build.executor import BaseImage
        from lazypull.cli._image_progress import QuietProgress
        from lazypull.cli.run import ensure_image, registry_client
        from lazypull.runtime.layers import lower_dirs

        lazy = self.opts.snapshotter == "stargz"
        with QuietProgress() as progress:
            resolved = ensure_image(self.store, ref, opts=self.opts, pull="missing", platform=platform,
                                    lazy=lazy, progress=progress, shared_client=self._registry)

        def mount() -> list[Path]:
            mounts = None
            if lazy:
                from lazypull.snapshot import MountClient

                self.held.append(resolved.name)
                with MountClient(self.opts.root) as client:
                    mounts = client.mount_image(resolved.name, insecure=self.opts.insecure_registries,
                                                holder=self.build_id, wait_prefetch=False)
            return lower_dirs(self.opts.root, self.store, resolved, mounts,
                              lambda: registry_client(self.opts))

        rootfs = resolved.config.get("rootfs") or {}
        diff_ids = list(resolved.diff_ids) or list(rootfs.get("diff_ids") or [])
        return BaseImage(name=resolved.name, key=resolved.manifest_digest, config=dict(resolved.config),
                         layers=list(resolved.layers), diff_ids=diff_ids, mount=mount,
                         source=str(resolved.source) if resolved.source is not None else None)

    def fetch(self, desc: Descriptor, source: str | None) -> None:
        """Download a base layer blob into the store (digest and size checked, all or nothing), with the
        build's one registry client: its tokens and connections serve every layer (a client per layer
        paid a token exchange and a connection each)."""
        from lazypull.build.errors import BuildError
        from lazypull.registry import parse_reference

        if source is None:
            raise BuildError(f"layer {desc.digest} is not in the store and its image has no source registry")
        client = self._registry()
        with self.store.ingest(desc.digest, desc.size) as writer:
            client.get_blob(parse_reference(source), desc.digest, cast(BinaryIO, writer), size=desc.size)
            writer.commit()

    def _registry(self) -> RegistryClient:
        """The build's one registry client, for its base images' pulls and its layer downloads (made at
        the first: a build whose bases are all stored makes none)."""
        if self._client is None:
            from lazypull.cli.run import registry_client

            self._client = registry_client(self.opts)
        return self._client

    def release(self) -> None:
        """Drop the build's holds (layers nobody else holds are unmounted) and its registry client."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if not self.held:
            return
        from lazypull.snapshot import MountClient

        # Never start a server for this: if none runs, its holds went with it.
        with contextlib.suppress(MountError, OSError), MountClient(self.opts.root, autostart=False) as client:
            for name in dict.fromkeys(self.held):
                with contextlib.suppress(MountError):
                    client.release_image(name, holder=self.build_id)


def _cleanup(workdir: Path) -> None:
    """Unmount what a build left mounted under its work directory, then delete it."""
    from lazypull.removetree import remove_tree
    from lazypull.runtime.overlay import mountpoints, unmount

    points = [m for m in mountpoints() if m.startswith(str(workdir) + "/")]
    for point in sorted(points, key=len, reverse=True):
        with contextlib.suppress(Exception):
            unmount(Path(point))
    with contextlib.suppress(OSError):
        if not any(m.startswith(str(workdir) + "/") for m in mountpoints()):
            remove_tree(workdir)


@click.command("build")
@click.option("-t", "--tag", "tags", multiple=True, metavar="REF", help="Name the image (repeatable).")
@click.option("-f", "--file", "dockerfile", metavar="PATH",
              help="The Dockerfile (default: CONTEXT/Dockerfile).")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY[=VALUE]", help="Set a build argument.")
@click.option("--target", help="Build this stage (default: the last).")
@click.option("--platform", help="Platform of the base images, e.g. linux/amd64.")
@click.option("--no-cache", is_flag=True, help="Run every step again (the cache is neither read nor used).")
@click.option("--estargz", is_flag=True, help="Write the new layers as eStargz.")
@click.option("--zstdchunked", is_flag=True, help="Write the new layers as zstd:chunked.")
@click.option("--output", "-o", "output", metavar="oci:DIR[:TAG]",
              help="Also write the image into an OCI image layout.")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress; print the image ID (manifest digest) when done.")
@global_options
@click.argument("context", metavar="CONTEXT")
def build(tags: Sequence[str], dockerfile: str | None, build_args: Sequence[str], target: str | None,
          platform: str | None, no_cache: bool, estargz: bool, zstdchunked: bool, output: str | None,
          quiet: bool, context: str) -> None:
    """Build an image from a Dockerfile; its FROM images are mounted lazily."""
    import os

    from lazypull.build.context import SourceRoot
    from lazypull.build.dockerignore import load_ignore
    from lazypull.build.errors import BuildError
    from lazypull.build.executor import Builder, BuildOptions, build_image, read_dockerfile, unused_build_args
    from lazypull.build.layer import LayerFormat
    from lazypull.build.progress import Progress
    from lazypull.image import Store, normalize_name
    from lazypull.runtime import new_container_id

    if estargz and zstdchunked:
        raise BuildError("--estargz and --zstdchunked cannot be combined")
    if output is not None:
        if not output.startswith("oci:"):
            raise BuildError(f"--output {output}: only oci:DIR[:TAG] is supported")
        from lazypull.image import Layout

        Layout.from_reference(output)           # a malformed reference fails before the build
    layer_format: LayerFormat = "estargz" if estargz else "zstdchunked" if zstdchunked else "gzip"
    names = [normalize_name(tag) for tag in tags]
    args: dict[str, str] = {}
    for item in build_args:
        key, sep, value = item.partition("=")
        if not key:
            raise BuildError(f"invalid --build-arg {item!r}: expected KEY=VALUE")
        if sep:
            args[key] = value
        elif key in os.environ:
            args[key] = os.environ[key]
    if context == "-":
        if dockerfile is not None:
            raise BuildError("-f cannot be used with a Dockerfile from stdin (CONTEXT -)")
        df = read_dockerfile(None, sys.stdin.read(), "Dockerfile")
        source_root = None
    else:
        context_dir = Path(context)
        if not context_dir.is_dir():
            raise BuildError(f"build context {context} is not a directory")
        path = Path(dockerfile) if dockerfile is not None else context_dir / "Dockerfile"
        df = read_dockerfile(path, None, str(path))
        source_root = SourceRoot(context_dir.resolve(), ignore=load_ignore(context_dir), strict=True,
                                 what="build context")
    opts = get_options()
    store = Store(opts.root)
    build_id = new_container_id()
    workdir = opts.root / "build" / build_id[:16]
    workdir.mkdir(parents=True, mode=0o700)
    progress = Progress(sys.stderr, quiet=quiet)
    bases = _Bases(opts, build_id, quiet)
    builder = Builder(root=opts.root, store=store, dockerfile=df, context=source_root, provider=bases,
                      options=BuildOptions(build_args=args, target=target, no_cache=no_cache,
                                           layer_format=layer_format, platform=platform),
                      progress=progress, workdir=workdir)
    try:
        with exit_on_signals():
            result = build_image(builder, names)
    finally:
        try:
            _cleanup(workdir)
        finally:
            bases.release()
    for name in unused_build_args(builder):
        click.echo(f"lazypull: warning: build argument {name} was not consumed by any ARG", err=True)
    progress.start("exporting to image")
    progress.output(f"writing image {result.manifest.digest} (config {result.config_digest})")
    for name in names:
        progress.output(f"naming to {name}")
    progress.done()
    if output is not None:
        from lazypull.build.export import export_layout
        from lazypull.cli.run import registry_client

        progress.start(f"exporting to {output}")
        with store.lease():
            export_layout(store, result.manifest, result.source, output, lambda: registry_client(opts))
        progress.done()
    if not names and output is None:
        click.echo("lazypull: warning: no -t given: the image is stored unnamed (its layers serve the "
                   "build cache) and `image prune` may remove it", err=True)
    if quiet:
        click.echo(result.manifest.digest)       # the image ID as `lazypull images` shows it


COMMANDS: list[click.Command] = [build]
