"""Containers under ``<root>/containers/<id>/``: create (overlay rootfs, bundle), run, list, remove.

A container directory holds the runc bundle (``config.json``, ``rootfs/``), the overlay's ``upper/``
and ``work/``, the numbered lower-dir links ``l/``, the generated ``etc/`` files and ``state.json``
(our record: name, image, command, status, exit code). The overlay rootfs is mounted while the
container runs and unmounted when it stops; the writable layer stays until ``remove``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lazypull.errors import ContainerError
from lazypull.image.rootdir import prepare_root
from lazypull.image.runconfig import RunConfig
from lazypull.removetree import remove_tree
from lazypull.runtime.hostfiles import write_host_files
from lazypull.runtime.options import ContainerOptions
from lazypull.runtime.overlay import is_mountpoint, mount_overlay, unmount
from lazypull.runtime.runc import Runc, Stdio, console_size, signals_held
from lazypull.runtime.spec import build_spec, process_args
from lazypull.runtime.users import resolve_user

log = logging.getLogger(__name__)

_NO_CONFIG = RunConfig()  # an image whose config sets none of User, Env, Entrypoint, Cmd, WorkingDir
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


def new_container_id() -> str:
    """A fresh random container id (64 hex digits, like Docker's)."""
    return os.urandom(32).hex()  # what secrets.token_hex does, without importing hmac and OpenSSL


@dataclass
class ContainerRecord:
    """What ``state.json`` says about a container (what ``ps`` shows)."""

    id: str
    name: str
    image: str
    command: list[str]
    created: str
    status: str = "created"           # created | running | exited
    exit_code: int | None = None
    snapshotter: str = "overlayfs"
    tty: bool = False
    lowers: list[str] = field(default_factory=list)   # top first
    labels: dict[str, str] = field(default_factory=dict)
    volatile: bool = False            # overlay mounted "volatile" (ContainerOptions.volatile)

    def to_json(self) -> dict[str, Any]:
        """The ``state.json`` form."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ContainerRecord:
        """Parse ``state.json``; unknown keys are ignored."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class Containers:
    """The containers of one store root, with runc state in ``<root>/runc``."""

    def __init__(self, root: Path) -> None:
        self.root = prepare_root(root)      # 0700: bundles hold the containers' rootfs and layers
        self.directory = self.root / "containers"
        self.runc = Runc(self.root / "runc")

    # -- paths and records -----------------------------------------------------------------------

    def path(self, container_id: str) -> Path:
        """The container's directory (its runc bundle)."""
        if not re.fullmatch(r"[0-9a-f]{64}", container_id):
            raise ContainerError(f"not a container id: {container_id!r}")
        return self.directory / container_id

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def save(self, record: ContainerRecord) -> None:
        """Write ``state.json`` atomically."""
        path = self.path(record.id) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record.to_json(), indent=1))
        os.replace(tmp, path)

    def records(self) -> list[ContainerRecord]:
        """Every container with a readable record, oldest first."""
        result: list[ContainerRecord] = []
        if not self.directory.is_dir():
            return result
        for entry in self.directory.iterdir():
            state = entry / "state.json"
            try:
                result.append(ContainerRecord.from_json(json.loads(state.read_text())))
            except (OSError, ValueError, TypeError) as err:
                if entry.name != ".lock":
                    log.debug("skipping %s: %s", entry, err)
        return sorted(result, key=lambda r: r.created)

    def find(self, ref: str) -> ContainerRecord:
        """A container by name, full id or unique id prefix."""
        records = self.records()
        for record in records:
            if ref in (record.name, record.id):
                return record
        matches = [r for r in records if len(ref) >= 3 and r.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ContainerError(f"container id prefix {ref!r} is ambiguous")
        raise ContainerError(f"no such container: {ref}")

    def status(self, record: ContainerRecord, runc_states: Mapping[str, str] | None = None) -> str:
        """``running``, ``created``, ``exited (N)``, ``failed to start`` or ``unknown`` (runc forgot a
        running one: its ``lazypull run`` was killed)."""
        states = self.runc.list() if runc_states is None else runc_states
        live = states.get(record.id)
        if live in ("running", "paused", "created"):
            return live
        if record.status == "exited":
            return f"exited ({record.exit_code})" if record.exit_code is not None else "failed to start"
        if record.status == "created":
            return "created"
        return "unknown"

    # -- lifecycle -------------------------------------------------------------------------------

    def create(self, *, image: str, image_config: RunConfig = _NO_CONFIG, lowers_top_first: Sequence[Path],
               options: ContainerOptions, name: str | None = None, snapshotter: str = "overlayfs",
               container_id: str | None = None) -> ContainerRecord:
        """Mount the rootfs and write the bundle; the container is ready for :meth:`run`."""
        container_id = container_id or new_container_id()
        with self._lock():
            taken = {r.name for r in self.records()}
            if name is not None:
                if not _NAME_RE.match(name):
                    raise ContainerError(f"invalid container name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
                if name in taken:
                    raise ContainerError(f"container name {name!r} is already in use")
            else:
                base = re.sub(r"[^a-zA-Z0-9_.-]", "-", image.rsplit("/", 1)[-1].split("@")[0].split(":")[0])
                name = f"{base or 'container'}-{container_id[:5]}"
            bundle = self.path(container_id)
            try:
                bundle.mkdir(parents=True)
            except FileExistsError as err:
                raise ContainerError(f"container {container_id} already exists") from err
            record = ContainerRecord(
                id=container_id, name=name, image=image, command=[],
                created=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                snapshotter=snapshotter, tty=options.tty, lowers=[str(p) for p in lowers_top_first],
                labels=dict(options.labels), volatile=options.volatile)
            try:
                self.save(record)
            except OSError as err:
                self._destroy(container_id)
                raise _named(err, container_id, bundle) from err
        try:
            lowers = list(lowers_top_first)
            if not lowers:  # an image without layers: overlay needs one lower dir
                (bundle / "empty").mkdir()
                lowers = [bundle / "empty"]
            rootfs = bundle / "rootfs"
            mount_overlay(lowers, bundle / "upper", bundle / "work", rootfs, bundle / "l",
                          volatile=options.volatile)
            user = resolve_user(rootfs, options.user if options.user is not None else image_config.user)
            hostname = options.hostname or (socket.gethostname() if options.network == "host"
                                             else container_id[:12])
            host_files = write_host_files(bundle / "etc", hostname=hostname, network=options.network)
            spec = build_spec(image_config=image_config, options=options, user=user, hostname=hostname,
                              host_files=host_files, console_size=console_size() if options.tty else None)
            (bundle / "config.json").write_text(json.dumps(spec, indent=1))
            record.command = process_args(image_config, options)
            self.save(record)
            return record
        except BaseException as err:
            self._destroy(container_id)
            if isinstance(err, OSError) and err.filename is None:
                raise _named(err, container_id, bundle) from err
            raise

    def run(self, record: ContainerRecord, *, tty: bool, stdio: Stdio | None = None) -> int:
        """Run a created container in the foreground; returns its exit status. Unmounts the rootfs after."""
        bundle = self.path(record.id)
        rootfs = bundle / "rootfs"
        if not is_mountpoint(rootfs):
            mount_overlay([Path(p) for p in record.lowers] or [bundle / "empty"], bundle / "upper",
                          bundle / "work", rootfs, bundle / "l", volatile=record.volatile)
        record.status = "running"
        self.save(record)
        code: int | None = None
        try:
            code = self.runc.run(record.id, bundle, tty_mode=tty, stdio=stdio or Stdio())
            return code
        finally:
            with signals_held():    # a second TERM/HUP/INT must not leave the rootfs mounted
                record.status = "exited"
                record.exit_code = code
                with contextlib.suppress(FileNotFoundError):  # `rm -f` removed the container while it ran
                    self.save(record)
                with contextlib.suppress(ContainerError):
                    self.runc.delete(record.id, force=True)
                unmount(rootfs)

    def remove(self, record: ContainerRecord, *, force: bool = False) -> None:
        """Delete the container: its runc state, rootfs mount, writable layer and bundle."""
        live = self.runc.status(record.id)
        if live in ("running", "paused") and not force:
            raise ContainerError(f"container {record.name} is {live}: stop it first or use rm -f")
        if live is not None:
            if live in ("running", "paused"):
                self.runc.kill(record.id, "KILL")
            self.runc.delete(record.id, force=True)
        self._destroy(record.id)

    def _destroy(self, container_id: str) -> None:
        bundle = self.path(container_id)
        rootfs = bundle / "rootfs"
        unmount(rootfs)
        if is_mountpoint(rootfs):  # never delete through a mounted rootfs (it would reach the layers)
            raise ContainerError(f"{rootfs} is still mounted; not removing container {container_id}")
        remove_tree(bundle)     # a container can leave a tree deeper than shutil.rmtree's recursion


def _named(err: OSError, container_id: str, bundle: Path) -> ContainerError:
    """A write that failed without naming its file (ENOSPC from write(2)): say which container and where."""
    return ContainerError(f"creating container {container_id[:12]} in {bundle}: {err.strerror or err}")
