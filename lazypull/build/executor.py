"""The instructions' semantics: stages, steps, layers, config and history, as Docker defines them.

A stage starts from a base image (given by a :class:`BaseProvider`: mounted lazily or extracted by
the caller), ``scratch`` or an earlier stage. Each ``RUN`` runs in runc over an overlayfs of the
stage's layers (``lazypull.runtime.Containers``); ``COPY``/``ADD``/``WORKDIR`` work on an overlay
mounted here. The upper directory of a step becomes its layer (:mod:`.diff`), stored in the format
asked for (:mod:`.layer`) and extracted as a lower directory for the next steps only when one needs
the tree. Metadata instructions change the config and add an empty-layer history entry.
"""

from __future__ import annotations

import bz2
import contextlib
import copy
import datetime as dt
import gzip
import json
import lzma
import os
import posixpath
import re
import tarfile
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, cast

from lazypull.build.cache import BuildCache, CachedStep, step_key
from lazypull.build.context import SourceRoot
from lazypull.build.diff import write_diff
from lazypull.build.dockerfile import Dockerfile, Instruction, parse_dockerfile, parse_json_form
from lazypull.build.errors import BuildError, RunError
from lazypull.build.fsops import (
    CopyAttrs,
    TreeCopier,
    make_dirs,
    open_source_file,
    scoped_path,
)
from lazypull.build.layer import BuiltLayer, LayerFormat, convert_blob, in_format, store_layer
from lazypull.build.progress import Progress
from lazypull.build.words import expand_word, expand_words, key_values, split_raw
from lazypull.errors import LazypullError
from lazypull.format.compression import detect_compression
from lazypull.format.layerkind import is_lazy
from lazypull.image import Store
from lazypull.image import mediatypes as mt
from lazypull.registry import Descriptor
from lazypull.removetree import remove_tree
from lazypull.runtime.overlay import is_mountpoint

DEFAULT_SHELL = ("/bin/sh", "-c")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_LABEL = "lazypull.build"
# Paths runc creates in a rootfs as mountpoints when the image lacks them: not the step's changes.
MOUNT_STUBS = ("proc", "dev", "sys", "etc/resolv.conf", "etc/hosts", "etc/hostname")
FILE_STEPS = frozenset({"RUN", "COPY", "ADD", "WORKDIR"})
# Where a COPY's sources are, and a key standing for their content (None: hash them).
_Sources = contextlib.AbstractContextManager[tuple[SourceRoot, "str | None"]]
_OUTPUT_TAIL = 200            # lines of a failing RUN's output repeated in quiet mode
_MAX_LINE = 64 << 10          # bytes of one output line held in memory
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_NS = {"ns": 1, "us": 1000, "µs": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


@dataclass
class BaseImage:
    """What a stage starts from: the image's config document, layers, and how to get their lower
    directories (``mount``, top first): called only when a step needs the tree, so a build whose
    steps all come from the cache mounts nothing."""

    name: str
    key: str                             # the manifest digest (the cache chain's start)
    config: dict[str, Any]
    layers: list[Descriptor]
    diff_ids: list[str]
    mount: Callable[[], list[Path]]
    source: str | None = None
    _lowers: list[Path] | None = field(default=None, repr=False)

    def lowers_top_first(self) -> list[Path]:
        """The lower directories, mounted (or extracted) on the first call."""
        if self._lowers is None:
            self._lowers = self.mount()
        return self._lowers


class BaseProvider(Protocol):
    """Pulls (lazily if it can) and mounts an image named by a FROM or COPY --from."""

    def __call__(self, ref: str, platform: str | None) -> BaseImage: ...

    def fetch(self, desc: Descriptor, source: str | None) -> None:
        """Download a base layer blob into the store (from the image's ``source`` registry)."""


@dataclass(frozen=True)
class BuildOptions:
    """What ``lazypull build`` was asked for."""

    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    layer_format: LayerFormat = "gzip"
    platform: str | None = None


@dataclass
class BuildResult:
    """The image made: its manifest and config, in the store."""

    manifest: Descriptor
    config_digest: str
    source: str | None
    stage: str


@dataclass
class _Stage:
    index: int
    name: str | None
    instructions: list[Instruction]
    from_ins: Instruction
    config: dict[str, Any] = field(default_factory=dict)
    layers: list[Descriptor] = field(default_factory=list)
    diff_ids: list[str] = field(default_factory=list)
    lowers: list[Path | Descriptor | BaseImage] = field(default_factory=list)      # bottom first
    history: list[dict[str, Any]] = field(default_factory=list)
    key: str = ""
    args: dict[str, str] = field(default_factory=dict)
    shell: list[str] = field(default_factory=lambda: list(DEFAULT_SHELL))
    source: str | None = None
    cmd_set: bool = False
    done: bool = False
    numbers: dict[int, int] = field(default_factory=dict)      # id(instruction) -> k of "[k/n]"
    total: int = 1

    @property
    def run_config(self) -> dict[str, Any]:
        cfg = self.config.setdefault("config", {})
        assert isinstance(cfg, dict)
        return cfg

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for item in self.run_config.get("Env") or []:
            key, _, value = str(item).partition("=")
            values[key] = value
        return values


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _duration(text: str, what: str) -> int:
    """A Go duration (``30s``, ``1m30s``) in nanoseconds."""
    pos, total = 0, 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += int(float(match.group(1)) * _DURATION_NS[match.group(2)])
        pos = match.end()
    if pos != len(text) or not text:
        raise BuildError(f"{what}: invalid duration {text!r}")
    return total


def _platform_args(platform: str | None) -> dict[str, str]:
    """The platform arguments BuildKit and buildah predefine (TARGETPLATFORM, BUILDARCH, ...); a stage
    sees them when it declares them (``ARG TARGETARCH``), FROM lines always."""
    from lazypull.registry import Platform, default_platform

    build = default_platform()
    try:
        target = Platform.parse(platform) if platform else build
    except ValueError as err:
        raise BuildError(f"--platform: {err}") from err
    values: dict[str, str] = {}
    for prefix, plat in (("BUILD", build), ("TARGET", target)):
        values.update({f"{prefix}PLATFORM": str(plat), f"{prefix}OS": plat.os,
                       f"{prefix}ARCH": plat.architecture, f"{prefix}VARIANT": plat.variant or ""})
    return values


def _check_config(config: Mapping[str, Any], name: str) -> None:
    """Refuse a base image config whose fields a build extends with the wrong types (the image's
    author wrote it): one error naming the image and the field, never a traceback later."""
    from lazypull.errors import ImageError
    from lazypull.image.runconfig import run_config

    run_config(config, name)            # User, Env, Entrypoint, Cmd, WorkingDir
    inner = config.get("config")
    if inner is not None and not isinstance(inner, dict):
        raise ImageError(f"{name}: the image config's config is not an object")
    for key, kind in (("Labels", dict), ("ExposedPorts", dict), ("Volumes", dict), ("OnBuild", list),
                      ("Shell", list)):
        value = (inner or {}).get(key)
        if value is not None and not isinstance(value, kind):
            what = "an object" if kind is dict else "a list"
            raise ImageError(f"{name}: the image config's config.{key} is not {what}")
    history = config.get("history")
    if history is not None and not (isinstance(history, list)
                                    and all(isinstance(h, dict) for h in history)):
        raise ImageError(f"{name}: the image config's history is not a list of objects")
    triggers = (inner or {}).get("OnBuild") or []
    if not all(isinstance(t, str) for t in triggers):
        raise ImageError(f"{name}: the image config's config.OnBuild holds a non-string")


BZIP2_MAGIC, XZ_MAGIC = b"BZh", b"\xfd7zXZ\x00"     # ADD unpacks these too (gzip: format's sniffer)


def _decompressed(raw: BinaryIO) -> IO[bytes]:
    """The tar stream of a local archive ADD unpacks (gzip, bzip2, xz or plain)."""
    head = raw.read(6)
    raw.seek(0)
    if detect_compression(head) == "gzip":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if head.startswith(BZIP2_MAGIC):
        return cast(IO[bytes], bz2.BZ2File(raw, "rb"))
    if head.startswith(XZ_MAGIC):
        return cast(IO[bytes], lzma.LZMAFile(raw, "rb"))
    return raw


def _is_archive(anchor: Path, path: Path) -> bool:
    """Whether ADD unpacks this local file: a tar, plain or gzip/bzip2/xz compressed."""
    try:
        with open_source_file(anchor, path) as f:
            head = f.read(512)
            if detect_compression(head) != "gzip" and not head.startswith((BZIP2_MAGIC, XZ_MAGIC)):
                return len(head) >= 262 and head[257:262] == b"ustar"
            f.seek(0)
            with _decompressed(f) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
                tar.next()
            return True
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, BuildError):
        return False


class Builder:
    """One build of one Dockerfile: :meth:`build` runs the stages the target needs."""

    def __init__(self, *, root: Path, store: Store, dockerfile: Dockerfile, context: SourceRoot | None,
                 provider: BaseProvider, options: BuildOptions, progress: Progress,
                 workdir: Path) -> None:
        from lazypull.runtime import Containers

        self.root = root
        self.store = store
        self.df = dockerfile
        self.context = context
        self.provider = provider
        self.options = options
        self.progress = progress
        self.workdir = workdir
        self.cache = BuildCache(root, store)
        self.containers = Containers(root)
        self.stages: list[_Stage] = []
        self.global_args: dict[str, str] = _platform_args(options.platform)
        self.used_args: set[str] = set()
        self._images: dict[str, BaseImage] = {}
        self._step = 0

    # -- the stages --------------------------------------------------------------------------------

    def _split(self) -> None:
        current: _Stage | None = None
        for ins in self.df.instructions:
            if ins.keyword == "FROM":
                words = expand_words(ins.args, self.global_args, self.df.escape)
                name = None
                if len(words) == 3 and words[1].lower() == "as":
                    name = words[2].lower()
                elif len(words) != 1:
                    raise self.df.error(ins, "expected FROM [--platform=P] IMAGE [AS NAME]")
                if name is not None and not re.fullmatch(r"[a-z][a-z0-9-_.]*", name):
                    raise self.df.error(ins, f"invalid stage name {name!r}")
                if name is not None and any(s.name == name for s in self.stages):
                    raise self.df.error(ins, f"duplicate stage name {name!r}")
                current = _Stage(len(self.stages), name, [], ins)
                self.stages.append(current)
            elif current is None:
                if ins.keyword != "ARG":
                    raise self.df.error(ins, "only ARG may come before the first FROM")
                for key, value in self._arg_pairs(ins, self.global_args):
                    if value is not None or key not in self.global_args:   # TARGETARCH & co. keep theirs
                        self.global_args[key] = value if value is not None else ""
            else:
                current.instructions.append(ins)
        if not self.stages:
            raise BuildError(f"{self.df.where}: no FROM instruction")

    def _arg_pairs(self, ins: Instruction, env: Mapping[str, str]) -> list[tuple[str, str | None]]:
        pairs: list[tuple[str, str | None]] = []
        for raw in split_raw(ins.args, self.df.escape):
            key, sep, default = raw.partition("=")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise self.df.error(ins, f"invalid argument name {key!r}")
            self.used_args.add(key)
            if key in self.options.build_args:
                pairs.append((key, self.options.build_args[key]))
            elif sep:
                pairs.append((key, expand_word(default, env, self.df.escape)))
            else:
                pairs.append((key, None))
        if not pairs:
            raise self.df.error(ins, "ARG needs a name")
        return pairs

    def _stage_named(self, ref: str, before: int) -> _Stage | None:
        lowered = ref.lower()
        for stage in self.stages[:before]:
            if stage.name == lowered or (ref.isdigit() and int(ref) == stage.index):
                return stage
        return None

    def _needed(self, target: _Stage) -> set[int]:
        needed: set[int] = set()
        pending = [target]
        while pending:
            stage = pending.pop()
            if stage.index in needed:
                continue
            needed.add(stage.index)
            refs = [expand_words(stage.from_ins.args, self.global_args, self.df.escape)[0]]
            refs += [ins.flags["from"] for ins in stage.instructions
                     if ins.keyword in ("COPY", "ADD") and "from" in ins.flags]
            for ref in refs:
                dep = self._stage_named(ref, stage.index)
                if dep is not None:
                    pending.append(dep)
        return needed

    def build(self) -> _Stage:
        """Build the target stage (default: the last) and the stages it needs; returns it."""
        self._split()
        target = self.stages[-1]
        if self.options.target is not None:
            found = next((s for s in self.stages if s.name == self.options.target.lower()), None)
            if found is None:
                raise BuildError(f"target stage {self.options.target!r} not found in {self.df.where}")
            target = found
        needed = self._needed(target)
        for stage in self.stages:
            if stage.index in needed:
                self._run_stage(stage)
        return target

    # -- one stage ---------------------------------------------------------------------------------

    def _title(self, stage: _Stage, number: int, text: str) -> str:
        if not stage.numbers:           # once per stage: a Dockerfile may have many thousand steps
            steps = [ins for ins in stage.instructions if ins.keyword in FILE_STEPS]
            stage.numbers = {id(ins): n for n, ins in enumerate(steps, 2)}
            stage.total = 1 + len(steps)
        label = f"{stage.name or f'stage-{stage.index}'} " if len(self.stages) > 1 else ""
        return f"[{label}{number}/{stage.total}] {text}"

    def _run_stage(self, stage: _Stage) -> None:
        ins = stage.from_ins
        words = expand_words(ins.args, self.global_args, self.df.escape)
        ref = words[0]
        unknown = set(ins.flags) - {"platform"}
        if unknown:
            raise self.df.error(ins, f"unknown flag --{sorted(unknown)[0]}")
        self.progress.start(self._title(stage, 1, f"FROM {ref}"))
        parent = self._stage_named(ref, stage.index)
        if parent is not None:
            stage.config = copy.deepcopy(parent.config)
            stage.layers, stage.diff_ids = list(parent.layers), list(parent.diff_ids)
            stage.lowers, stage.history = list(parent.lowers), copy.deepcopy(parent.history)
            stage.key, stage.source, stage.shell = parent.key, parent.source, list(parent.shell)
        elif ref == "scratch":
            from lazypull.registry import default_platform

            platform = default_platform()
            stage.config = {"architecture": platform.architecture, "os": platform.os, "config": {},
                            "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
            stage.key = step_key("", {"from": "scratch", "format": self.options.layer_format})
        else:
            try:
                base = self._image(ref, ins.flags.get("platform") or self.options.platform)
                _check_config(base.config, ref)
            except LazypullError as err:
                raise self.df.error(ins, str(err) if ref in str(err) else f"{ref}: {err}") from err
            stage.config = copy.deepcopy(base.config)
            stage.layers, stage.diff_ids = list(base.layers), list(base.diff_ids)
            stage.lowers = [base]
            stage.history = list(stage.config.get("history") or [])
            stage.key = step_key("", {"from": base.key, "format": self.options.layer_format})
            stage.source = base.source
            shell = stage.run_config.get("Shell")
            if isinstance(shell, list) and shell and all(isinstance(s, str) for s in shell):
                stage.shell = list(shell)
        self.progress.done()
        stage.cmd_set = False
        triggers = stage.run_config.pop("OnBuild", None) or []
        for trigger in triggers if isinstance(triggers, list) else []:
            parsed = parse_dockerfile(str(trigger), f"{self.df.where}:{ins.line} (ONBUILD of {ref})")
            for trig in parsed.instructions:
                if trig.keyword in ("ONBUILD", "FROM", "MAINTAINER"):
                    raise self.df.error(ins, f"ONBUILD trigger {trig.keyword} of {ref} is not allowed")
                self._dispatch(stage, Instruction(trig.keyword, trig.args, ins.line, trig.flags,
                                                  trig.heredocs))
        for item in stage.instructions:
            try:
                self._dispatch(stage, item)
            except RunError:
                raise
            except LazypullError as err:        # a source, an archive, the runtime: name the line too
                if str(err).startswith(f"{self.df.where}:"):
                    raise
                raise self.df.error(item, str(err)) from err
        stage.done = True

    def _image(self, ref: str, platform: str | None) -> BaseImage:
        if ref not in self._images:
            self._images[ref] = self.provider(ref, platform)
        return self._images[ref]

    def _expand_env(self, stage: _Stage) -> dict[str, str]:
        values = dict(stage.args)
        values.update(stage.env())
        return values

    def _history(self, stage: _Stage, created_by: str, *, empty: bool) -> None:
        entry: dict[str, Any] = {"created": _now(), "created_by": created_by, "comment": "lazypull build"}
        if empty:
            entry["empty_layer"] = True
        stage.history.append(entry)

    def _meta(self, stage: _Stage, ins: Instruction, text: str | None = None) -> None:
        """A config-only instruction: history entry and cache chain."""
        created_by = text or ins.text
        self._history(stage, created_by, empty=True)
        stage.key = step_key(stage.key, {"meta": created_by})

    def _dispatch(self, stage: _Stage, ins: Instruction) -> None:
        handler = getattr(self, f"_do_{ins.keyword.lower()}", None)
        if handler is None:
            raise self.df.error(ins, "instruction not supported")
        allowed = {"COPY": {"from", "chown", "chmod", "link"}, "ADD": {"chown", "chmod", "link", "from"},
                   "HEALTHCHECK": {"interval", "timeout", "start-period", "start-interval", "retries"}}
        unknown = set(ins.flags) - allowed.get(ins.keyword, set())
        if unknown:
            raise self.df.error(ins, f"unknown flag --{sorted(unknown)[0]}")
        handler(stage, ins)

    # -- metadata instructions ----------------------------------------------------------------------

    def _do_env(self, stage: _Stage, ins: Instruction) -> None:
        env = stage.env()
        pairs = key_values(ins.args, self._expand_env(stage), self.df.escape, "ENV")
        for key, value in pairs:
            env[key] = value
        stage.run_config["Env"] = [f"{k}={v}" for k, v in env.items()]
        self._meta(stage, ins, "ENV " + " ".join(f"{k}={v}" for k, v in pairs))

    def _do_arg(self, stage: _Stage, ins: Instruction) -> None:
        pairs = self._arg_pairs(ins, self._expand_env(stage))
        for key, value in pairs:
            if value is None and key in self.global_args:
                value = self.global_args[key]
            if value is not None:
                stage.args[key] = value
        self._meta(stage, ins, "ARG " + " ".join(f"{k}={stage.args[k]}" if k in stage.args else k
                                                 for k, _ in pairs))

    def _do_label(self, stage: _Stage, ins: Instruction) -> None:
        labels = stage.run_config.get("Labels") or {}
        for key, value in key_values(ins.args, self._expand_env(stage), self.df.escape, "LABEL"):
            labels[key] = value
        stage.run_config["Labels"] = labels
        self._meta(stage, ins)

    def _do_maintainer(self, stage: _Stage, ins: Instruction) -> None:
        stage.config["author"] = ins.args
        self._meta(stage, ins)

    def _do_expose(self, stage: _Stage, ins: Instruction) -> None:
        ports = stage.run_config.get("ExposedPorts") or {}
        for word in expand_words(ins.args, self._expand_env(stage), self.df.escape):
            port, _, proto = word.partition("/")
            if not re.fullmatch(r"\d{1,5}(-\d{1,5})?", port) or proto not in ("", "tcp", "udp", "sctp"):
                raise self.df.error(ins, f"invalid port {word!r}")
            ports[f"{port}/{proto or 'tcp'}"] = {}
        stage.run_config["ExposedPorts"] = ports
        self._meta(stage, ins)

    def _do_volume(self, stage: _Stage, ins: Instruction) -> None:
        volumes = stage.run_config.get("Volumes") or {}
        paths = parse_json_form(ins.args)
        if paths is None:
            paths = expand_words(ins.args, self._expand_env(stage), self.df.escape)
        if not paths:
            raise self.df.error(ins, "VOLUME needs a path")
        for path in paths:
            volumes[path] = {}
        stage.run_config["Volumes"] = volumes
        self._meta(stage, ins)

    def _do_user(self, stage: _Stage, ins: Instruction) -> None:
        user = expand_word(ins.args, self._expand_env(stage), self.df.escape)
        if not user:
            raise self.df.error(ins, "USER needs a user")
        stage.run_config["User"] = user
        self._meta(stage, ins)

    def _do_stopsignal(self, stage: _Stage, ins: Instruction) -> None:
        signal = expand_word(ins.args, self._expand_env(stage), self.df.escape)
        if not re.fullmatch(r"(SIG)?[A-Z0-9+-]+|\d+", signal):
            raise self.df.error(ins, f"invalid signal {signal!r}")
        stage.run_config["StopSignal"] = signal
        self._meta(stage, ins)

    def _command(self, stage: _Stage, ins: Instruction) -> list[str]:
        form = ins.exec_form()
        return form if form is not None else [*stage.shell, ins.args]

    def _do_cmd(self, stage: _Stage, ins: Instruction) -> None:
        stage.run_config["Cmd"] = self._command(stage, ins)
        stage.cmd_set = True
        self._meta(stage, ins)

    def _do_entrypoint(self, stage: _Stage, ins: Instruction) -> None:
        stage.run_config["Entrypoint"] = self._command(stage, ins)
        if not stage.cmd_set:            # an ENTRYPOINT drops the Cmd the base image had
            stage.run_config["Cmd"] = None
        self._meta(stage, ins)

    def _do_shell(self, stage: _Stage, ins: Instruction) -> None:
        form = ins.exec_form()
        if not form:
            raise self.df.error(ins, 'SHELL must be given in JSON form: SHELL ["executable", "parameters"]')
        stage.shell = form
        stage.run_config["Shell"] = form
        self._meta(stage, ins)

    def _do_onbuild(self, stage: _Stage, ins: Instruction) -> None:
        keyword = ins.args.split(None, 1)[0].upper() if ins.args.strip() else ""
        if keyword in ("ONBUILD", "FROM", "MAINTAINER", ""):
            raise self.df.error(ins, f"{keyword or 'an instruction'} is not allowed as an ONBUILD trigger")
        triggers = stage.run_config.get("OnBuild") or []
        triggers.append(ins.args)
        stage.run_config["OnBuild"] = triggers
        self._meta(stage, ins)

    def _do_healthcheck(self, stage: _Stage, ins: Instruction) -> None:
        args = ins.args.strip()
        if args.upper() == "NONE":
            stage.run_config["Healthcheck"] = {"Test": ["NONE"]}
            self._meta(stage, ins)
            return
        keyword, _, rest = args.partition(" ")
        if keyword.upper() != "CMD" or not rest.strip():
            raise self.df.error(ins, "expected HEALTHCHECK [OPTIONS] CMD command, or HEALTHCHECK NONE")
        form = parse_json_form(rest)
        check: dict[str, Any] = {"Test": ["CMD", *form] if form is not None else ["CMD-SHELL", rest.strip()]}
        for flag, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"),
                          ("start-interval", "StartInterval")):
            if flag in ins.flags:
                check[key] = _duration(ins.flags[flag], f"HEALTHCHECK --{flag}")
        if "retries" in ins.flags:
            if not ins.flags["retries"].isdigit():
                raise self.df.error(ins, f"invalid --retries {ins.flags['retries']!r}")
            check["Retries"] = int(ins.flags["retries"])
        stage.run_config["Healthcheck"] = check
        self._meta(stage, ins)

    # -- filesystem steps ---------------------------------------------------------------------------

    def _next_number(self, stage: _Stage, ins: Instruction) -> int:
        self._title(stage, 0, "")
        return stage.numbers.get(id(ins), stage.total)      # an ONBUILD trigger: the stage's last

    def _lowers(self, stage: _Stage) -> list[Path]:
        """The stage's lower directories, top first, extracting cached layers not yet on disk."""
        from lazypull.runtime.extract import extract_layer
        from lazypull.runtime.layers import snapshot_dir

        result: list[Path] = []
        for index, lower in enumerate(stage.lowers):
            if isinstance(lower, BaseImage):
                result.extend(reversed(lower.lowers_top_first()))
                continue
            if isinstance(lower, Descriptor):
                dest = snapshot_dir(self.root, lower.digest)
                blob = self.store.blob_path(lower.digest)
                if not dest.is_dir():
                    if blob is None:
                        raise BuildError(f"layer {lower.digest} is not in the store")
                    extract_layer(blob, dest, label=f"layer {lower.digest}",
                                  skip_estargz_metadata=is_lazy(lower.annotations))
                stage.lowers[index] = dest
                lower = dest
            result.append(lower)
        result.reverse()
        return list(dict.fromkeys(result))

    def _add_layer(self, stage: _Stage, layer: BuiltLayer | None, created_by: str) -> None:
        if layer is None:
            self._history(stage, created_by, empty=True)
            return
        stage.layers.append(layer.descriptor)
        stage.diff_ids.append(layer.diff_id)
        stage.lowers.append(layer.descriptor)
        self._history(stage, created_by, empty=False)

    def _cached(self, stage: _Stage, key: str, created_by: str) -> bool:
        if self.options.no_cache:
            return False
        hit = self.cache.get(key)
        if hit is None:
            return False
        self.progress.cached()
        layer = BuiltLayer(hit.layer, hit.diff_id or "") if hit.layer is not None else None
        self._add_layer(stage, layer, created_by)
        stage.key = key
        return True

    def _commit_upper(self, stage: _Stage, upper: Path, key: str, created_by: str,
                      skip: frozenset[str] = frozenset()) -> None:
        tar_path = self.workdir / f"layer-{self._step}.tar"
        with open(tar_path, "wb") as out:
            count = write_diff(upper, out, skip=skip)
        layer = store_layer(self.store, tar_path, self.options.layer_format) if count else None
        tar_path.unlink()
        self.cache.put(key, CachedStep(layer.descriptor if layer else None, layer.diff_id if layer else None))
        self._add_layer(stage, layer, created_by)
        stage.key = key

    @contextlib.contextmanager
    def _mounted(self, stage: _Stage) -> Iterator[tuple[Path, Path]]:
        """The stage's tree on an overlay with a fresh upper: (merged, upper); unmounted after."""
        from lazypull.runtime.overlay import mount_overlay, unmount

        self._step += 1
        step = self.workdir / f"step-{self._step}"
        lowers = self._lowers(stage)
        if not lowers:
            (step / "empty").mkdir(parents=True)
            lowers = [step / "empty"]
        merged = step / "merged"
        mount_overlay(lowers, step / "upper", step / "work", merged, step / "l")
        try:
            yield merged, step / "upper"
        finally:
            unmount(merged)
        # the caller has read the upper dir by now (inside the with block)

    def _discard_step(self) -> None:
        step = self.workdir / f"step-{self._step}"
        if not is_mountpoint(step / "merged"):
            remove_tree(step)

    def _workdir_of(self, stage: _Stage) -> str:
        return str(stage.run_config.get("WorkingDir") or "/")

    def _do_workdir(self, stage: _Stage, ins: Instruction) -> None:
        path = expand_word(ins.args, self._expand_env(stage), self.df.escape)
        if not path:
            raise self.df.error(ins, "WORKDIR needs a path")
        path = os.path.normpath(os.path.join(self._workdir_of(stage), path))
        stage.run_config["WorkingDir"] = path
        created_by = f"WORKDIR {path}"
        self.progress.start(self._title(stage, self._next_number(stage, ins), created_by))
        key = step_key(stage.key, {"op": "WORKDIR", "path": path})
        if self._cached(stage, key, created_by):
            return
        with self._mounted(stage) as (merged, upper):
            make_dirs(merged, path)
            self._commit_upper(stage, upper, key, created_by)
        self._discard_step()
        self.progress.done()

    def _copy_attrs(self, merged: Path, ins: Instruction) -> CopyAttrs:
        from lazypull.runtime.users import resolve_user

        uid = gid = mode = None
        if ins.flags.get("chown"):
            spec = ins.flags["chown"]
            try:
                user = resolve_user(merged, spec)
            except LazypullError as err:
                raise self.df.error(ins, f"--chown={spec}: {err}") from err
            uid = user.uid
            gid = user.gid if ":" in spec else user.uid
        if ins.flags.get("chmod"):
            text = ins.flags["chmod"]
            if not re.fullmatch(r"[0-7]{3,4}", text):
                raise self.df.error(ins, f"invalid --chmod={text}: give octal mode bits such as 0755")
            mode = int(text, 8)
        return CopyAttrs(uid, gid, mode)

    def _do_add(self, stage: _Stage, ins: Instruction) -> None:
        self._do_copy(stage, ins, add=True)

    def _do_copy(self, stage: _Stage, ins: Instruction, add: bool = False) -> None:
        env = self._expand_env(stage)
        form = ins.exec_form()
        words = form if form is not None else expand_words(ins.args, env, self.df.escape)
        if len(words) < 2:
            raise self.df.error(ins, f"{ins.keyword} needs at least one source and a destination")
        *sources, dest = words
        if add:
            for source in sources:
                if re.match(r"^[a-z][a-z0-9+.-]*://|^git@", source):
                    raise self.df.error(ins, f"ADD of a URL ({source}) is not supported: download it in a "
                                        "RUN step or into the context")
        dest_abs = posixpath.normpath(posixpath.join(self._workdir_of(stage), dest))
        if dest.endswith(("/", "/.")) or dest in (".", ".."):      # a directory, as Docker reads it
            dest_abs = dest_abs.rstrip("/") + "/"
        from_ref = ins.flags.get("from")
        created_by = f"{ins.keyword} {' '.join(f'--{k}={v}' for k, v in ins.flags.items())} " \
                     f"{' '.join(sources)} {dest_abs} # buildkit".replace("  ", " ")
        self.progress.start(self._title(stage, self._next_number(stage, ins), ins.text))
        heredoc_root: _Sources | None = None
        if ins.heredocs:
            sources, heredoc_root = self._heredoc_sources(stage, ins, sources)
        with heredoc_root or self._source_root(stage, ins, from_ref) as (src_root, src_key):
            items = [item for source in sources for item in src_root.resolve(source)]
            if (len(items) > 1 or len(sources) > 1) and not dest_abs.endswith("/"):
                raise self.df.error(ins, "with more than one source the destination must be a directory "
                                    "and end with a /")
            digest = src_key or src_root.digest(items, owners=False)
            key = step_key(stage.key, {"op": ins.keyword, "sources": digest, "names": [i.name for i in items],
                                       "dest": dest_abs, "flags": dict(sorted(ins.flags.items()))})
            if self._cached(stage, key, created_by):
                return
            with self._mounted(stage) as (merged, upper):
                attrs = self._copy_attrs(merged, ins)
                owned = CopyAttrs(0 if attrs.uid is None and from_ref is None else attrs.uid,
                                  0 if attrs.gid is None and from_ref is None else attrs.gid, attrs.mode)
                copier = TreeCopier(merged, owned, source=src_root.root, skip=src_root.excluded)
                for item in items:
                    self._copy_item(merged, copier, item.path, item.name, item.is_dir, dest_abs, add, attrs,
                                    src_root.root)
                self._commit_upper(stage, upper, key, created_by)
            self._discard_step()
        self.progress.done()

    def _copy_item(self, merged: Path, copier: TreeCopier, src: Path, name: str, is_dir: bool, dest: str,
                   add: bool, attrs: CopyAttrs, anchor: Path) -> None:
        """``attrs``: what --chown/--chmod say (an unpacked archive keeps its own owners otherwise)."""
        uid = attrs.uid or 0
        gid = attrs.gid or 0
        if is_dir:
            real = make_dirs(merged, dest, uid=uid, gid=gid)
            copier.copy_children(src, real)
            return
        if add and _is_archive(anchor, src):
            real = make_dirs(merged, dest, uid=uid, gid=gid)
            unpacked = Path(tempfile.mkdtemp(dir=self.workdir, prefix="add-"))
            try:
                from lazypull.runtime.extract import extract_tar

                with _decompressed(open_source_file(anchor, src)) as stream:   # the runtime's hardened
                    extract_tar(stream, unpacked, label=f"ADD {name}")          # extractor: no escapes
                keep = TreeCopier(merged, CopyAttrs(attrs.uid, attrs.gid, None), source=unpacked)
                keep.copy_children(unpacked, real)
            except (OSError, EOFError, lzma.LZMAError) as err:
                raise BuildError(f"ADD {name}: cannot unpack the archive: {err}") from err
            finally:
                remove_tree(unpacked)
            return
        into_dir = dest.endswith("/")
        if not into_dir:
            existing = scoped_path(merged, dest)
            into_dir = existing.is_dir() and not existing.is_symlink()
        target = f"{dest.rstrip('/')}/{name}" if into_dir else dest
        parent = os.path.dirname(target.rstrip("/")) or "/"
        make_dirs(merged, parent, uid=uid, gid=gid)
        real_parent = scoped_path(merged, parent)
        copier.copy(src, real_parent / os.path.basename(target.rstrip("/")))

    def _heredoc_sources(self, stage: _Stage, ins: Instruction,
                         sources: list[str]) -> tuple[list[str], _Sources]:
        """``COPY <<EOF /dest``: each heredoc becomes a file named after it (variables expanded
        unless the delimiter is quoted, leading tabs dropped for ``<<-``), in a directory of its own."""
        docs = {doc.name: doc for doc in ins.heredocs}
        names = []
        for source in sources:
            match = re.fullmatch(r"<<-?(['\"]?)(\w+)\1", source)
            if match is None or match.group(2) not in docs:
                raise self.df.error(ins, f"{source}: heredocs and other sources cannot be mixed")
            names.append(match.group(2))
        self._step += 1
        directory = self.workdir / f"heredoc-{self._step}"
        directory.mkdir()
        env = self._expand_env(stage)
        for name in names:
            doc = docs[name]
            body = doc.body
            if doc.strip_tabs:
                body = "".join(line.lstrip("\t") for line in body.splitlines(keepends=True))
            if not doc.quoted:
                body = re.sub(r"\\\$|\$\{(\w+)\}|\$(\w+)",
                              lambda m: "$" if m.group(0) == "\\$" else env.get(m.group(1) or m.group(2), ""),
                              body)
            path = directory / name
            path.write_text(body)
            os.chmod(path, 0o644)

        @contextlib.contextmanager
        def root() -> Iterator[tuple[SourceRoot, str | None]]:
            try:
                yield SourceRoot(directory, strict=True, what="heredoc"), None
            finally:
                remove_tree(directory)
        return names, root()

    @contextlib.contextmanager
    def _source_root(self, stage: _Stage, ins: Instruction,
                     from_ref: str | None) -> Iterator[tuple[SourceRoot, str | None]]:
        """Where sources come from, and a key standing for its content (None: hash the sources)."""
        if from_ref is None:
            if self.context is None:
                raise self.df.error(ins, f"{ins.keyword} from the context, but the build has no context "
                                    "(Dockerfile from stdin)")
            yield self.context, None
            return
        ref = expand_word(from_ref, self.global_args, self.df.escape)
        source_stage = self._stage_named(ref, stage.index)
        if source_stage is None:
            if ref.isdigit() or self._stage_named(ref, len(self.stages)) is not None:
                raise self.df.error(ins, f"--from={ref}: a stage can only copy from an earlier stage")
            base = self._image(ref, self.options.platform)
            source_stage = _Stage(-1, ref, [], ins, lowers=[base],
                                  key=step_key("", {"from": base.key}))
        with self._mounted(source_stage) as (merged, _upper):
            yield SourceRoot(merged, strict=False, what=f"stage {ref}"), source_stage.key
        self._discard_step()

    def _do_run(self, stage: _Stage, ins: Instruction) -> None:
        from lazypull.image.runconfig import RunConfig
        from lazypull.runtime import ContainerOptions, Stdio, new_container_id

        form = ins.exec_form()
        if ins.flags:
            raise self.df.error(ins, f"RUN --{next(iter(ins.flags))} is not supported")
        if form is not None:
            argv = form
        elif ins.heredocs and re.fullmatch(r"(<<-?\s*['\"]?\w+['\"]?\s*)+", ins.args):
            argv = [*stage.shell, "".join(
                "".join(line.lstrip("\t") for line in doc.body.splitlines(keepends=True))
                if doc.strip_tabs else doc.body for doc in ins.heredocs)]
        elif ins.heredocs:
            script = ins.args + "\n" + "".join(doc.body + doc.name + "\n" for doc in ins.heredocs)
            argv = [*stage.shell, script]
        else:
            argv = [*stage.shell, ins.args]
        env = dict(stage.args)
        env.update(stage.env())
        if "PATH" not in env:
            env["PATH"] = DEFAULT_PATH
        env_list = [f"{k}={v}" for k, v in env.items()]
        user = str(stage.run_config.get("User") or "")
        workdir = self._workdir_of(stage)
        shown = " ".join(argv) if form is None else json.dumps(argv)
        created_by = f"RUN {shown} # buildkit"
        self.progress.start(self._title(stage, self._next_number(stage, ins), ins.text))
        key = step_key(stage.key, {"op": "RUN", "argv": argv, "env": env_list, "user": user,
                                   "workdir": workdir})
        if self._cached(stage, key, created_by):
            return
        lowers = self._lowers(stage)
        container_id = new_container_id()
        options = ContainerOptions(network="host", volatile=True, labels={BUILD_LABEL: "true"})
        config = RunConfig(user=user, env=tuple(env_list), cmd=tuple(argv), working_dir=workdir)
        record = self.containers.create(image=f"build-step-{self._step + 1}", image_config=config,
                                        lowers_top_first=lowers or [], options=options,
                                        container_id=container_id)
        bundle = self.containers.path(record.id)
        tail: deque[str] = deque(maxlen=_OUTPUT_TAIL)
        try:
            stubs = frozenset(self._stubs(bundle / "rootfs"))
            read_fd, write_fd = os.pipe()
            reader = threading.Thread(target=self._pump, args=(read_fd, tail), daemon=True)
            reader.start()
            try:
                with os.fdopen(write_fd, "wb", closefd=True) as out:
                    code = self.containers.run(record, tty=False, stdio=Stdio(stdout=out, stderr=out))
            finally:
                reader.join()
            if code != 0:
                if self.progress.quiet:
                    for line in tail:
                        self.progress.stream.write(line + "\n")
                self.progress.error(f"process \"{' '.join(argv)}\" did not complete successfully: "
                                    f"exit code {code}")
                raise RunError(f"{self.df.where}:{ins.line}: RUN {ins.args}: exit code {code}", code)
            self._commit_upper(stage, bundle / "upper", key, created_by, skip=stubs)
        finally:
            self.containers.remove(record, force=True)
        self.progress.done()

    def _pump(self, fd: int, tail: deque[str]) -> None:
        with os.fdopen(fd, "rb") as stream:
            while raw := stream.readline(_MAX_LINE):      # a step printing no newline is cut in pieces
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail.append(line)
                self.progress.output(line)

    def _stubs(self, rootfs: Path) -> list[str]:
        """The mountpoint paths runc will create because the tree lacks them (first missing component)."""
        missing = []
        for path in MOUNT_STUBS:
            parts = path.split("/")
            for n in range(1, len(parts) + 1):
                prefix = "/".join(parts[:n])
                if not os.path.lexists(rootfs / prefix):
                    missing.append(prefix)
                    break
        return missing

    # -- the image ----------------------------------------------------------------------------------

    def convert_base_layers(self, stage: _Stage) -> None:
        """With ``--estargz``/``--zstdchunked``, base layers not in that format are rewritten in it
        (downloaded first if they were only mounted), so the whole image is lazily pullable; layers
        already in it are kept as they are. Conversions are cached by blob digest."""
        fmt = self.options.layer_format
        for index, desc in enumerate(stage.layers):
            if in_format(desc, fmt):
                continue
            key = step_key("", {"convert": desc.digest, "format": fmt})
            self.progress.start(f"converting base layer {desc.digest} to {fmt}")
            hit = None if self.options.no_cache else self.cache.get(key)
            if hit is not None and hit.layer is not None and hit.diff_id:
                self.progress.cached()
                built = BuiltLayer(hit.layer, hit.diff_id)
            else:
                if self.store.blob_path(desc.digest) is None:
                    self.provider.fetch(desc, stage.source)
                blob = self.store.blob_path(desc.digest)
                if blob is None:
                    raise BuildError(f"base layer {desc.digest} is not in the store")
                built = convert_blob(self.store, blob, fmt)
                self.cache.put(key, CachedStep(built.descriptor, built.diff_id))
                self.progress.done()
            stage.layers[index] = built.descriptor
            stage.diff_ids[index] = built.diff_id

    def image_documents(self, stage: _Stage) -> tuple[bytes, bytes]:
        """The config and manifest of a built stage (OCI media types)."""
        config = stage.config
        config["created"] = _now()
        config["rootfs"] = {"type": "layers", "diff_ids": list(stage.diff_ids)}
        config["history"] = stage.history
        config.setdefault("os", "linux")
        raw_config = json.dumps(config, separators=(",", ":")).encode()
        info = self.store.put_blob(raw_config)
        layers = [Descriptor(mt.to_oci(d.media_type), d.digest, d.size, dict(d.annotations or {}))
                  for d in stage.layers]
        manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                    "config": {"mediaType": mt.OCI_CONFIG, "digest": info.digest, "size": info.size},
                    "layers": [d.to_json() for d in layers]}
        return raw_config, json.dumps(manifest, separators=(",", ":")).encode()


def unused_build_args(builder: Builder) -> list[str]:
    """``--build-arg`` names no ARG declared (Docker warns about them)."""
    return sorted(set(builder.options.build_args) - builder.used_args)


def build_image(builder: Builder, names: Sequence[str]) -> BuildResult:
    """Run the build and store the image under each name (none: only its digest is printed)."""
    with builder.store.lease():
        try:
            stage = builder.build()
        except RecursionError as err:       # a source tree deeper than the copier's recursion
            raise BuildError("a directory tree being copied is nested too deeply") from err
        builder.convert_base_layers(stage)
        _raw_config, raw_manifest = builder.image_documents(stage)
        manifest = builder.store.put_blob(raw_manifest)
        desc = Descriptor(mt.OCI_MANIFEST, manifest.digest, manifest.size)
        source = _blob_source(stage.source, desc.digest)
        for name in names:
            builder.store.put_image(name, desc, source=source)
    config_digest = json.loads(raw_manifest)["config"]["digest"]
    return BuildResult(desc, config_digest, source, stage.name or f"stage-{stage.index}")


def _blob_source(base_source: str | None, manifest_digest: str) -> str | None:
    """The built image's ``source``: where its blobs that are not in the store are (the lazily mounted
    base layers, fetched by digest from the base image's repository; ``push`` mounts them from there).
    It names this image's own manifest digest, which that repository does not have: whatever pulls
    the source by reference finds nothing, rather than the base image under this image's name. The
    base's tag stays beside the digest: a base layer whose TOC is external is found in the base's
    ``<tag>-esgztoc`` image (``image.tocimage``), which a digest alone cannot name."""
    if base_source is None:
        return None
    from lazypull.registry import parse_reference

    ref = parse_reference(base_source, default_tag=None)
    return str(ref.with_digest(manifest_digest))


def read_dockerfile(path: Path | None, text: str | None, where: str) -> Dockerfile:
    """Parse the Dockerfile at ``path`` (or ``text`` read from stdin)."""
    from lazypull.build.dockerfile import MAX_DOCKERFILE
    from lazypull.smallfile import read_small

    if text is None:
        assert path is not None
        data = read_small(path, MAX_DOCKERFILE, "Dockerfile", BuildError)
        if data is None:
            raise BuildError(f"Dockerfile {path} not found")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BuildError(f"{where} is not UTF-8 text (byte {err.start})") from err
    return parse_dockerfile(text.removeprefix("\ufeff"), where)

