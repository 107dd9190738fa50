"""The on-disk chunk cache: verified, uncompressed chunks named by their chunkDigest.

Shared by every layer and image (the same chunk in two layers is stored once) and kept across restarts.
A file appears under its final name only complete (written to a temporary name, then renamed), so a
crash leaves either nothing or the whole chunk; sizes are checked on reading as a second guard.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from lazypull.errors import MountError

_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")


def digest_hex(digest: str, what: str = "digest") -> str:
    """``sha256:<hex>`` -> ``<hex>``, refusing anything else: the hex names a file or a directory."""
    m = _SHA256.fullmatch(digest)
    if m is None:
        raise MountError(f"not a sha256 {what}: {digest!r}")
    return m.group(1)


class ChunkCache:
    """``<dir>/<sha256 hex>`` files; methods are safe to call from many threads and processes."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where a chunk is (or would be) stored."""
        return self.dir / digest_hex(digest, "chunk digest")

    def has(self, digest: str, size: int) -> bool:
        """Whether the complete chunk is stored."""
        try:
            return self.path(digest).stat().st_size == size
        except FileNotFoundError:
            return False

    def get(self, digest: str, size: int) -> bytes | None:
        """The chunk's bytes, or None when absent or damaged (wrong size: removed)."""
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) != size:
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return data

    def read(self, digest: str, size: int, offset: int, length: int) -> bytes | None:
        """Bytes ``[offset, offset+length)`` of a stored chunk of ``size`` bytes; None when absent or
        not whole (a chunk being replaced). Reads only the slice, not the chunk."""
        try:
            with open(self.path(digest), "rb") as fh:
                if os.fstat(fh.fileno()).st_size != size:
                    return None
                return os.pread(fh.fileno(), length, offset)
        except FileNotFoundError:
            return None

    def put(self, digest: str, data: bytes) -> None:
        """Store a verified chunk atomically (no-op when present and whole; a damaged copy is replaced)."""
        final = self.path(digest)
        try:
            if final.stat().st_size == len(data):
                return
        except FileNotFoundError:
            pass
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
