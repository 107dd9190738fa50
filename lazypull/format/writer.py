"""Build eStargz / zstd:chunked blobs from a tar (what ``nerdctl image convert --estargz`` does per layer).

Lossy mode (Go ``estargz.Build``): the input (plain, gzip or zstd tar, detected by magic) is spooled to
a temporary file, its entries ordered (prioritised files + landmark, see ``landmarks``), split into N
parts by payload size, each part compressed in its own thread into members, and the parts concatenated
with their TOC offsets re-based. Every header is re-encoded by Go's rules (``tarheader``). Member
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
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, BinaryIO, Literal

import zstandard
from isal import igzip

from lazypull.format.compression import (
    Compressor,
    GzipCompressor,
    MemberEncoder,
    ZstdCompressor,
    detect,
)
from lazypull.format.errors import FormatError
from lazypull.format.footer import estargz_footer, external_toc_footer, skippable_frame, zstd_footer
from lazypull.format.landmarks import (
    LANDMARK_CONTENTS,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    prioritize,
)
from lazypull.format.names import clean_entry_name
from lazypull.format.tarheader import NS, TarHeader, TarMember, TarScan, encode_go_header
from lazypull.format.toc import TOC_TAR_NAME, TOCEntry, encode_toc

if TYPE_CHECKING:
    from hashlib import _Hash

DEFAULT_CHUNK_SIZE = 4 << 20
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
ZSTD_MANIFEST_CHECKSUM_ANNOTATION = "io.containers.zstd-chunked.manifest-checksum"
ZSTD_MANIFEST_POSITION_ANNOTATION = "io.containers.zstd-chunked.manifest-position"
CS_MANIFEST_CHECKSUM_ANNOTATION = "io.github.containers.zstd-chunked.manifest-checksum"
CS_MANIFEST_POSITION_ANNOTATION = "io.github.containers.zstd-chunked.manifest-position"
_TYPES = {"0": "reg", "1": "hardlink", "2": "symlink", "3": "char", "4": "block", "5": "dir", "6": "fifo"}
_READ_BLOCK = 4 << 20
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    """Parts compressed in parallel; default ``os.cpu_count()``; forced to 1 with min_chunk_size."""


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


@contextlib.contextmanager
def _open_input(src: BinaryIO) -> Iterator[_Input]:
    """A plain tar readable with pread: the caller's file itself, or a decompressed spool."""
    head = src.read(4)
    kind = detect(head)
    if kind == "tar":
        with contextlib.suppress(OSError, AttributeError, io.UnsupportedOperation):
            if src.seekable():
                fd = src.fileno()
                base = src.tell() - len(head)
                size = os.fstat(fd).st_size - base
                yield _Input(fd, base, size)
                return
    stream: BinaryIO = io.BufferedReader(_Prefixed(head, src))
    with tempfile.TemporaryFile(prefix="lazypull-tar-") as spool:
        try:
            if kind == "gzip":
                with igzip.GzipFile(fileobj=stream, mode="rb") as gz:  # type: ignore[no-untyped-call]
                    shutil.copyfileobj(gz, spool, _READ_BLOCK)
            elif kind == "zstd":
                reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
                shutil.copyfileobj(reader, spool, _READ_BLOCK)
            else:
                shutil.copyfileobj(stream, spool, _READ_BLOCK)
        except (OSError, EOFError, zstandard.ZstdError) as err:
            raise FormatError(f"cannot decompress the {kind} input layer: {err}") from err
        spool.flush()
        yield _Input(spool.fileno(), 0, spool.tell())


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


Segment = bytes | tuple[int, int]


@dataclass
class _PartResult:
    toc: list[TOCEntry]
    segments: list[Segment]
    c_size: int
    u_size: int
    file: BinaryIO | None


class _PartWriter:
    """Compresses a sequence of entries into members, building TOC entries (Go ``Writer.appendTar``)."""

    def __init__(self, compressor: Compressor, fd: int, base: int, sink: _HashingWriter | BinaryIO,
                 chunk_size: int, min_chunk_size: int) -> None:
        self.compressor = compressor
        self.fd, self.base = fd, base
        self.sink = sink
        self.chunk_size = chunk_size
        self.min_chunk_size = min_chunk_size
        self.c = 0
        self.u = 0
        self.member: MemberEncoder | None = None
        self.member_c = 0
        self.member_u = 0
        self.toc: list[TOCEntry] = []
        self.segments: list[Segment] = []
        self.unames: dict[int, str] = {}
        self.gnames: dict[int, str] = {}

    def _emit(self, data: bytes) -> None:
        if data:
            self.sink.write(data)
            self.c += len(data)

    def _open(self) -> MemberEncoder:
        if self.member is None:
            self.member = self.compressor.member()
            self.member_c, self.member_u = self.c, self.u
        return self.member

    def close_member(self) -> None:
        if self.member is not None:
            self._emit(self.member.finish())
            self.member = None

    def write(self, data: bytes | memoryview, segment: Segment) -> None:
        if not len(data):
            return
        self._emit(self._open().compress(data))
        self.u += len(data)
        self.segments.append(segment)

    def _pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, self.base + offset)
        if len(data) != length:
            raise FormatError(f"input tar is truncated at offset {offset}")
        return data

    def _name_if_changed(self, names: dict[int, str], ident: int, name: str) -> str:
        if not name or names.get(ident) == name:
            return ""
        names[ident] = name
        return name

    def _start_chunk(self, force: bool) -> tuple[int, int]:
        """Close/flush per min-chunk-size; returns (member c-offset, inner offset) for the chunk."""
        if self.min_chunk_size > 0 and self.member is not None and not force:
            self._emit(self.member.flush())
            if self.c - self.member_c < self.min_chunk_size:
                return self.member_c, self.u - self.member_u
        self.close_member()
        self._open()
        return self.member_c, 0

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
            ent.offset, ent.inner_offset = self._start_chunk(item.force_member)
            chunk_hash = hashlib.sha256()
            done = 0
            while done < csize:
                n = min(_READ_BLOCK, csize - done)
                if item.payload is not None:
                    data = item.payload[written + done : written + done + n]
                    segment: Segment = data
                else:
                    at = item.data_offset + written + done
                    data = self._pread(at, n)
                    segment = (at, n)
                chunk_hash.update(data)
                if not single:
                    file_hash.update(data)
                self.write(data, segment)
                done += n
            ent.chunk_digest = "sha256:" + chunk_hash.hexdigest()
            self.toc.append(ent)
            written += csize
            if written < size:
                ent = TOCEntry(name=name, type="chunk", chunk_offset=written)
        first.digest = first.chunk_digest if single else "sha256:" + file_hash.hexdigest()

    def add(self, item: _Item, raw_header: bytes | None = None) -> None:
        """Append one entry (lossy: re-encoded header; lossless: ``raw_header`` given)."""
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
        if raw_header is None:
            header = encode_go_header(h)
            self.write(header, header)
        if kind in ("hardlink", "symlink"):
            ent.link_name = h.linkname
        elif kind in ("char", "block"):
            ent.dev_major, ent.dev_minor = h.devmajor, h.devminor
        if kind == "reg" and h.size > 0:
            ent.size = h.size
            self.payload(item, h.name, ent)
        else:
            if kind == "reg":
                ent.digest = "sha256:" + hashlib.sha256(b"").hexdigest()
            self.toc.append(ent)
        if raw_header is None:
            pad = -item.data_size % 512 if kind == "reg" else 0
            if pad:
                zeros = bytes(pad)
                self.write(zeros, zeros)


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
            return _build_lossless(tar, members, compressor, out, chunk_size, options.min_chunk_size)
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
    nparts = 1 if options.min_chunk_size > 0 else max(1, options.parallelism or os.cpu_count() or 1)
    parts = _divide(ordered, nparts)
    blob = _HashingWriter(out)

    def run(index: int, part: list[_Item]) -> _PartResult:
        comp = compressor.fork() if isinstance(compressor, ZstdCompressor) else compressor
        file: BinaryIO | None = None
        sink: _HashingWriter | BinaryIO
        if index == 0:
            sink = blob
        else:
            file = tempfile.TemporaryFile(prefix="lazypull-part-")  # noqa: SIM115 - closed below
            sink = file
        try:
            w = _PartWriter(comp, tar.fd, tar.base, sink, chunk_size, options.min_chunk_size)
            for item in part:
                w.add(item)
            w.close_member()
        except BaseException:
            if file is not None:
                file.close()
            raise
        return _PartResult(w.toc, w.segments, w.c, w.u, file)

    if len(parts) == 1:
        results = [run(0, parts[0])]
    else:
        with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="lazypull-build") as pool:
            futures = [pool.submit(run, i, p) for i, p in enumerate(parts)]
        results = []
        error: BaseException | None = None
        for f in futures:
            exc = f.exception()
            if exc is None:
                results.append(f.result())
            elif error is None:
                error = exc
        if error is not None:
            for r in results:
                if r.file is not None:
                    r.file.close()
            raise error
    entries: list[TOCEntry] = []
    diff = hashlib.sha256()
    usize = 0
    for r in results:
        base = 0 if r.file is None else blob.n  # part 0 went straight to the blob
        if r.file is not None:
            r.file.seek(0)
            with r.file:
                while block := r.file.read(_READ_BLOCK):
                    blob.write(block)
        for e in r.toc:
            if e.type == "chunk" or (e.type == "reg" and e.size > 0):
                e.offset += base
            entries.append(e)
        _hash_segments(diff, r.segments, tar)
        usize += r.u_size
    return _finish(compressor, blob, entries, diff, usize, missed, external=options.external_toc)


def _hash_segments(diff: _Hash, segments: list[Segment], tar: _Input) -> None:
    for seg in segments:
        if isinstance(seg, tuple):
            offset, length = seg
            diff.update(os.pread(tar.fd, length, tar.base + offset))
        else:
            diff.update(seg)


def _finish(compressor: Compressor, blob: _HashingWriter, entries: list[TOCEntry], diff: _Hash,
            usize: int, missed: list[str], *, external: bool) -> BuildResult:
    toc_json = encode_toc(entries)
    toc_digest = "sha256:" + hashlib.sha256(toc_json).hexdigest()
    annotations = {TOC_DIGEST_ANNOTATION: toc_digest}
    toc_blob: bytes | None = None
    toc_offset = blob.n
    if isinstance(compressor, ZstdCompressor):
        compressed = compressor.compress_whole(toc_json)
        toc_offset = blob.n + 8
        blob.write(skippable_frame(compressed))
        blob.write(zstd_footer(toc_offset, len(compressed), len(toc_json)))
        annotations[ZSTD_MANIFEST_CHECKSUM_ANNOTATION] = "sha256:" + hashlib.sha256(compressed).hexdigest()
        annotations[ZSTD_MANIFEST_POSITION_ANNOTATION] = f"{toc_offset}:{len(compressed)}:{len(toc_json)}:1"
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
                    chunk_size: int, min_chunk_size: int) -> BuildResult:
    blob = _HashingWriter(out)
    w = _PartWriter(compressor, tar.fd, tar.base, blob, chunk_size, min_chunk_size)
    cursor = 0

    def copy_raw(start: int, end: int) -> None:
        pos = start
        while pos < end:
            n = min(_READ_BLOCK, end - pos)
            w.write(w._pread(pos, n), (pos, n))
            pos += n

    for m in members:
        if clean_entry_name(m.header.name) == TOC_TAR_NAME:
            raise FormatError(f"existing TOC entry {TOC_TAR_NAME!r} cannot be kept in a lossless conversion")
        copy_raw(cursor, m.data_offset)
        w.add(_Item(header=m.header, data_offset=m.data_offset, data_size=m.data_size), raw_header=b"")
        # the payload of a non-empty regular file went through the chunker; anything else is raw
        cursor = m.end if m.header.typeflag == "0" and m.header.size > 0 else m.data_offset
    copy_raw(cursor, tar.size)
    w.close_member()
    diff = hashlib.sha256()
    _hash_segments(diff, w.segments, tar)
    return _finish(compressor, blob, w.toc, diff, w.u, [], external=True)
