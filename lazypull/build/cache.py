"""The build cache: a step's result (its layer, or none) by a key over everything that decides it.

A step's key is sha256 over its parent's key, the instruction after expansion, what the step runs
with (environment, user, working directory, shell) and the digest of what it copies; the chain
starts at the base image's manifest digest and the layer format asked for (a gzip layer is no hit for
an ``--estargz`` build). Hits are only taken when the layer blob is still in the
store. Kept in ``<root>/build-cache.json`` (0600 under the 0700 root, written atomically).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazypull.image import Store
from lazypull.registry import Descriptor

CACHE_FILE = "build-cache.json"
MAX_ENTRIES = 10000


def step_key(parent: str, payload: Mapping[str, Any]) -> str:
    """The cache key of a step on top of ``parent``."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{parent}\n{text}".encode()).hexdigest()


@dataclass(frozen=True)
class CachedStep:
    """What a step produced: a layer (descriptor, DiffID) or nothing."""

    layer: Descriptor | None
    diff_id: str | None


class BuildCache:
    """The cache file of one store root."""

    def __init__(self, root: Path, store: Store) -> None:
        self.path = root / CACHE_FILE
        self.store = store

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path.with_suffix(".lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> CachedStep | None:
        """The cached result of ``key``, if any and its layer blob is still stored."""
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            layer = Descriptor.from_json(entry["layer"]) if entry.get("layer") else None
        except Exception:           # a damaged entry is a miss, never an error
            return None
        if layer is not None and not self.store.has_blob(layer.digest):
            return None
        diff_id = entry.get("diff_id")
        return CachedStep(layer, diff_id if isinstance(diff_id, str) else None)

    def put(self, key: str, step: CachedStep) -> None:
        """Remember a step's result."""
        with self._locked():
            data = self._read()
            data.pop(key, None)
            data[key] = {"layer": step.layer.to_json() if step.layer else None, "diff_id": step.diff_id}
            while len(data) > MAX_ENTRIES:
                data.pop(next(iter(data)))
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
