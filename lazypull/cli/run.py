"""``lazypull run``, ``ps`` and ``rm``: containers with runc over the image's layers.

With ``--snapshotter=stargz`` (the default) ``run`` pulls only the manifest and config and asks the
mount server for the layers (lazy FUSE mounts for eStargz/zstd:chunked layers; others are fetched
and extracted); with ``--snapshotter=overlayfs`` the whole image is pulled and extracted first.
Networking is the host's (``--net=host``, the default: no bridge is set up) or none (``--net=none``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from lazypull.cli._options import GlobalOptions, get_options, global_options
from lazypull.cli._signals import exit_on_signals
from lazypull.errors import ContainerError, LazypullError, MountError
from lazypull.runtime import (
    ContainerOptions,
    ContainerRecord,
    Containers,
    Stdio,
    new_container_id,
    parse_env,
    parse_volume,
)
from lazypull.runtime.runc import signals_held
from lazypull.selfexec import lazypull_argv

if TYPE_CHECKING:
    from lazypull.image import Progress, ResolvedImage, Store
    from lazypull.registry import RegistryClient
    from lazypull.snapshot.protocol import LayerMount

# The image, registry and progress modules (httpx, rich, the format package) are imported where they
# are used: `start`, `ps`, `rm`, `stop` and `logs` need none of them, and every container start runs
# `lazypull` two or three times.

PULL_POLICIES = ("missing", "always", "never")
AUTO_REMOVE_LABEL = "lazypull.auto-remove"
LOG_NAME = "container.log"
F = TypeVar("F", bound=Callable[..., Any])


def _note(text: str) -> None:
    click.echo(text, err=True)


def registry_client(opts: GlobalOptions) -> RegistryClient:
    """A client with the global flags' TLS setting and docker's stored credentials."""
    from lazypull.registry import RegistryClient, default_auth

    return RegistryClient(insecure=opts.insecure_registries, auth=default_auth())


def ensure_image(store: Store, image: str, *, opts: GlobalOptions, pull: str, platform: str | None,
                 lazy: bool, progress: Progress,
                 shared_client: Callable[[], RegistryClient] | None = None) -> ResolvedImage:
    """The image resolved from the store, pulled first as ``--pull`` says (metadata only if lazy).
    ``shared_client``: gives the client to pull with, which its caller keeps (a build's, for all its
    bases and downloads: one token exchange); default: one made for the pull."""
    from lazypull.image import normalize_name

    if pull_needed(store, image, pull):
        from lazypull.image import pull_image
        from lazypull.runtime.layers import streaming_unpacker

        with contextlib.nullcontext(shared_client()) if shared_client else registry_client(opts) as client:
            pull_image(store, client, image, platform=platform, fetch_layers=not lazy, progress=progress,
                       unpack=None if lazy else streaming_unpacker(opts.root))
    return _resolved(store, normalize_name(image), platform)


def pull_needed(store: Store, image: str, pull: str) -> bool:
    """Whether ``--pull`` (``pull``) asks to pull ``image`` now; an error if it is absent and may not be."""
    from lazypull.image import normalize_name

    present = store.find_image(normalize_name(image)) is not None
    if not present and pull == "never":
        raise ContainerError(f"image {image} is not in the store and --pull=never was given")
    return pull == "always" or not present


def lazy_image(store: Store, image: str, *, opts: GlobalOptions, pull: bool, platform: str | None,
               holder: str, progress: Progress, run: dict[str, object] | None = None
               ) -> tuple[ResolvedImage, list[LayerMount] | None]:
    """The image resolved from the store, pulled first if ``pull`` (:func:`pull_needed`) by the mount
    server, as ``lazypull pull`` does: its registry connection and modules are warm, the layers start
    mounting as soon as the manifest is read, held by ``holder``, and this process imports neither the
    registry client nor the pull (issue 14: ``run`` as one process costs no more than ``create`` +
    ``start``). ``run`` (``runtime.spec.run_request``): the container's flags, for the server to fetch
    its program ahead in the same request. The layers' mounts when it pulled, else None (the caller
    mounts them)."""
    from lazypull.image import normalize_name
    from lazypull.snapshot import MountClient

    name = normalize_name(image)
    mounts = None
    if pull:
        progress.start(name, name, None)    # the line an in-process pull shows (a terminal's only)
        with MountClient(opts.root) as client:
            pulled = client.pull_image(image, insecure=bool(opts.insecure_registries),
                                       platforms=[platform] if platform else None, holder=holder, run=run)
        progress.finish(name, "resolved")
        name, mounts = pulled.name, pulled.layers
    return _resolved(store, name, platform), mounts


def _resolved(store: Store, name: str, platform: str | None) -> ResolvedImage:
    resolved = store.resolve(name, platform)
    if platform is not None:        # a single-manifest image is for one platform only (its config says)
        from lazypull.image.platform import check_config_platform, parse_platform

        check_config_platform(resolved.config, [parse_platform(platform)], resolved.manifest_digest)
    return resolved


def release_mounts(root: Path, record: ContainerRecord) -> None:
    """Drop the container's hold on its image's lazy layers (unmounting those nobody else holds)."""
    if record.snapshotter != "stargz":
        return
    from lazypull.snapshot import MountClient

    with MountClient(root) as client, contextlib.suppress(MountError):
        client.release_image(record.image, holder=record.id)


def remove_container(root: Path, containers: Containers, record: ContainerRecord, *, force: bool) -> None:
    """Remove the container's writable layer and bundle, then release its layer mounts."""
    containers.remove(record, force=force)
    release_mounts(root, record)


_CONTAINER_OPTIONS = [
    click.option("--rm", "remove", is_flag=True,
                 help="Remove the container (and release its mounts) when it exits."),
    click.option("-i", "--interactive", is_flag=True, help="Keep stdin open and pass it to the container."),
    click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal."),
    click.option("--name", help="Name of the container (default: image name and a random suffix)."),
    click.option("-e", "--env", "env", multiple=True, metavar="KEY[=VALUE]",
                 help="Set an environment variable."),
    click.option("--env-file", multiple=True, type=click.Path(dir_okay=False), help="Read KEY=VALUE lines."),
    click.option("-w", "--workdir", help="Working directory inside the container."),
    click.option("--entrypoint", help="Override the image's entrypoint (drops the image's Cmd)."),
    click.option("--net", "--network", "network", type=click.Choice(["host", "none"]), default="host",
                 show_default=True, help="host: share the host's network (no bridge); none: loopback only."),
    click.option("-v", "--volume", "volumes", multiple=True, metavar="SRC:DST[:ro]",
                 help="Bind-mount a host path."),
    click.option("-u", "--user", help="User: name|uid[:group|gid] (names from the image's /etc/passwd)."),
    click.option("--hostname", help="Container host name."),
    click.option("--read-only", is_flag=True, help="Mount the container's root filesystem read-only."),
    click.option("--cap-add", multiple=True, metavar="CAP[,CAP...]",
                 help="Add Linux capabilities (names with or without CAP_, or ALL)."),
    click.option("--cap-drop", multiple=True, metavar="CAP[,CAP...]",
                 help="Drop Linux capabilities (names with or without CAP_, or ALL)."),
    click.option("--security-opt", "security_opt", multiple=True, metavar="KEY[=VALUE]",
                 help="seccomp=unconfined|builtin|PATH (default builtin: Docker's profile), "
                      "no-new-privileges[=BOOL], systempaths=unconfined."),
    click.option("--privileged", is_flag=True,
                 help="All capabilities and host devices, no seccomp, no masked paths (as docker run)."),
    click.option("--platform", help="Platform of the image, e.g. linux/amd64."),
    click.option("--pull", type=click.Choice(PULL_POLICIES), default="missing", show_default=True,
                 help="When to pull the image."),
    click.option("-q", "--quiet", is_flag=True, help="No pull progress on stderr."),
    global_options,
    click.argument("image"),
    click.argument("command", nargs=-1, type=click.UNPROCESSED),
]


def container_options(func: F) -> F:
    """The flags ``run`` and ``create`` share (docker's), then IMAGE [COMMAND...]."""
    for decorator in reversed(_CONTAINER_OPTIONS):
        func = decorator(func)
    return func


def create_container(*, remove: bool, interactive: bool, tty: bool, name: str | None, env: Sequence[str],
                     env_file: Sequence[str], workdir: str | None, entrypoint: str | None, network: str,
                     volumes: Sequence[str], user: str | None, hostname: str | None, read_only: bool,
                     cap_add: Sequence[str], cap_drop: Sequence[str], security_opt: Sequence[str],
                     privileged: bool, platform: str | None, pull: str, quiet: bool, image: str,
                     command: Sequence[str]) -> ContainerRecord:
    """Pull what is missing, mount or extract the layers, and create the container (rootfs mounted)."""
    from lazypull.cli._image_progress import QuietProgress, make_progress
    from lazypull.cli._pull_undo import previous_image, undo_pull
    from lazypull.image import Store
    from lazypull.runtime.confinement import parse_confinement
    from lazypull.runtime.layers import lower_dirs

    opts = get_options()
    root = opts.root
    lazy = opts.snapshotter == "stargz"
    options = ContainerOptions(
        command=tuple(command) or None, entrypoint=(entrypoint,) if entrypoint is not None else None,
        env=parse_env(env, env_file), workdir=workdir, user=user, tty=tty, stdin=interactive,
        network=network, hostname=hostname, volumes=tuple(parse_volume(v) for v in volumes),
        read_only=read_only, labels={AUTO_REMOVE_LABEL: "true"} if remove else {}, volatile=remove,
        confinement=parse_confinement(privileged=privileged, cap_add=cap_add, cap_drop=cap_drop,
                                      security_opts=security_opt))
    store = Store(root)
    before = previous_image(store, image) if lazy else None   # put back if the layers' download fails
    container_id = new_container_id()
    # Whose holds to drop if this fails (found by holder until the image's stored name is known).
    placeholder = ContainerRecord(id=container_id, name="", image=image, command=[], created="",
                                  snapshotter=opts.snapshotter)
    mounts = None
    if lazy:
        from lazypull.image import normalize_name
        from lazypull.image.runconfig import run_config
        from lazypull.runtime.spec import program_hint, run_request
        from lazypull.snapshot import MountClient

        needed = pull_needed(store, image, pull)    # (before the server is asked for, or started)
        asked = needed      # whether the server may hold the layers for this container
        try:
            # The server starts fetching the command (and its libraries) while the container is set up:
            # a pull names it in its own request (one round trip), a stored image in its mount.
            with QuietProgress() if quiet else make_progress() as progress:
                resolved, mounts = lazy_image(store, image, opts=opts, pull=needed, platform=platform,
                                              holder=container_id, progress=progress,
                                              run=run_request(options))
            placeholder.image = resolved.name
            image_config = run_config(resolved.config, resolved.name)  # checked before it is started
            if mounts is None:
                asked = True
                with MountClient(root) as client:
                    mounts = client.mount_image(resolved.name, insecure=opts.insecure_registries,
                                                holder=container_id, wait_prefetch=False,
                                                program=program_hint(image_config, options))
        except BaseException:       # interrupted after the server recorded the hold: drop it
            if asked:               # (else no server is started just to be told nothing)
                release_mounts(root, placeholder)
            undo_pull(store, normalize_name(placeholder.image), before)
            raise
    else:
        with QuietProgress() if quiet else make_progress() as progress:
            resolved = ensure_image(store, image, opts=opts, pull=pull, platform=platform, lazy=lazy,
                                    progress=progress)
        from lazypull.image.runconfig import run_config

        image_config = run_config(resolved.config, resolved.name)  # checked before anything is mounted
    containers = Containers(root)
    if not quiet and lazy:
        from lazypull.cli._lazy_notes import announce_fallbacks, fetched_lines

        if not sys.stderr.isatty():
            for line in fetched_lines(store.metadata_of(resolved)):
                _note(line)
        announce_fallbacks(resolved, mounts, _note)
    try:
        lowers = lower_dirs(root, store, resolved, mounts, lambda: registry_client(opts),
                            progress=None if quiet else _note)
    except BaseException:       # the layers this lazy pull left to us did not come: no name either
        release_mounts(root, placeholder)
        if lazy:
            undo_pull(store, resolved.name, before)
        raise
    try:
        record = containers.create(image=resolved.name, image_config=image_config,
                                   lowers_top_first=lowers, options=options, name=name,
                                   snapshotter=opts.snapshotter, container_id=container_id)
    except BaseException:
        release_mounts(root, placeholder)
        raise
    lazy_digests = [m.digest for m in mounts or () if m.lazy]
    if lazy_digests and _waits_for_prefetch(root):
        # As stargz-snapshotter waits when it prepares a rootfs (bounded by the server's
        # prefetch_timeout); waiting last lets the rootfs mount and the bundle be made meanwhile.
        try:
            with MountClient(root) as client:
                client.wait_prefetch(lazy_digests)
        except BaseException:
            remove_container(root, containers, record, force=True)
            raise
    return record


def _waits_for_prefetch(root: Path) -> bool:
    """The filesystem config's ``prefetch_wait`` (see lazypull.fs.config)."""
    from lazypull.fs import load_config

    return load_config(root).prefetch_wait


def start_container(record: ContainerRecord, *, interactive: bool, stdin: IO[Any] | None = None) -> int:
    """Run a created container in the foreground; removes it afterwards if it was made with ``--rm``.
    ``interactive``: the container reads ``stdin`` (default: ours).

    With a terminal (``record.tty``) this process keeps the console: it holds the pty master runc sends
    on its console socket and copies it to our stdout, which for a detached container (``run -dit``) is
    the container log, so ``logs`` shows the output and the terminal stays open while it runs."""
    root = get_options().root
    containers = Containers(root)
    tty = record.tty
    source = stdin if stdin is not None else sys.stdin
    if tty and interactive and not source.isatty():
        raise ContainerError("the input device is not a TTY: drop -t, or run from a terminal")
    try:
        return containers.run(record, tty=tty, stdio=Stdio(stdin=source if interactive else None))
    finally:
        if record.labels.get(AUTO_REMOVE_LABEL) == "true":
            with signals_held():    # a signal now must not cut the removal short
                remove_container(root, containers, record, force=True)
        sys.stdout.flush()


#: What a detached start's supervisor writes on its notify pipe once the container has run.
_STARTED = b"started\n"


def start_detached(record: ContainerRecord, timeout: float = 60.0, *, keep_stdin: bool = False) -> None:
    """Start the container in the background: a ``lazypull start --attach`` in its own session,
    output to ``containers/<id>/container.log``, supervises it (exit status, ``--rm``; with ``-t`` it
    keeps the console, see :func:`start_container`). ``keep_stdin`` (``run -di``): the container's stdin
    stays open (a pipe nobody writes to, as docker keeps it for a later attach), not /dev/null.

    Returns once the supervisor says on a pipe that the container runs (or ran); anything else (an
    error it reports there, its death before saying anything, no word within ``timeout``) raises, so
    ``run -d`` never prints an id for a container that did not start.
    """
    opts = get_options()
    containers = Containers(opts.root)
    log_path = containers.path(record.id) / LOG_NAME
    read_end, write_end = os.pipe()
    try:
        with open(log_path, "ab") as log_file:
            cmd = lazypull_argv("--root", str(opts.root), "start", "--attach", "--notify-fd", str(write_end),
                                *(["--keep-stdin"] if keep_stdin else []), record.id)   # -I: not from cwd
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                    start_new_session=True, close_fds=True, pass_fds=(write_end,))
        os.close(write_end)
        write_end = -1
        word = _read_notice(read_end, time.monotonic() + timeout)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if word == _STARTED:
        return
    if word:
        reason = word.decode(errors="replace").strip().removeprefix("error:").strip()
    elif proc.poll() is None:
        reason = f"no word from its supervisor within {timeout:.0f} s (see lazypull logs {record.name})"
    else:
        tail = [line for line in _log_tail(log_path).splitlines() if line.strip()]
        reason = (f"its supervisor exited with status {proc.returncode}"
                  + (f": {tail[-1].strip()}" if tail else ""))
    raise ContainerError(f"container {record.name} did not start: {reason}")


def _read_notice(fd: int, deadline: float) -> bytes:
    """What the supervisor wrote before closing its end (b"" if it died first), up to ``deadline``."""
    import select

    data = b""
    while (left := deadline - time.monotonic()) > 0 and len(data) < 4096:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\n"):
            break
    return data


class _Notice:
    """The supervisor's side of the pipe: says once that the container runs, or why it could not."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, text: bytes) -> None:
        with self._lock:
            if self._fd is None:
                return
            with contextlib.suppress(OSError):    # the parent gave up waiting: nobody to tell
                os.write(self._fd, text)
            os.close(self._fd)
            self._fd = None

    @property
    def sent(self) -> bool:
        return self._fd is None

    def watch(self, containers: Containers, container_id: str) -> None:
        """Says "started" once runc reports the container running (it may run for days)."""
        def poll() -> None:
            while not self.sent:
                if containers.runc.list().get(container_id) in ("running", "paused"):
                    self.send(_STARTED)
                    return
                time.sleep(0.05)

        threading.Thread(target=poll, name="notice", daemon=True).start()


def _log_tail(path: Path, size: int = 64 << 10) -> str:
    """The last ``size`` bytes of a container log (the container may have written gigabytes)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            return f.read(size).decode(errors="replace")
    except FileNotFoundError:
        return ""


@click.command("run", context_settings={"allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Run in the background and print the container id.")
@container_options
def run(detach: bool, **params: Any) -> None:
    """Run COMMAND (default: the image's) in a new container of IMAGE; exits with its status."""
    if params["tty"] and params["interactive"] and not detach and not sys.stdin.isatty():
        raise ContainerError("the input device is not a TTY: drop -t, or run from a terminal")
    with exit_on_signals():
        record = create_container(**params)
        if detach:      # -dit: the supervisor keeps the console (there is no attach: use logs, exec)
            start_detached(record, keep_stdin=params["interactive"])
            click.echo(record.id)
            return
        code = start_container(record, interactive=params["interactive"])
    click.get_current_context().exit(code)


@click.command("create", context_settings={"allow_interspersed_args": False})
@container_options
def create(**params: Any) -> None:
    """Create a container of IMAGE (pulled, mounted, ready to start) and print its id."""
    with exit_on_signals():
        click.echo(create_container(**params).id)


@click.command("start")
@click.option("-a", "--attach", is_flag=True,
              help="Stay attached: output here, exit with the container's status.")
@click.option("-i", "--interactive", is_flag=True, help="Pass stdin to the container (with -a).")
@click.option("--notify-fd", type=int, default=None, hidden=True,
              help="(run -d's supervisor) say on this fd whether the container started.")
@click.option("--keep-stdin", is_flag=True, hidden=True,
              help="(run -di's supervisor) the container's stdin stays open instead of /dev/null.")
@global_options
@click.argument("container")
def start(attach: bool, interactive: bool, notify_fd: int | None, keep_stdin: bool, container: str) -> None:
    """Start a created container: in the background (output in ``lazypull logs``), or attached with -a."""
    if notify_fd is not None:
        _supervise(container, notify_fd, keep_stdin)
        return
    record = Containers(get_options().root).find(container)
    if record.status != "created":
        raise ContainerError(f"container {record.name} is {record.status}: only created containers can start")
    if not attach:
        if interactive:
            raise ContainerError("start without -a cannot pass stdin: use start -a")
        start_detached(record)
        click.echo(record.name)
        return
    click.get_current_context().exit(start_container(record, interactive=interactive))


def _supervise(container: str, notify_fd: int, keep_stdin: bool) -> None:
    """``start --attach --notify-fd``: run the container, telling ``start_detached`` when it runs or why
    it could not (any error before it ran, in whatever layer, is such a reason)."""
    from lazypull.cli.main import error_line

    notice = _Notice(notify_fd)
    try:
        containers = Containers(get_options().root)
        record = containers.find(container)
        if record.status != "created":
            raise ContainerError(f"container {record.name} is {record.status}: only created containers "
                                 "can start")
        notice.watch(containers, record.id)
        if keep_stdin and not record.tty:   # (a terminal stays open by itself: we hold its master)
            read_end, write_end = os.pipe()
            with open(read_end, "rb", buffering=0) as stdin:
                try:
                    code = start_container(record, interactive=True, stdin=stdin)
                finally:
                    os.close(write_end)
        else:
            code = start_container(record, interactive=False)
    except BaseException as err:
        why = error_line(err) if isinstance(err, Exception) else type(err).__name__
        notice.send(f"error: {why}\n".encode())
        raise
    notice.send(_STARTED)        # it ran (and already exited: a short command)
    click.get_current_context().exit(code)


@click.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the container exits.")
@click.option("--tail", default="all", show_default=True,
              help="Only the last N lines of the output so far.")
@global_options
@click.argument("container")
def logs(follow: bool, tail: str, container: str) -> None:
    """Print the output of a container started in the background (run -d, start)."""
    if tail != "all" and not tail.isdigit():
        raise click.BadParameter(f"{tail!r} is not a number of lines or 'all'", param_hint="--tail")
    containers = Containers(get_options().root)
    record = containers.find(container)
    path = containers.path(record.id) / LOG_NAME
    out = sys.stdout.buffer
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        if tail == "all":
            shutil.copyfileobj(f, out)
        else:
            out.write(_last_lines(f, int(tail)))
        out.flush()
        while follow:
            chunk = f.read(1 << 16)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            if containers.runc.status(record.id) not in ("running", "paused", "created"):
                out.write(f.read())     # what it wrote while we looked
                break
            time.sleep(0.1)
        out.flush()


def _last_lines(f: Any, count: int, block: int = 1 << 16) -> bytes:
    """The last ``count`` lines of the open file ``f`` (read backwards: logs may be huge); leaves ``f``
    at its end."""
    end = f.seek(0, os.SEEK_END)
    if count == 0:
        return b""
    data = b""
    pos = end
    while pos > 0 and data.count(b"\n") <= count:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    f.seek(end)
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-count:])


@click.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open (pass it to the process).")
@click.option("-t", "--tty", is_flag=True, help="Allocate a terminal for the process.")
@click.option("-d", "--detach", is_flag=True, help="Run the process in the background.")
@click.option("-e", "--env", multiple=True, help="Set an environment variable (KEY=VALUE).")
@click.option("-w", "--workdir", default=None, help="Working directory inside the container.")
@click.option("-u", "--user", default=None, help="User (name|uid[:group|gid]) to run as.")
@global_options
@click.argument("container")
@click.argument("command", nargs=-1, required=True)
def exec_command(interactive: bool, tty: bool, detach: bool, env: Sequence[str], workdir: str | None,
                 user: str | None, container: str, command: Sequence[str]) -> None:
    """Run COMMAND in a running container; exits with its status."""
    from lazypull.runtime.runc import exec_process
    from lazypull.runtime.users import resolve_user

    if tty and not sys.stdin.isatty():
        raise ContainerError("the input device is not a TTY: drop -t, or run from a terminal")
    if detach and (tty or interactive):
        raise ContainerError("exec -d cannot be combined with -t or -i")
    containers = Containers(get_options().root)
    record = containers.find(container)
    if containers.runc.status(record.id) not in ("running", "paused"):
        raise ContainerError(f"container {record.name} is not running")
    for line in env:
        if "=" not in line or line.startswith("="):
            raise ContainerError(f"invalid environment variable {line!r}: expected KEY=VALUE")
    who = None
    if user is not None:
        found = resolve_user(containers.path(record.id) / "rootfs", user)
        who = (found.uid, found.gid)
    code = exec_process(containers.runc, record.id, command, tty=tty, stdin=interactive, detach=detach,
                        env=env, cwd=workdir, user=who)
    click.get_current_context().exit(code)


@click.command("stop")
@click.option("-t", "--time", "grace", type=float, default=10.0, show_default=True,
              help="Seconds to wait after SIGTERM before SIGKILL.")
@global_options
@click.argument("containers_", metavar="NAME|ID...", nargs=-1, required=True)
def stop(grace: float, containers_: Sequence[str]) -> None:
    """Stop running containers: SIGTERM, then SIGKILL after the grace period."""
    containers = Containers(get_options().root)
    for ref in containers_:
        record = containers.find(ref)
        if containers.runc.list().get(record.id) not in ("running", "paused"):
            click.echo(ref)
            continue
        containers.runc.kill(record.id, "TERM")
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and containers.runc.list().get(record.id) == "running":
            time.sleep(0.1)
        if containers.runc.list().get(record.id) in ("running", "paused"):
            containers.runc.kill(record.id, "KILL")
        deadline = time.monotonic() + 30
        while containers.runc.list().get(record.id) in ("running", "paused"):
            if time.monotonic() > deadline:
                raise ContainerError(f"container {record.name} did not stop after SIGKILL")
            time.sleep(0.1)
        click.echo(ref)


def _age(created: str) -> str:
    try:
        then = dt.datetime.fromisoformat(created)
    except ValueError:
        return "?"
    seconds = int((dt.datetime.now(dt.UTC) - then).total_seconds())
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} seconds ago"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


@click.command("ps")
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all containers (default: running ones).")
@click.option("-q", "--quiet", is_flag=True, help="Only container ids.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate ids and commands.")
@global_options
def ps(show_all: bool, quiet: bool, no_trunc: bool) -> None:
    """List containers."""
    containers = Containers(get_options().root)
    states = containers.runc.list()
    rows = [["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]]
    for record in containers.records():
        status = containers.status(record, states)
        if not show_all and status not in ("running", "paused"):
            continue
        command = shlex.join(record.command)
        if not no_trunc and len(command) > 20:
            command = command[:19] + "…"
        short_id = record.id if no_trunc else record.id[:12]
        if quiet:
            click.echo(short_id)
            continue
        rows.append([short_id, record.image, command, _age(record.created), status.capitalize(), record.name])
    if not quiet:
        click.echo(_table(rows))


@click.command("rm")
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@global_options
@click.argument("containers_", metavar="NAME|ID...", nargs=-1, required=True)
def rm(force: bool, containers_: Sequence[str]) -> None:
    """Remove containers: their writable layer, bundle and layer mounts."""
    root = get_options().root
    containers = Containers(root)
    failed: list[str] = []
    for ref in containers_:
        try:
            record = containers.find(ref)
            remove_container(root, containers, record, force=force)
            click.echo(ref)
        except LazypullError as err:
            from lazypull.cli.main import error_line

            click.echo(f"lazypull: error: {error_line(err)}", err=True)
            failed.append(ref)
    if failed:
        click.get_current_context().exit(1)


COMMANDS: list[click.Command] = [run, create, start, stop, logs, ps, rm, exec_command]
