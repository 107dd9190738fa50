"""A directory of blobs named by digest, written atomically (temp file, fsync, verify, rename).

Used by the store (``content/blobs/sha256``) and by OCI layouts (``blobs/sha256``). A blob file exists
only once complete and verified. Writers flock their temp file while it is open, so
:meth:`BlobDir.cleanup` can tell leftovers of dead processes from files still being written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lazypull.image.digest import check_digest, hex_of
from lazypull.image.errors import BlobNotFoundError, DigestMismatchError, StoreError


@dataclass(frozen=True)
class BlobInfo:
    """A blob written: its digest and size."""

    digest: str
    size: int


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, tmp: Path | None = None, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` all at once, so readers see the old file or the new one, never half.

    Written to ``tmp`` (default ``.<name>.<random>.tmp`` beside it) and renamed over ``path``; with
    ``durable`` the file and the rename are fsynced. The temp file never outlives a failure.
    """
    if tmp is None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


class BlobWriter:
    """A blob being written: hashes what is written; :meth:`commit` verifies and renames into place.

    Offers the writable-file surface (write/tell/seek/flush) that ``lazypull.format.build`` needs; if
    the writer seeks, the digest is computed from the file at commit time instead.
    """

    def __init__(self, blobs: BlobDir, expected_digest: str | None, expected_size: int | None) -> None:
        self._blobs = blobs
        self.expected_digest = expected_digest
        self.expected_size = expected_size
        blobs.ingest_dir.mkdir(parents=True, exist_ok=True)
        self.path = blobs.ingest_dir / (secrets.token_hex(16) + ".partial")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.file: BinaryIO = os.fdopen(fd, "w+b")
        self._hash = hashlib.sha256()
        self._written = 0
        self._rehash = False
        self.committed: BlobInfo | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if not self._rehash and self.file.tell() == self._written:
            self._hash.update(data)
            self._written += len(data)
        else:
            self._rehash = True
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def flush(self) -> None:
        self.file.flush()

    def truncate(self, size: int | None = None) -> int:
        self._rehash = True
        return self.file.truncate(size)

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.file.read(size)

    def fileno(self) -> int:
        return self.file.fileno()

    @property
    def closed(self) -> bool:
        return self.file.closed

    def commit(self) -> BlobInfo:
        """Verify, fsync and move into place; if the blob already exists the temp file is dropped."""
        self.file.flush()
        end = self.file.seek(0, os.SEEK_END)
        if self._rehash or end != self._written:
            self.file.seek(0)
            h = hashlib.sha256()
            size = 0
            while chunk := self.file.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
            digest = "sha256:" + h.hexdigest()
        else:
            digest, size = "sha256:" + self._hash.hexdigest(), self._written
        if self.expected_size is not None and size != self.expected_size:
            raise DigestMismatchError(f"blob {self.expected_digest or digest}: got {size} bytes, expected "
                                      f"{self.expected_size}")
        if self.expected_digest is not None and digest != self.expected_digest:
            raise DigestMismatchError(f"blob {self.expected_digest}: content has digest {digest}")
        os.fsync(self.file.fileno())
        final = self._blobs.blob_file(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.path, final)
        fsync_dir(final.parent)
        self.committed = BlobInfo(digest, size)
        return self.committed

    def close(self) -> None:
        """Close; an uncommitted temp file is removed."""
        if not self.file.closed:
            self.file.close()
        if self.committed is None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class BlobDir:
    """``<blobs_dir>/<hex>`` files, with temp files in ``ingest_dir`` (same filesystem)."""

    def __init__(self, blobs_dir: Path, ingest_dir: Path, where: str) -> None:
        self.blobs_dir = blobs_dir
        self.ingest_dir = ingest_dir
        self.where = where

    def blob_file(self, digest: str) -> Path:
        """Where a blob lives (whether or not it is there); the digest is checked first."""
        return self.blobs_dir / hex_of(digest)

    def blob_path(self, digest: str) -> Path | None:
        """The blob file if present."""
        path = self.blob_file(digest)
        return path if path.is_file() else None

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest) is not None

    def blob_size(self, digest: str) -> int:
        path = self.blob_path(digest)
        if path is None:
            raise BlobNotFoundError(f"blob {digest} is not in {self.where}")
        return path.stat().st_size

    def open_blob(self, digest: str) -> BinaryIO:
        """The blob's file, which must be a regular file, not a link (a layout written by someone else
        may hold a FIFO, which would block, or a link to a host file, which would become a layer)."""
        path = self.blob_file(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError as err:
            raise BlobNotFoundError(f"blob {digest} is not in {self.where}") from err
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise StoreError(f"blob {digest} in {self.where} is a symbolic link") from err
            raise StoreError(f"cannot read blob {digest} in {self.where}: {err.strerror}") from err
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(f"blob {digest} in {self.where} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def read_blob(self, digest: str, limit: int | None = None) -> bytes:
        """The blob's bytes; with ``limit``, at most ``limit + 1`` (so oversize content shows)."""
        with self.open_blob(digest) as f:
            return f.read() if limit is None else f.read(limit + 1)

    @contextlib.contextmanager
    def ingest(self, expected_digest: str | None = None,
               expected_size: int | None = None) -> Iterator[BlobWriter]:
        """A temp blob file to write; call ``commit()`` inside the block or it is discarded."""
        if expected_digest is not None:
            check_digest(expected_digest, "expected digest")
        writer = BlobWriter(self, expected_digest, expected_size)
        try:
            yield writer
        finally:
            writer.close()

    def put_blob(self, data: bytes | BinaryIO, expected_digest: str | None = None,
                 expected_size: int | None = None) -> BlobInfo:
        """Store bytes or the rest of a stream, verified against the expected digest/size if given."""
        if expected_digest is not None and self.has_blob(expected_digest):
            size = self.blob_size(expected_digest)
            if expected_size is None or size == expected_size:
                return BlobInfo(expected_digest, size)
        with self.ingest(expected_digest, expected_size) as w:
            if isinstance(data, (bytes, bytearray, memoryview)):
                w.write(bytes(data))
            else:
                while chunk := data.read(1 << 20):
                    w.write(chunk)
            return w.commit()

    def delete_blob(self, digest: str) -> bool:
        """Remove a blob; False if it was not there."""
        try:
            self.blob_file(digest).unlink()
            return True
        except FileNotFoundError:
            return False

    def verify_blob(self, digest: str) -> None:
        """Re-hash a stored blob; DigestMismatchError if it was corrupted on disk."""
        h = hashlib.sha256()
        with self.open_blob(digest) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if "sha256:" + h.hexdigest() != digest:
            raise DigestMismatchError(f"blob {digest} in {self.where} is corrupted "
                                      f"(content has sha256:{h.hexdigest()})")

    def cleanup(self) -> int:
        """Remove temp files whose writer is gone; returns how many."""
        removed = 0
        if not self.ingest_dir.is_dir():
            return 0
        for path in self.ingest_dir.iterdir():
            try:    # a link or a FIFO someone put there is not a temp file of ours: never followed
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)  # its writer is gone
                removed += 1
            except BlockingIOError:
                pass  # still being written by a live process
            finally:
                os.close(fd)
        return removed
