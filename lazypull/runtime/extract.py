"""Safe extraction of a (non-lazy) layer tarball into an overlayfs lower directory.

A layer blob is untrusted input. Every path is resolved one component at a time with
``O_NOFOLLOW`` relative to directory file descriptors (openat-style), so no member name, symlink
or hardlink can make us write outside the layer directory: names that are absolute or contain
``..`` are refused, a parent component that is a symlink (even one extracted earlier from the same
tar) is refused, and hardlink targets are resolved the same way inside the layer. Symlinks are
created as they are (their targets are only text to us; we never follow them).

Layer whiteouts become what overlayfs reads: ``.wh.NAME`` becomes a character device 0/0 named
``NAME``, ``.wh..wh..opq`` sets ``trusted.overlay.opaque=y`` on its directory; other ``.wh..wh.``
names (aufs metadata) are dropped. Ownership, mode (including setuid bits), mtimes, device numbers
and xattrs are kept as root would keep them, except ``*.overlay.*`` xattrs, which a layer must not
be able to forge.

Extraction goes to a temporary sibling directory that is renamed into place at the end, so a
half-extracted layer is never visible; if another process finished first, its result is kept.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import queue
import stat
import tarfile
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, NamedTuple, cast

from lazypull.errors import ContainerError
from lazypull.format import entryrules
from lazypull.format.compression import DECOMPRESS_ERRORS, Compression, decompressing, detect_compression
from lazypull.format.landmarks import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from lazypull.format.toc import TOC_TAR_NAME
from lazypull.image.digest import check_diff_id
from lazypull.image.partials import clean_partials, partial_prefix
from lazypull.removetree import remove_tree

log = logging.getLogger(__name__)

OPAQUE_XATTR = "trusted.overlay.opaque"
# Files eStargz adds at the layer root for the lazy reader; a full extraction leaves them out.
ESTARGZ_METADATA = frozenset({TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})

_COPY_BUFFER = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_CACHE_SIZE = 128
# What reading a damaged layer raises (a corrupt compressed stream or tar), named as the layer's error.
_STREAM_ERRORS: tuple[type[Exception], ...] = (tarfile.TarError, *DECOMPRESS_ERRORS)
_MEMBER_ERRORS: tuple[type[Exception], ...] = (ValueError, OverflowError, *_STREAM_ERRORS)


class LayerExtractError(ContainerError):
    """A layer tarball is malformed or hostile; the message names the layer and the member."""


@dataclass(frozen=True)
class ExtractStats:
    """What one extraction did (for progress output and tests)."""

    members: int
    bytes_written: int
    whiteouts: int
    opaque_dirs: int


def split_member_name(name: str) -> list[str]:
    """The path components of a tar member name inside the layer; refuses what
    ``lazypull.format.entryrules`` refuses (the lazy reader's verdict is the same), as ValueError.

    ``./a//b/`` is ``["a", "b"]``; ``.`` and ``./`` are the layer root (``[]``).
    """
    try:
        return entryrules.split_name(name)
    except entryrules.UnsafeEntryError as err:
        raise ValueError(str(err)) from err


# What a timespec holds (os.utime's range); outside it, the epoch, as containerd's archive does.
_MTIME_NS_RANGE = range(-(2**63), 2**63)
# uid_t and gid_t are 32 bits, and (uid_t) -1 means "unchanged" to chown (entryrules, as on the lazy path).
_ID_RANGE = range(0, entryrules.ID_MAX + 1)


def mtime_ns(member: tarfile.TarInfo) -> int:
    """The member's mtime in nanoseconds, exact from a PAX ``mtime`` record (``1700000000.123456789``).

    One that no file can have (beyond 2**63 ns, not a number) is the epoch, as in containerd.
    """
    text = member.pax_headers.get("mtime")
    ns: int | None = None
    if text:
        whole, _, fraction = text.partition(".")
        try:
            negative = whole.startswith("-")
            seconds = int(whole)
            nanos = int((fraction + "000000000")[:9]) if fraction else 0
            ns = seconds * 1_000_000_000 + (-nanos if negative else nanos)
        except ValueError:
            pass  # tarfile already refused or parsed it; fall back to its float
    if ns is None:
        try:
            ns = int(member.mtime) * 1_000_000_000
        except (ValueError, OverflowError):  # nan, inf
            return 0
    return ns if ns in _MTIME_NS_RANGE else 0


def check_numbers(member: tarfile.TarInfo) -> None:
    """Refuse owner ids and device numbers that no file can have (ValueError naming the field).

    Passed on, chown would take -1 as "leave unchanged" and reject 2**40, and mknod would keep only
    some bits of a device number (the range is ``entryrules``', as on the lazy path).
    """
    for field in ("uid", "gid"):
        value = getattr(member, field)
        text = member.pax_headers.get(field)
        # tarfile reads a PAX number it cannot parse (a 5000-digit uid) as 0, i.e. root
        if value not in _ID_RANGE or (text is not None and not (
                text.isascii() and text.isdigit() and len(text) <= 10 and int(text) == value)):
            shown = text if text is not None else str(value)
            raise ValueError(f"{field} {shown[:40]!r} is out of range")
    if member.ischr() or member.isblk():
        try:
            entryrules.check_device(member.devmajor, member.devminor)
        except entryrules.UnsafeEntryError as err:
            raise ValueError(str(err)) from err


class _Extractor:
    """Extracts one tar stream below an open directory fd. Not thread-safe; one per layer."""

    def __init__(self, root_fd: int, label: str, skip_estargz_metadata: bool) -> None:
        self.root_fd = root_fd
        self.label = label
        self.skip_estargz_metadata = skip_estargz_metadata
        self.dir_times: list[tuple[list[str], int]] = []
        self.members = 0
        self.bytes_written = 0
        self.whiteouts = 0
        self.opaque_dirs = 0
        self.dir_fds: dict[tuple[str, ...], int] = {}  # verified directories (walked with O_NOFOLLOW)
        # paths this layer itself created: a whiteout only hides what lower layers hold (OCI image spec)
        self.created: set[tuple[str, ...]] = set()

    # -- path resolution -------------------------------------------------------------------------

    def open_parent(self, parts: list[str], *, create: bool) -> int:
        """An fd of the directory holding ``parts[-1]``, walking without following symlinks.

        Missing parents are created (mode 0755, root-owned) when ``create`` is set, as tar does.
        """
        parents = parts[:-1]
        start = len(parents)
        while start > 0 and tuple(parents[:start]) not in self.dir_fds:
            start -= 1
        fd = os.dup(self.dir_fds[tuple(parents[:start])] if start else self.root_fd)
        try:
            for i in range(start, len(parents)):
                part = parents[i]
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as err:
                    if err.errno in (errno.ELOOP, errno.ENOTDIR):
                        where = "/".join(parts[: i + 1])
                        raise LayerExtractError(
                            f"{self.label}: {'/'.join(parts)!r}: parent {where!r} is a symlink or not a "
                            "directory (refusing to write through it)") from err
                    raise
                os.close(fd)
                fd = next_fd
                self._remember(tuple(parents[: i + 1]), fd)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _remember(self, key: tuple[str, ...], fd: int) -> None:
        """Cache a verified directory fd: tar members come grouped by directory, walks repeat."""
        if len(self.dir_fds) >= _DIR_CACHE_SIZE:
            self.forget()
        self.dir_fds[key] = os.dup(fd)

    def forget(self) -> None:
        """Drop the directory cache (after anything was removed, a cached path may be stale)."""
        for fd in self.dir_fds.values():
            os.close(fd)
        self.dir_fds.clear()

    def clear(self, parent_fd: int, name: str, keep_dir: bool) -> bool:
        """Remove what is at ``name`` so a new entry can take its place; True if a dir was kept."""
        try:
            st = os.lstat(name, dir_fd=parent_fd)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            self.forget()
            remove_tree(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)
        return False

    # -- members ---------------------------------------------------------------------------------

    def extract(self, tar: tarfile.TarFile) -> None:
        for member in tar:
            self.members += 1
            try:
                self.member(tar, member)
            except LayerExtractError:
                raise
            except _MEMBER_ERRORS as err:
                raise LayerExtractError(f"{self.label}: member {member.name!r}: {err}") from err
        self.finish_dirs()

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = split_member_name(member.name)
        check_numbers(member)
        if not parts:
            if not member.isdir():
                raise ValueError("the layer root must be a directory")
            self.apply_metadata(self.root_fd, None, member)
            self.dir_times.append(([], mtime_ns(member)))
            return
        base = parts[-1]
        if self.skip_estargz_metadata and len(parts) == 1 and base in ESTARGZ_METADATA:
            return
        if entryrules.is_dropped(parts):
            log.debug("%s: dropping aufs metadata %s", self.label, member.name)
            return
        if entryrules.whiteout_kind(base) is not None:
            self.whiteout(parts)
            return
        parent_fd = self.open_parent(parts, create=True)
        try:
            self.create(tar, member, parent_fd, base)
        finally:
            os.close(parent_fd)
        self.created.add(tuple(parts))

    def whiteout(self, parts: list[str]) -> None:
        base = parts[-1]
        parent_fd = self.open_parent(parts, create=True)
        try:
            if entryrules.whiteout_kind(base) == "opaque":
                os.setxattr(parent_fd, OPAQUE_XATTR, b"y")
                self.opaque_dirs += 1
            else:       # a whiteout of a name (split_member_name refused those of nothing)
                target = base[len(entryrules.WHITEOUT_PREFIX):]
                if (*parts[:-1], target) in self.created:
                    # "files present in the same layer as a whiteout file can only be hidden by
                    # whiteout files in subsequent layers": keep it, as the lazy view does
                    log.debug("%s: whiteout of %s, which this layer adds: ignored", self.label,
                              "/".join((*parts[:-1], target)))
                    return
                self.clear(parent_fd, target, keep_dir=False)
                os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent_fd)
                self.whiteouts += 1
        finally:
            os.close(parent_fd)

    def create(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, name: str) -> None:
        kept_dir = self.clear(parent_fd, name, keep_dir=member.isdir())
        if member.isdir():
            if not kept_dir:
                os.mkdir(name, 0o700, dir_fd=parent_fd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            try:
                self.apply_metadata(fd, None, member)
            finally:
                os.close(fd)
            self.dir_times.append((split_member_name(member.name), mtime_ns(member)))
            return
        if member.isreg():
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=parent_fd)
            try:
                src = tar.extractfile(member)
                if src is not None:
                    self.copy(src, fd, member)
                self.apply_metadata(fd, None, member)
            finally:
                os.close(fd)
            return
        if member.issym():
            try:
                entryrules.check_link_target(member.linkname, hardlink=False)
            except entryrules.UnsafeEntryError as err:
                raise ValueError(str(err)) from err
            os.symlink(member.linkname, name, dir_fd=parent_fd)
            self.apply_metadata(parent_fd, name, member)
            return
        if member.islnk():
            self.hardlink(member, parent_fd, name)
            return
        if member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent_fd)
        elif member.isfifo():
            os.mkfifo(name, 0o600, dir_fd=parent_fd)
        else:
            raise ValueError(f"unsupported tar member type {member.type!r}")
        self.apply_metadata(parent_fd, name, member)

    def hardlink(self, member: tarfile.TarInfo, parent_fd: int, name: str) -> None:
        try:
            target = split_member_name(member.linkname)
        except ValueError as err:
            raise ValueError(f"hardlink target {member.linkname!r}: {err}") from err
        if not target:
            raise ValueError("hardlink to the layer root")
        target_parent = self.open_parent(target, create=False)
        try:
            st = os.lstat(target[-1], dir_fd=target_parent)
            if stat.S_ISDIR(st.st_mode):
                raise ValueError(f"hardlink target {member.linkname!r} is a directory")
            os.link(target[-1], name, src_dir_fd=target_parent, dst_dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError as err:
            raise ValueError(f"hardlink target {member.linkname!r} is not in the layer (yet)") from err
        finally:
            os.close(target_parent)

    def copy(self, src: IO[bytes], fd: int, member: tarfile.TarInfo) -> None:
        remaining = member.size
        while remaining > 0:
            buf = src.read(min(_COPY_BUFFER, remaining))
            if not buf:
                raise EOFError(f"truncated: {remaining} bytes missing")
            view = memoryview(buf)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            remaining -= len(buf)
            self.bytes_written += len(buf)

    def apply_metadata(self, fd: int, name: str | None, member: tarfile.TarInfo) -> None:
        """Owner, mode, xattrs and mtime; on ``fd`` itself (name None) or on ``name`` below it."""
        is_link = member.issym()
        if name is None:
            os.fchown(fd, member.uid, member.gid)
        else:
            os.chown(name, member.uid, member.gid, dir_fd=fd, follow_symlinks=False)
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            xname = key[len("SCHILY.xattr."):]
            raw = value.encode("utf-8", "surrogateescape")
            try:
                entryrules.check_xattr(xname, raw)
            except entryrules.UnsafeEntryError as err:
                raise ValueError(str(err)) from err
            if entryrules.is_overlay_xattr(xname):      # the lazy view drops them by the same rule
                log.warning("%s: %s: dropping xattr %s", self.label, member.name, xname)
                continue
            try:
                if name is None:
                    os.setxattr(fd, xname, raw)
                else:  # the fd is a directory we resolved safely; the last component is not followed
                    os.setxattr(f"/proc/self/fd/{fd}/{name}", xname, raw, follow_symlinks=False)
            except OSError as err:
                if err.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                log.warning("%s: %s: cannot set xattr %s: %s", self.label, member.name, xname, err)
        if not is_link:
            # After chown, which clears setuid/setgid bits.
            if name is None:
                os.fchmod(fd, member.mode & 0o7777)
            else:
                os.chmod(name, member.mode & 0o7777, dir_fd=fd)
        if not member.isdir():
            ns = mtime_ns(member)
            if name is None:
                os.utime(fd, ns=(ns, ns))
            else:
                os.utime(name, ns=(ns, ns), dir_fd=fd, follow_symlinks=False)

    def finish_dirs(self) -> None:
        """Set directory mtimes last (creating children changed them), deepest first."""
        for parts, ns in sorted(self.dir_times, key=lambda item: -len(item[0])):
            if not parts:
                os.utime(self.root_fd, ns=(ns, ns))
                continue
            try:
                parent_fd = self.open_parent(parts, create=False)
            except (FileNotFoundError, LayerExtractError):
                continue  # replaced or whited out by a later member
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.utime(parts[-1], ns=(ns, ns), dir_fd=parent_fd, follow_symlinks=False)
            finally:
                os.close(parent_fd)


def extract_tar(stream: BinaryIO | IO[bytes], dest: Path, *, label: str = "layer",
                skip_estargz_metadata: bool = False) -> ExtractStats:
    """Extract an uncompressed tar stream into the existing empty directory ``dest``.

    Writes in place (callers wanting atomicity use :func:`extract_layer`). Raises
    :class:`LayerExtractError` naming the member for anything malformed or hostile.
    """
    root_fd = os.open(dest, _DIR_FLAGS)
    try:
        extractor = _Extractor(root_fd, label, skip_estargz_metadata)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                extractor.extract(tar)
        except LayerExtractError:
            raise
        except _STREAM_ERRORS as err:
            raise LayerExtractError(f"{label}: not a valid tar stream: {err}") from err
        finally:
            extractor.forget()
        return ExtractStats(extractor.members, extractor.bytes_written, extractor.whiteouts,
                            extractor.opaque_dirs)
    finally:
        os.close(root_fd)


def _temp_dir(dest: Path) -> Path:
    """A fresh hidden sibling of ``dest`` (same filesystem, so the final rename is atomic), named with
    our pid so that what a killed extraction left can be told from one in progress (and removed)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_partials(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=partial_prefix(dest), dir=dest.parent))
    os.chmod(tmp, 0o755)
    return tmp


def _rename_into_place(tmp: Path, dest: Path, label: str) -> bool:
    """Rename the finished ``tmp`` to ``dest``; False (and ``tmp`` removed) if someone else was first."""
    try:
        os.rename(tmp, dest)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            log.debug("%s: extracted concurrently by someone else", label)
            remove_tree(tmp)
            return False
        raise
    return True


class _HashingReader:
    """Reads through ``stream``, hashing what passes (the layer's DiffID) and counting it: the hash is
    taken as tar reads, not in a second pass over the layer."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Hash what tar did not read (what follows its end-of-archive blocks), to the end of the stream."""
        while self.read(_COPY_BUFFER):
            pass


def _unpack(raw: BinaryIO | IO[bytes], kind: Compression, dest: Path, label: str,
            skip_estargz_metadata: bool) -> tuple[str, int, ExtractStats]:
    """Decompress ``raw``, extract its tar into ``dest`` and hash the whole uncompressed stream in the
    same pass: the DiffID and size of everything the blob holds, what follows the tar's end-of-archive
    blocks included (an eStargz layer's TOC, bytes a lossless conversion kept), as containerd's applier
    reads its layers. Both extraction paths read a layer this way, so they accept and refuse alike."""
    with contextlib.ExitStack() as stack:
        stream = decompressing(cast(BinaryIO, raw), kind)
        if stream is not raw:
            stack.callback(stream.close)
        hashing = _HashingReader(stream)
        stats = extract_tar(hashing, dest, label=label,  # type: ignore[arg-type]
                            skip_estargz_metadata=skip_estargz_metadata)
        try:
            hashing.drain()
        except DECOMPRESS_ERRORS as err:
            raise LayerExtractError(f"{label}: cannot decompress what follows its tar: {err}") from err
        if raw.read(1):
            raise LayerExtractError(f"{label}: data after the end of the compressed stream")
    return "sha256:" + hashing.hash.hexdigest(), hashing.size, stats


def extract_layer(blob: Path, dest: Path, *, label: str | None = None, skip_estargz_metadata: bool = False,
                  diff_id: str | None = None) -> ExtractStats | None:
    """Extract the layer blob ``blob`` (gzip, zstd or plain tar) to ``dest`` atomically.

    ``diff_id`` (the image config's): the uncompressed stream, read to its end, must hash to it, or
    the extraction is refused (``DigestMismatchError``) and nothing appears at ``dest``.
    Returns ``None`` if ``dest`` already exists (extracted before, maybe by another process).
    """
    if dest.exists():
        return None
    label = label or f"layer {blob.name}"
    tmp = _temp_dir(dest)
    try:
        with open(blob, "rb") as raw:
            kind = detect_compression(raw.read(4))
            raw.seek(0)
            actual, _, stats = _unpack(raw, kind, tmp, label, skip_estargz_metadata)
        if diff_id is not None:
            check_diff_id(label, actual, diff_id)
        return stats if _rename_into_place(tmp, dest, label) else None
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(tmp)
        raise


class _Aborted(Exception):
    """The download feeding a streaming extraction gave up."""


class _QueueReader(io.RawIOBase):
    """A read-only stream of the chunks put into a bounded queue (``None`` ends it)."""

    def __init__(self, chunks: queue.Queue[bytes | None], aborted: threading.Event) -> None:
        self._chunks = chunks
        self._aborted = aborted
        self._pending = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            if self._eof:
                return 0
            if self._aborted.is_set():
                raise _Aborted("the download was abandoned")
            chunk = self._chunks.get()
            if chunk is None:
                self._eof = True
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def drain(self) -> None:
        """Consume (and drop) everything up to the end, so the feeding side never blocks."""
        while not self._eof:
            self._pending = memoryview(b"")
            if self._chunks.get() is None:
                self._eof = True


class StreamingExtraction:
    """Extracts a layer while its compressed bytes are still arriving (download overlapped with unpacking).

    The downloading thread calls :meth:`feed` with the blob's bytes in order; a worker thread
    decompresses them, hashes the uncompressed stream (the DiffID) and extracts into a temporary
    sibling of ``dest``. Nothing is visible at ``dest`` until the caller, having checked the blob
    digest and the DiffID :meth:`finish` returns, calls :meth:`commit`; :meth:`abort` (on any
    mismatch or failure) deletes the temporary directory.
    """

    def __init__(self, dest: Path, *, compression: str | None = None, label: str = "layer",
                 skip_estargz_metadata: bool = False, max_queued: int = 64) -> None:
        self.dest = dest
        self.label = label
        self.compression = compression
        self.skip_estargz_metadata = skip_estargz_metadata
        self._chunks: queue.Queue[bytes | None] = queue.Queue(max_queued)
        self._aborted = threading.Event()
        self._ended = False
        self._error: BaseException | None = None
        self._result: tuple[str, int, ExtractStats] | None = None
        self._tmp: Path | None = _temp_dir(dest)
        self._thread = threading.Thread(target=self._work, name=f"unpack {label}", daemon=True)
        self._thread.start()

    def feed(self, data: bytes) -> None:
        """The next bytes of the compressed blob (blocks while the extractor is far behind)."""
        if self._ended:
            raise ValueError(f"{self.label}: feed after the end of the blob")
        if data:
            self._chunks.put(bytes(data))

    def finish(self) -> tuple[str, int]:
        """Wait for the extraction of everything fed; the DiffID and size of the uncompressed tar.

        Raises :class:`LayerExtractError` if the blob is not a valid (compressed) tar or is hostile.
        """
        self._end()
        self._thread.join()
        if self._error is not None:
            err = self._error
            if isinstance(err, LayerExtractError):
                raise err
            raise LayerExtractError(f"{self.label}: cannot decompress or extract: {err}") from err
        assert self._result is not None
        digest, size, _ = self._result
        return digest, size

    def commit(self) -> ExtractStats | None:
        """Rename the verified extraction into place (None if someone else extracted it first)."""
        self.finish()
        assert self._result is not None and self._tmp is not None
        tmp, self._tmp = self._tmp, None
        return self._result[2] if _rename_into_place(tmp, self.dest, self.label) else None

    def abort(self) -> None:
        """Stop extracting and delete what was extracted (nothing appears at ``dest``)."""
        self._aborted.set()
        self._end()
        self._thread.join()
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            with contextlib.suppress(OSError):
                remove_tree(tmp)

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._chunks.put(None)

    def _work(self) -> None:
        reader = _QueueReader(self._chunks, self._aborted)
        try:
            assert self._tmp is not None
            buffered = io.BufferedReader(reader, _COPY_BUFFER)
            kind = self.compression or detect_compression(buffered.peek(4)[:4])
            if kind not in ("gzip", "zstd", "none"):
                raise LayerExtractError(f"{self.label}: unknown compression {kind!r}")
            self._result = _unpack(buffered, cast(Compression, kind), self._tmp, self.label,
                                   self.skip_estargz_metadata)
        except BaseException as err:  # reported by finish(); the feeding thread must not block
            self._error = err
        finally:
            reader.drain()


class ExtractJob(NamedTuple):
    """One layer for :func:`extract_layers`; ``diff_id`` as in :func:`extract_layer`."""

    blob: Path
    dest: Path
    label: str
    skip_estargz_metadata: bool
    diff_id: str | None


def extract_layers(jobs: list[ExtractJob], *, parallelism: int | None = None) -> None:
    """Extract layers in parallel (decompression and hashing drop the GIL)."""
    pending = [job for job in jobs if not job.dest.exists()]
    if not pending:
        return
    workers = max(1, min(len(pending), parallelism or os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="extract") as pool:
        futures = [pool.submit(extract_layer, job.blob, job.dest, label=job.label,
                               skip_estargz_metadata=job.skip_estargz_metadata, diff_id=job.diff_id)
                   for job in pending]
        for future in futures:
            future.result()
