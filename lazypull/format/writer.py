"""Build eStargz / zstd:chunked blobs from a tar (what ``nerdctl image convert --estargz`` does per layer).

Lossy mode (Go ``estargz.Build``): the input (plain, gzip or zstd tar, detected by magic) is spooled to
a temporary file and its entries ordered (prioritised files + landmark, see ``landmarks``). Every
header is re-encoded by Go's rules (``tarheader``). Like Go with GOMAXPROCS=``parallelism``, the
entries are split into that many parts by payload size (a part boundary ends a member and restarts
the user/group name dedupe), so the TOC equals Go's for the same parallelism. The compression itself
runs on members in a thread pool (their boundaries are known in advance), which balances the load
better than one thread per part. Member
rules (format.md 1.2): a tar header never opens a member; every chunk (``chunk_size`` bytes of a
file) starts one unless min-chunk-size keeps it in the current member (then ``innerOffset`` says where);
payload padding and the following headers stay in the chunk's member; landmarks always start one;
no end-of-archive marker in the data. Then::

    gzip, embedded TOC : [data members][TOC member: tar(stargz.index.json + JSON) + 1024 zeros][51-B footer]
    gzip, external TOC : [data members][46-B footer]        TOC member returned as BuildResult.toc_blob
    zstd:chunked       : [data frames][skippable: zstd(TOC JSON)][skippable: 40-B footer]

Lossless mode (``keep_diff_id``, Go ``AppendTarLossLess``): raw header bytes and trailing bytes copied
verbatim, no reordering, no landmark; decompressing the blob gives the input tar byte for byte. Requires
the external TOC.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import mmap
import os
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, BinaryIO, Literal

from lazypull.format.annotations import TOC_DIGEST_ANNOTATION as TOC_DIGEST_ANNOTATION
from lazypull.format.annotations import UNCOMPRESSED_SIZE_ANNOTATION as UNCOMPRESSED_SIZE_ANNOTATION
from lazypull.format.compression import (
    DECOMPRESS_ERRORS,
    Compressor,
    GzipCompressor,
    MemberEncoder,
    ZstdCompressor,
    decompressing,
    detect_compression,
)
from lazypull.format.errors import FormatError
from lazypull.format.footer import estargz_footer, external_toc_footer
from lazypull.format.landmarks import (
    LANDMARK_CONTENTS,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    prioritize,
)
from lazypull.format.names import clean_entry_name
from lazypull.format.tarheader import NS, TarHeader, TarMember, TarScan, encode_go_header
from lazypull.format.toc import TOC_TAR_NAME, TOCEntry, encode_toc
from lazypull.format.zstdchunked import toc_trailer

if TYPE_CHECKING:
    from hashlib import _Hash

DEFAULT_CHUNK_SIZE = 4 << 20
_TYPES = {"0": "reg", "1": "hardlink", "2": "symlink", "3": "char", "4": "block", "5": "dir", "6": "fifo"}
_READ_BLOCK = 4 << 20
_BATCH = 1 << 20
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class BuildOptions:
    """How to build; defaults are nerdctl's."""

    compression: Literal["gzip", "zstd"] = "gzip"
    """``zstd`` = zstd:chunked as stargz-snapshotter writes it."""
    level: int | None = None
    """gzip default 9, zstd default 3."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """<= 0 means the default (4 MiB)."""
    min_chunk_size: int = 0
    prioritized_files: Sequence[str] | None = None
    """None or empty: ``.no.prefetch.landmark`` first. Names not found are reported in ``missed``."""
    external_toc: bool = False
    keep_diff_id: bool = False
    """Lossless: the blob decompresses to the input tar. Requires ``external_toc``."""
    parallelism: int | None = None
    """Like Go's GOMAXPROCS: the number of parts (each ends a member and restarts the user/group name
    dedupe) and of compression threads; default ``os.cpu_count()``; one part with min_chunk_size."""


@dataclass(frozen=True)
class BuildResult:
    """What a build produced (the values a converter puts into the manifest and config)."""

    blob_digest: str
    blob_size: int
    diff_id: str
    uncompressed_size: int
    toc_digest: str
    annotations: dict[str, str]
    missed: list[str]
    toc_blob: bytes | None = None
    """The external TOC blob (one gzip member) when ``external_toc``."""
    toc_offset: int = -1
    """c-offset of the TOC (member or compressed frame); -1 for an external TOC."""


# ---------------------------------------------------------------------------------------------------------
# input


class _Prefixed(io.RawIOBase):
    """A stream with some already-read bytes put back in front."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buf))
        buf[: len(data)] = data
        return len(data)


@dataclass
class _Input:
    fd: int
    base: int
    size: int
    view: mmap.mmap | None = None
    """The file mapped, when possible: slicing it does not release the GIL, so the compression
    threads cannot stall the main thread on every read (a pread waits for the GIL after returning)."""

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of the tar."""
        if self.view is not None:
            data = self.view[self.base + offset : self.base + offset + length]
        else:
            data = os.pread(self.fd, length, self.base + offset)
        if len(data) != length:
            raise FormatError(f"input tar is truncated at offset {offset}")
        return data


@contextlib.contextmanager
def _mapped(inp: _Input) -> Iterator[_Input]:
    try:
        view = mmap.mmap(inp.fd, 0, access=mmap.ACCESS_READ) if inp.size > 0 else None
    except (OSError, ValueError):
        view = None
    try:
        yield _Input(inp.fd, inp.base, inp.size, view)
    finally:
        if view is not None:
            view.close()


@contextlib.contextmanager
def _open_input(src: BinaryIO) -> Iterator[_Input]:
    """A plain tar readable with pread: the caller's file itself, or a decompressed spool."""
    head = src.read(4)
    kind = detect_compression(head)
    direct: _Input | None = None
    if kind == "none":
        with contextlib.suppress(OSError, AttributeError, io.UnsupportedOperation):
            if src.seekable():
                fd = src.fileno()
                base = src.tell() - len(head)
                direct = _Input(fd, base, os.fstat(fd).st_size - base)
    if direct is not None:
        with _mapped(direct) as mapped:
            yield mapped
        return
    stream: BinaryIO = io.BufferedReader(_Prefixed(head, src))
    with tempfile.TemporaryFile(prefix="lazypull-tar-") as spool:
        try:
            shutil.copyfileobj(decompressing(stream, kind), spool, _READ_BLOCK)
        except DECOMPRESS_ERRORS as err:
            raise FormatError(f"cannot decompress the {kind} input layer: {err}") from err
        spool.flush()
        with _mapped(_Input(spool.fileno(), 0, spool.tell())) as mapped:
            yield mapped


# ---------------------------------------------------------------------------------------------------------
# one part


@dataclass
class _Item:
    """An entry to write: a parsed header and where its payload is (or the payload itself)."""

    header: TarHeader
    data_offset: int = 0
    data_size: int = 0
    payload: bytes | None = None
    force_member: bool = False


def _modtime(ns: int | None) -> datetime | None:
    """Go ``formatModtime``: none for the zero time or the epoch second, else rounded to a second."""
    if ns is None:
        return None
    secs, rem = divmod(ns, NS)
    if secs == 0:
        return None
    secs += 1 if rem * 2 >= NS else 0
    try:
        return _EPOCH + timedelta(seconds=secs)
    except OverflowError:
        return None


class _HashingWriter:
    """Writes to a file and hashes what it wrote."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.n = 0

    def write(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.hash.update(data)
            self.n += len(data)


class _Writer:
    """Turns entries into members (Go ``Writer.appendTar``), building TOC entries and the DiffID.

    Without min-chunk-size every member boundary is known before anything is compressed (a member
    starts at every chunk), so members are compressed in a thread pool and written in order; their
    offsets are filled in when written. With min-chunk-size the decision to start a member needs the
    exact compressed size so far, so members are compressed inline (Go uses a single part then too).
    """

    def __init__(self, compressor: Compressor, blob: _HashingWriter, tar: _Input, chunk_size: int,
                 min_chunk_size: int, threads: int) -> None:
        self.compressor = compressor
        self.blob = blob
        self.tar = tar
        self.chunk_size = chunk_size
        self.min_chunk_size = min_chunk_size
        self.diff = hashlib.sha256()
        self.u = 0
        self.toc: list[TOCEntry] = []
        self.unames: dict[int, str] = {}
        self.gnames: dict[int, str] = {}
        # inline mode
        self.member: MemberEncoder | None = None
        self.member_c = 0
        self.member_u = 0
        # pipelined mode
        self.pool = (ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lazypull-gz")
                     if min_chunk_size <= 0 else None)
        self.job: list[bytes] | None = None
        self.job_entries: list[TOCEntry] = []
        self.job_bytes = 0
        self.batch: list[bytes] = []
        self.batch_entries: list[list[TOCEntry]] = []
        self.batch_bytes = 0
        self.pending: deque[tuple[Future[list[bytes]], list[list[TOCEntry]], int]] = deque()
        self.inflight = 0
        self.max_inflight = max(32 << 20, 3 * chunk_size)
        self.local = threading.local()

    # -- members ------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append uncompressed bytes to the current member (opened lazily)."""
        if not data:
            return
        self.diff.update(data)
        if self.pool is None:
            if self.member is None:
                self.member = self.compressor.member()
                self.member_c, self.member_u = self.blob.n, self.u
            self.blob.write(self.member.compress(data))
        else:
            if self.job is None:
                self.job, self.job_entries, self.job_bytes = [], [], 0
            self.job.append(data)
            self.job_bytes += len(data)
        self.u += len(data)

    def cut(self) -> None:
        """End the current member."""
        if self.pool is None:
            if self.member is not None:
                self.blob.write(self.member.finish())
                self.member = None
            return
        if self.job is None:
            return
        self.batch.append(b"".join(self.job))
        self.batch_entries.append(self.job_entries)
        self.batch_bytes += self.job_bytes
        self.job = None
        if self.batch_bytes >= _BATCH:
            self._submit()

    def _submit(self) -> None:
        """Hand the batch of finished members to a worker (small members travel together, so
        layers of many small files do not pay one thread hand-off per file)."""
        if not self.batch:
            return
        assert self.pool is not None
        future = self.pool.submit(self._compress, self.batch)
        self.pending.append((future, self.batch_entries, self.batch_bytes))
        self.inflight += self.batch_bytes
        self.batch, self.batch_entries, self.batch_bytes = [], [], 0
        while self.pending and (self.inflight > self.max_inflight or self.pending[0][0].done()):
            self._drain_one()

    def _compress(self, members: list[bytes]) -> list[bytes]:
        comp = getattr(self.local, "compressor", None)
        if comp is None:
            comp = self.compressor.fork() if isinstance(self.compressor, ZstdCompressor) else self.compressor
            self.local.compressor = comp
        out = []
        for data in members:
            member = comp.member()
            out.append(member.compress(data) + member.finish())
        return out

    def _drain_one(self) -> None:
        future, entries, nbytes = self.pending.popleft()
        for data, members_entries in zip(future.result(), entries, strict=True):
            for e in members_entries:
                e.offset = self.blob.n
            self.blob.write(data)
        self.inflight -= nbytes

    def place(self, ent: TOCEntry, force: bool) -> None:
        """Decide where the chunk about to be written starts (format.md 1.2 rule 3, 1.8)."""
        if self.pool is None:
            if self.min_chunk_size > 0 and self.member is not None and not force:
                self.blob.write(self.member.flush())
                if self.blob.n - self.member_c < self.min_chunk_size:
                    ent.offset, ent.inner_offset = self.member_c, self.u - self.member_u
                    return
            self.cut()
            self.member = self.compressor.member()
            self.member_c, self.member_u = self.blob.n, self.u
            ent.offset, ent.inner_offset = self.member_c, 0
            return
        self.cut()
        self.job, self.job_entries, self.job_bytes = [], [ent], 0

    def finish(self) -> None:
        """Close the last member and write every pending one."""
        try:
            self.cut()
            if self.pool is not None:
                self._submit()
            while self.pending:
                self._drain_one()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the worker threads (also on errors)."""
        if self.pool is not None:
            for future, _, _ in self.pending:
                future.cancel()
            self.pool.shutdown(wait=True)
            self.pool = None

    # -- entries ------------------------------------------------------------------------------------------

    def pread(self, offset: int, length: int) -> bytes:
        return self.tar.read(offset, length)

    def _name_if_changed(self, names: dict[int, str], ident: int, name: str) -> str:
        if not name or names.get(ident) == name:
            return ""
        names[ident] = name
        return name

    def payload(self, item: _Item, name: str, ent: TOCEntry) -> None:
        """Write a regular file's payload chunk by chunk, appending its TOC entries."""
        size = ent.size
        file_hash = hashlib.sha256()
        written = 0
        first = ent
        single = size <= self.chunk_size
        while written < size:
            csize = self.chunk_size
            remain = size - written
            if remain < csize:
                csize = remain
            else:
                ent.chunk_size = csize
            self.place(ent, item.force_member)
            chunk_hash = hashlib.sha256()
            done = 0
            while done < csize:
                n = min(_READ_BLOCK, csize - done)
                if item.payload is not None:
                    data = item.payload[written + done : written + done + n]
                else:
                    data = self.pread(item.data_offset + written + done, n)
                chunk_hash.update(data)
                if not single:
                    file_hash.update(data)
                self.write(data)
                done += n
            ent.chunk_digest = "sha256:" + chunk_hash.hexdigest()
            self.toc.append(ent)
            written += csize
            if written < size:
                ent = TOCEntry(name=name, type="chunk", chunk_offset=written)
        first.digest = first.chunk_digest if single else "sha256:" + file_hash.hexdigest()

    def add(self, item: _Item, *, raw: bool = False) -> None:
        """Append one entry: lossy (Go re-encoded header + padding) or raw (caller copies the rest)."""
        h = item.header
        kind = _TYPES.get(h.typeflag)
        if kind is None:
            raise FormatError(f"unsupported input tar entry {h.name!r} (typeflag {h.typeflag!r})")
        ent = TOCEntry(
            name=h.name, type=kind, mode=h.mode, uid=h.uid, gid=h.gid,
            user_name=self._name_if_changed(self.unames, h.uid, h.uname),
            group_name=self._name_if_changed(self.gnames, h.gid, h.gname),
            modtime=_modtime(h.mtime), xattrs=h.xattrs,
        )
        if not raw:
            self.write(encode_go_header(h))
        if kind in ("hardlink", "symlink"):
            ent.link_name = h.linkname
        elif kind in ("char", "block"):
            ent.dev_major, ent.dev_minor = h.devmajor, h.devminor
        if kind == "reg" and h.size > 0:
            ent.size = h.size
            self.payload(item, h.name, ent)
        else:
            if kind == "reg":
                ent.digest = _EMPTY_DIGEST
            self.toc.append(ent)
        if not raw and kind == "reg" and item.data_size % 512:
            self.write(bytes(512 - item.data_size % 512))


# ---------------------------------------------------------------------------------------------------------
# build


def _divide(items: list[_Item], parts: int) -> list[list[_Item]]:
    """Go ``divideEntries``: cut after the entry whose cumulative size passes each 1/N mark."""
    total = sum(i.header.size for i in items)
    unit = total // parts
    out: list[list[_Item]] = [[]]
    next_end, offset = unit, 0
    for item in items:
        out[-1].append(item)
        offset += item.header.size
        if offset > next_end:
            out.append([])
            next_end += unit
    return [p for p in out if p]


def _landmark(name: str) -> _Item:
    return _Item(header=TarHeader(name=name, size=1), data_size=1, payload=LANDMARK_CONTENTS,
                 force_member=True)


def _compressor(options: BuildOptions) -> Compressor:
    if options.compression == "gzip":
        return GzipCompressor(options.level)
    if options.compression == "zstd":
        return ZstdCompressor(options.level)
    raise FormatError(f"unknown compression {options.compression!r}")


def _toc_tar(toc_json: bytes) -> bytes:
    header = encode_go_header(TarHeader(name=TOC_TAR_NAME, size=len(toc_json)))
    return header + toc_json + bytes(-len(toc_json) % 512) + bytes(1024)


def _one_member(compressor: Compressor, data: bytes) -> bytes:
    member = compressor.member()
    return member.compress(data) + member.finish()


def build(src: BinaryIO, out: BinaryIO, options: BuildOptions | None = None) -> BuildResult:
    """Convert the tar layer ``src`` (plain, gzip or zstd) into an eStargz/zstd:chunked blob on ``out``."""
    options = options or BuildOptions()
    chunk_size = options.chunk_size if options.chunk_size > 0 else DEFAULT_CHUNK_SIZE
    if options.min_chunk_size < 0:
        raise FormatError(f"min chunk size {options.min_chunk_size} is negative")
    if options.keep_diff_id:
        if not options.external_toc:
            raise FormatError("keep-diff-id requires an external TOC")
        if options.compression != "gzip":
            raise FormatError("keep-diff-id is only defined for gzip eStargz")
        if options.prioritized_files:
            raise FormatError("keep-diff-id cannot reorder entries: no prioritized files allowed")
    if options.external_toc and options.compression != "gzip":
        raise FormatError("an external TOC is only defined for gzip eStargz")
    compressor = _compressor(options)
    with _open_input(src) as tar:
        scan = TarScan(tar.fd, tar.base, tar.size)
        members = list(scan)
        if options.keep_diff_id:
            return _build_lossless(tar, members, compressor, out, chunk_size, options)
        return _build_lossy(tar, members, compressor, out, chunk_size, options)


def _items(members: list[TarMember]) -> list[_Item]:
    out = []
    for m in members:
        if clean_entry_name(m.header.name) == TOC_TAR_NAME:
            continue
        out.append(_Item(header=m.header, data_offset=m.data_offset, data_size=m.data_size))
    return out


def _build_lossy(tar: _Input, members: list[TarMember], compressor: Compressor, out: BinaryIO,
                 chunk_size: int, options: BuildOptions) -> BuildResult:
    items = _items(members)
    prioritized = list(options.prioritized_files or [])
    keyed = [(i.header.name, i.header.typeflag, i.header.linkname, i) for i in items]
    first, rest, missed = prioritize(keyed, prioritized)
    if prioritized:
        ordered = [*first, _landmark(PREFETCH_LANDMARK), *rest]
    else:
        ordered = [_landmark(NO_PREFETCH_LANDMARK), *first, *rest]
    blob = _HashingWriter(out)
    threads = max(1, options.parallelism or os.cpu_count() or 1)
    w = _Writer(compressor, blob, tar, chunk_size, options.min_chunk_size, threads)
    parts = _divide(ordered, 1 if options.min_chunk_size > 0 else threads)
    try:
        for part in parts:
            # Go writes each part with its own Writer: a member ends and the name dedupe restarts
            w.cut()
            w.unames.clear()
            w.gnames.clear()
            for item in part:
                w.add(item)
        w.finish()
    finally:
        w.close()
    return _finish(compressor, blob, w.toc, w.diff, w.u, missed, external=options.external_toc)


def _finish(compressor: Compressor, blob: _HashingWriter, entries: list[TOCEntry], diff: _Hash,
            usize: int, missed: list[str], *, external: bool) -> BuildResult:
    toc_json = encode_toc(entries)
    toc_digest = "sha256:" + hashlib.sha256(toc_json).hexdigest()
    annotations = {TOC_DIGEST_ANNOTATION: toc_digest}
    toc_blob: bytes | None = None
    toc_offset = blob.n
    if isinstance(compressor, ZstdCompressor):
        trailer, zstd_annotations, toc_offset = toc_trailer(compressor, toc_json, blob.n)
        blob.write(trailer)
        annotations.update(zstd_annotations)
    else:
        toc_tar = _toc_tar(toc_json)
        member = _one_member(compressor, toc_tar)
        if external:
            toc_blob = member
            toc_offset = -1
            blob.write(external_toc_footer())
        else:
            blob.write(member)
            blob.write(estargz_footer(toc_offset))
            diff.update(toc_tar)
            usize += len(toc_tar)
    annotations[UNCOMPRESSED_SIZE_ANNOTATION] = str(usize)
    return BuildResult(
        blob_digest="sha256:" + blob.hash.hexdigest(), blob_size=blob.n, diff_id="sha256:" + diff.hexdigest(),
        uncompressed_size=usize, toc_digest=toc_digest, annotations=annotations, missed=missed,
        toc_blob=toc_blob, toc_offset=toc_offset,
    )


def _build_lossless(tar: _Input, members: list[TarMember], compressor: Compressor, out: BinaryIO,
                    chunk_size: int, options: BuildOptions) -> BuildResult:
    blob = _HashingWriter(out)
    threads = max(1, options.parallelism or os.cpu_count() or 1)
    w = _Writer(compressor, blob, tar, chunk_size, options.min_chunk_size, threads)

    def copy_raw(start: int, end: int) -> None:
        pos = start
        while pos < end:
            n = min(_READ_BLOCK, end - pos)
            w.write(w.pread(pos, n))
            pos += n

    cursor = 0
    try:
        for m in members:
            if clean_entry_name(m.header.name) == TOC_TAR_NAME:
                raise FormatError(
                    f"existing TOC entry {TOC_TAR_NAME!r} cannot be kept in a lossless conversion")
            copy_raw(cursor, m.data_offset)
            w.add(_Item(header=m.header, data_offset=m.data_offset, data_size=m.data_size), raw=True)
            # the payload of a non-empty regular file went through the chunker; anything else is raw
            cursor = m.end if m.header.typeflag == "0" and m.header.size > 0 else m.data_offset
        copy_raw(cursor, tar.size)
        w.finish()
    finally:
        w.close()
    return _finish(compressor, blob, w.toc, w.diff, w.u, [], external=True)
