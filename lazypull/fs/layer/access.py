"""Recording which files of a layer a workload opens or reads, in first-access order.

``lazypull image optimize`` runs an image and asks its layer filesystems to record the files the
workload touched, as ``ctr-remote image optimize`` watches a container with fanotify. Here the layer
tree itself notes the regular files reaching its ``open`` (passthrough set-up) and ``read`` paths.

Recording is per mount and decided when the layer is mounted: a file named :data:`REQUEST_NAME` in
the layer's state dir (``snapshots/<hex>/``) asks for it. The tree then holds an
:class:`AccessRecorder` (else ``None``: nothing is done on the hot path but one ``is None`` test),
which appends one JSON line per file, the first time it is accessed, to :data:`LOG_NAME` in the same
dir: ``{"path": "etc/passwd", "time_ns": <CLOCK_MONOTONIC ns>}``. Paths are relative to the layer root,
as TOC names and ctr-remote's record files spell them. The log is written as it grows (one
``write`` per line on an append-only fd), so it can be read while the layer is mounted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lazypull.errors import MountError

log = logging.getLogger(__name__)

REQUEST_NAME = "record-access"
LOG_NAME = "access.jsonl"
MAX_LOG_SIZE = 64 << 20


@dataclass(frozen=True)
class Access:
    """One file's first access: its path in the layer and when (``CLOCK_MONOTONIC`` ns)."""

    path: str
    time_ns: int


class AccessRecorder:
    """Notes each file once, in first-access order, to an append-only log; thread-safe."""

    def __init__(self, log_path: Path) -> None:
        self.path = log_path
        self._seen: set[int] = set()
        self._lock = threading.Lock()
        self._fd: int | None = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                                       | os.O_CLOEXEC, 0o600)

    def note(self, ino: int, path: str) -> None:
        """Record ``path`` (inode ``ino``) unless it was recorded before; never raises."""
        if ino in self._seen:      # set membership is atomic; the lock below settles races
            return
        with self._lock:
            if ino in self._seen or self._fd is None:
                return
            self._seen.add(ino)
            line = json.dumps({"path": path, "time_ns": time.monotonic_ns()}, ensure_ascii=False,
                              separators=(",", ":")) + "\n"
            try:
                data = line.encode("utf-8", "surrogateescape")     # names that are not UTF-8: their bytes
            except UnicodeEncodeError:
                data = line.encode("utf-8", "backslashreplace")    # other lone surrogates: JSON escapes
            try:
                os.write(self._fd, data)
            except OSError as err:   # a full disk must not fail the workload's reads
                log.warning("access log %s: %s; recording stopped", self.path, err)
                self._close_locked()

    def close(self) -> None:
        """Stop recording (the log stays)."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def __len__(self) -> int:
        return len(self._seen)


def recorder_for(layer_dir: Path) -> AccessRecorder | None:
    """The recorder of a layer being mounted, if its state dir asks for one (else None)."""
    if not (layer_dir / REQUEST_NAME).exists():
        return None
    try:
        return AccessRecorder(layer_dir / LOG_NAME)
    except OSError as err:
        log.warning("cannot record file accesses in %s: %s", layer_dir, err)
        return None


def request_recording(layer_dir: Path) -> None:
    """Ask for recording at the layer's next mount; an earlier log is removed."""
    layer_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (layer_dir / LOG_NAME).unlink()
    (layer_dir / REQUEST_NAME).touch()


def withdraw_request(layer_dir: Path) -> None:
    """Later mounts of the layer do not record (the current mount keeps recording until unmounted)."""
    with contextlib.suppress(FileNotFoundError):
        (layer_dir / REQUEST_NAME).unlink()


def is_recording(layer_dir: Path) -> bool:
    """Whether the layer's current mount writes an access log (the recorder creates it at mount)."""
    return (layer_dir / LOG_NAME).exists()


def read_access_log(layer_dir: Path) -> list[Access]:
    """The accesses recorded so far, first first. A line cut short by a crash is ignored."""
    path = layer_dir / LOG_NAME
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LOG_SIZE + 1)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise MountError(f"cannot read access log {path}: {err.strerror}") from err
    if len(data) > MAX_LOG_SIZE:
        raise MountError(f"access log {path} is larger than {MAX_LOG_SIZE} bytes")
    lines = data.split(b"\n")
    lines.pop()                 # b"" after the last newline, or a line the recorder was still writing
    out: list[Access] = []
    for number, raw in enumerate(lines, 1):
        try:
            entry = json.loads(raw.decode("utf-8", "surrogateescape"))
            out.append(Access(str(entry["path"]), int(entry["time_ns"])))
        except (ValueError, KeyError, TypeError) as err:
            raise MountError(f"access log {path}: line {number} is malformed: {err}") from err
    return out


__all__ = ["LOG_NAME", "REQUEST_NAME", "Access", "AccessRecorder", "is_recording", "read_access_log",
           "recorder_for", "request_recording", "withdraw_request"]
