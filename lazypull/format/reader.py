"""Open a layer blob lazily: footer + TOC from a few ranged reads, then chunks on demand.

``open_layer`` reads the blob's end once (``tail_read_size``: a share of the blob sized to hold the TOC
of a typical layer, or from a TOC-offset hint to the end); when the TOC lies inside that tail no second
read is made, else the second read asks only for the TOC's part before the tail. The TOC is
authenticated against the expected digest before it is parsed, and decompressed with a bounded output
so a hostile blob cannot make us allocate more than ``max_toc_size``. Each chunk is verified against
its ``chunkDigest`` when it is decoded.

Tree semantics follow stargz-snapshotter's reader (format.md 1.6, 4.2, 5): names normalised, missing
parent directories created (mode 0755), ``chunk`` entries attached to the preceding ``reg``, user/group
names filled from the last name seen for the id, hardlinks resolved (the target's ``num_link`` grows),
later duplicates replace earlier ones. This is the one place a layer's tree is built: the lazy mount's
inode table (``lazypull.fs.layer.inodes``) takes it as it is (``entries``, ``directories``,
``resolve``, ``link_count``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import msgspec

from lazypull.format import entryrules
from lazypull.format.compression import decompressor, gunzip_member, unzstd_bounded
from lazypull.format.errors import DigestMismatchError, FormatError
from lazypull.format.footer import MAX_FOOTER_SIZE, Footer, parse_footer
from lazypull.format.landmarks import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from lazypull.format.names import base_name, clean_entry_name, parent_dir
from lazypull.format.source import BlobSource
from lazypull.format.toc import TOC, TOC_TAR_NAME, TOCEntry, is_digest, parse_toc

_NO_XATTRS: dict[str, bytes] = {}
DEFAULT_MAX_TOC_SIZE = 150 << 20
TAIL_READ = 64 << 10
"""Fewest bytes read from a blob's end to find its footer (and a small TOC)."""
TAIL_SHARE = 128
MAX_TAIL_READ = 512 << 10
"""A TOC grows with a layer's files (the bench images' take 1/145 to 1/449 of their blob): reading
1/TAIL_SHARE of the blob's end, at most MAX_TAIL_READ, usually brings footer and TOC in one request,
saving a round trip per layer; what it reads beyond the TOC costs at most MAX_TAIL_READ of transfer."""
MAX_CHUNK_SIZE = 64 << 20
"""Largest chunk (uncompressed) a reader decodes. A chunk is decompressed and hashed whole in memory
before it can be checked, so its declared size is what one decode may cost; writers cut chunks at 4 MiB
by default (containers/storage smaller still), so 16 times that leaves room for a bigger
``--estargz-chunk-size`` while a hostile TOC cannot make one read inflate gigabytes."""
MAX_MEMBER_SKIP = 2 * MAX_CHUNK_SIZE
"""Largest ``innerOffset`` (uncompressed bytes decoded and thrown away before a chunk starts: the small
files packed in front of it in one member, each below the min-chunk-size)."""
MAX_COMPRESSED_RANGE = 4 * MAX_CHUNK_SIZE
"""Largest compressed range fetched (whole, into memory) for one chunk: its member holds the skipped
small files, the chunk, and the tar headers of the entries without content that follow it (about 50
compressed bytes each), never more than a few times the largest chunk."""
DEFAULT_MAX_ENTRIES = 1_000_000
"""Most TOC entries a layer may have (``open_layer(max_entries=)``). Measured on a 100k-entry TOC of
typical files (``name``, ``size``, ``mode``, ``modtime``, digests): the mount server keeps about
1.4 KiB per entry once the layer is mounted (TOC JSON, entries, tree, inodes) and 1.8 KiB once the
background fetch has indexed every file's chunks, so a layer at the limit costs under 2 GiB; large real
layers hold a few hundred thousand files."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One verifiable unit of file content and the compressed range that holds it."""

    name: str
    chunk_offset: int
    """Position of this chunk in the file."""
    chunk_size: int
    digest: str
    """sha256 of the chunk's uncompressed bytes."""
    offset: int
    """c-offset of the member/frame to start decompressing at."""
    inner_offset: int
    """Uncompressed bytes to skip after ``offset`` (min-chunk-size)."""
    end: int
    """c-offset where the compressed range needed for this chunk ends."""
    compression: str


def decode_chunk(chunk: Chunk, compressed: bytes) -> bytes:
    """Decompress ``compressed`` (= blob bytes ``[chunk.offset, chunk.end)``) and verify the chunk."""
    what = f"{chunk.name!r} chunk at {chunk.chunk_offset}"
    try:
        data = decompressor(chunk.compression).decompress(compressed, chunk.inner_offset, chunk.chunk_size)
    except FormatError as err:
        raise FormatError(f"{what} [{chunk.offset}, {chunk.end}): {err}") from err
    return _verified(chunk, data)


def _verified(chunk: Chunk, data: bytes) -> bytes:
    """``data`` if its sha256 is the chunk's digest, else DigestMismatchError."""
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != chunk.digest:
        raise DigestMismatchError(f"{chunk.name!r} chunk at {chunk.chunk_offset}: content digest {got} does "
                                  f"not match chunkDigest {chunk.digest}")
    return data


def decode_chunks(chunks: Sequence[Chunk], compressed: bytes) -> list[bytes | FormatError]:
    """:func:`decode_chunk` for chunks that share one compressed range (the same ``offset`` and ``end``).

    Small files packed into one member (min-chunk-size) share their member: decompressing it once for
    all of them, instead of once per chunk, saves work that grows with the square of their number.
    Each result is the chunk's verified bytes or the error :func:`decode_chunk` gives for it.
    """
    if len(chunks) > 1 and len({(c.offset, c.end, c.compression) for c in chunks}) == 1:
        first = chunks[0]
        try:
            plain = decompressor(first.compression).decompress(
                compressed, 0, max(c.inner_offset + c.chunk_size for c in chunks))
        except FormatError:
            pass    # fall back to one decode per chunk, for each chunk's own error
        else:
            out: list[bytes | FormatError] = []
            for chunk in chunks:
                start = chunk.inner_offset
                try:
                    out.append(_verified(chunk, plain[start : start + chunk.chunk_size]))
                except DigestMismatchError as err:
                    out.append(err)
            return out
    results: list[bytes | FormatError] = []
    for chunk in chunks:
        try:
            results.append(decode_chunk(chunk, compressed))
        except FormatError as err:
            results.append(err)
    return results


@functools.lru_cache(maxsize=64)
def zeros_digest(size: int) -> str:
    """sha256 of ``size`` zero bytes (a containers/storage hole), for ``size`` up to MAX_CHUNK_SIZE
    (callers check first); cached: the holes of a layer come in few sizes."""
    if not 0 <= size <= MAX_CHUNK_SIZE:
        raise FormatError(f"a hole of {size} bytes exceeds the chunk size limit ({MAX_CHUNK_SIZE})")
    h = hashlib.sha256()
    block = bytes(min(size, 1 << 20))
    while size > 0:
        n = min(size, len(block))
        h.update(block[:n])
        size -= n
    return "sha256:" + h.hexdigest()


def _parse_toc_tar(data: bytes, what: str) -> bytes:
    """The content of the first tar entry, which must be ``stargz.index.json``."""
    if len(data) < 512:
        raise FormatError(f"{what}: too short for a tar header")
    hdr = data[:512]
    stored = hdr[148:156].strip(b" \x00")
    try:
        chksum = int(stored, 8) if stored else -1
        size_field = hdr[124:136].strip(b" \x00")
        size = int(size_field, 8) if size_field else 0
    except ValueError as err:
        raise FormatError(f"{what}: malformed tar header") from err
    expect = sum(hdr[:148]) + 8 * 32 + sum(hdr[156:])
    if chksum != expect:
        raise FormatError(f"{what}: tar header checksum mismatch")
    name = hdr[:100].split(b"\x00", 1)[0]
    if name != TOC_TAR_NAME.encode():
        raise FormatError(f"{what}: first tar entry is {name!r}, not {TOC_TAR_NAME!r}")
    if hdr[156:157] not in (b"0", b"\x00"):
        raise FormatError(f"{what}: {TOC_TAR_NAME} is not a regular file")
    if 512 + size > len(data):
        raise FormatError(f"{what}: TOC entry is truncated ({size} bytes announced)")
    return data[512 : 512 + size]


def _unusual(name: str) -> bool:
    """Whether a name with no empty, ``.`` or ``..`` component (so neither absolute nor a whiteout
    anywhere) still needs :func:`entryrules.split_name`: a NUL, or possibly too long (an ASCII name of
    up to NAME_MAX characters has no component over NAME_MAX bytes)."""
    return "\x00" in name or (len(name) > entryrules.NAME_MAX // 4
                              and not (len(name) <= entryrules.NAME_MAX and name.isascii()))


class LayerReader:
    """A verified TOC of one blob, with the file tree and the chunks of every file."""

    def __init__(self, src: BlobSource, footer: Footer, toc: TOC, toc_json: bytes, compression: str,
                 manifest_checksum: str | None, verified_by: str | None, *,
                 toc_digest: str | None = None, strict: bool = False, max_file_size: int | None = None
                 ) -> None:
        """``toc``: freshly decoded from ``toc_json``; its entries become the reader's (names normalised).

        ``strict``: refuse what :mod:`lazypull.format.entryrules` refuses (names as stored, before they
        are normalised) and leave out aufs metadata and overlayfs's own xattrs, as extraction does; refuse
        the hardlinks extraction cannot make (to a directory, to a name no earlier entry has) and a
        hardlink's target replaced by a later entry (extraction links the earlier one), so that what a
        strict reader accepts shows the tree extraction makes. Without it, Go's reader rules (hostile
        names folded into the layer, a hardlink's target found in the whole TOC). ``max_file_size``: the
        layer's declared uncompressed size, which no file can exceed (strict only).
        """
        self.strict = strict
        self.max_file_size = max_file_size
        self.src = src
        self.footer = footer
        self.footer_kind = footer.kind
        self.toc_json = toc_json
        self.toc_digest = toc_digest or "sha256:" + hashlib.sha256(toc_json).hexdigest()
        """Digest of ``toc_json`` (``toc_digest`` is it, when the caller has computed it already)."""
        self.compression = compression
        self.manifest_checksum = manifest_checksum
        """zstd only: sha256 of the compressed TOC bytes (containers/storage's manifest-checksum)."""
        self.verified_by = verified_by
        """``"toc"`` (digest of the JSON), ``"manifest"`` (of the compressed TOC) or None (unchecked)."""
        self.blob_size = src.size
        self.payload_end = src.size - footer.size if footer.kind == "external" else footer.payload_end
        self._entries = toc.entries
        """The decoded entries, in TOC order; the reader owns them (normalises names in place)."""
        self.toc = TOC.lazy(toc_json, toc.version, toc.tar_split_digest, toc.schema)
        """The TOC as stored: its entries are decoded afresh when asked for (cli, tests)."""
        self._map: dict[str, TOCEntry] = {}
        self._children: dict[str, dict[str, TOCEntry]] = {}
        self._first: dict[int, int] = {}     # id of a reg entry -> its index in _entries (chunks follow it)
        self._targets: dict[int, TOCEntry] = {}  # id of a hardlink entry of the tree -> its target
        self._root_listed = False       # the TOC has an entry for the root (Go counts one link less)
        self._ends_list: list[int] | None = None
        self._build_tree()

    # -- construction -------------------------------------------------------------------------------------

    def _ends(self) -> list[int]:
        """For each ``reg``/``chunk`` entry, the c-offset where its compressed data ends (computed once)."""
        ends = self._ends_list
        if ends is not None:
            return ends
        entries = self._entries
        ends = [0] * len(entries)
        last = self.payload_end
        for i in range(len(entries) - 1, -1, -1):
            e = entries[i]
            if e.type in ("reg", "chunk"):
                ends[i] = last
            if e.offset != 0 and e.inner_offset == 0:
                last = e.offset
        self._ends_list = ends
        return ends

    def _build_tree(self) -> None:
        unames: dict[int, str] = {}
        gnames: dict[int, str] = {}
        first = self._first
        by_name: dict[str, TOCEntry] = {}
        after_reg = False
        strict = self.strict
        file_size = 0
        targets = self._targets
        linked: set[str] = set()        # strict: names a hardlink points to (a later entry may not replace)
        for index, e in enumerate(self._entries):
            kind = e.type
            if kind == "chunk":
                if not after_reg:
                    raise FormatError(f"TOC entry {index}: chunk of {e.name!r} follows no regular file")
                if strict and ((e.chunk_size or file_size - e.chunk_offset) > MAX_CHUNK_SIZE
                               or e.inner_offset > MAX_MEMBER_SKIP):
                    self._too_big(index, e, file_size - e.chunk_offset)
                continue
            if kind == "reg":
                file_size = e.size
                if strict and ((e.chunk_size or e.size) > MAX_CHUNK_SIZE or e.inner_offset > MAX_MEMBER_SKIP):
                    self._too_big(index, e, e.size)
            if not e.xattrs:
                e.xattrs = _NO_XATTRS                       # one shared empty dict: 64 bytes an entry less
            name = e.name
            if not (name and name[0] not in "./" and name[-1] != "/" and "//" not in name
                    and "/." not in name):
                if strict:
                    rest = name[2:] if name[:2] == "./" else name    # "./a/b/": as plain as "a/b"
                    if rest[-1:] == "/":
                        rest = rest[:-1]
                    plain = (rest and rest[0] not in "./" and rest[-1] != "/" and "//" not in rest
                             and "/." not in rest and not _unusual(rest))
                    if not plain and self._strict_check(index, e):
                        after_reg = kind == "reg"           # (its chunks are skipped with it)
                        continue                            # aufs metadata: not part of the tree
                e.name = name = clean_entry_name(name)      # (the test is clean_entry_name's fast path)
            elif strict and _unusual(name):
                self._strict_check(index, e)
            if strict and (e.xattrs or (kind != "reg" and kind != "dir") or (
                    kind == "reg" and self.max_file_size is not None and e.size > self.max_file_size)
                    or not (0 <= e.uid <= entryrules.ID_MAX and 0 <= e.gid <= entryrules.ID_MAX)):
                self._strict_check_other(index, e)
            if e.user_name:
                unames[e.uid] = e.user_name
            elif unames:
                e.user_name = unames.get(e.uid, "")
            if e.group_name:
                gnames[e.gid] = e.group_name
            elif gnames:
                e.group_name = gnames.get(e.gid, "")
            if linked and name in linked:
                raise entryrules.UnsafeEntryError(f"TOC entry {index} ({name[:200]!r}): replaces the "
                                                  f"target of an earlier hardlink")
            if kind == "reg":
                after_reg = True
                first[id(e)] = index
                if e.chunk_digest == e.digest:
                    e.chunk_digest = e.digest    # one string, not two equal ones (memory per entry)
            else:
                after_reg = False
                if kind == "dir":
                    e.num_link = 1
                elif kind == "hardlink":
                    e.link_name = link = clean_entry_name(e.link_name)
                    if strict:      # as extraction links it: to the entry the name has at this point
                        targets[id(e)] = self._strict_target(index, e, by_name.get(link))
                        linked.add(link)
            by_name[name] = e
        self._root_listed = "" in by_name
        root = by_name.get("") or TOCEntry(name="", type="dir", mode=0o755, num_link=2)
        if root.type != "dir":
            raise FormatError("the TOC's root entry is not a directory")
        self._map = by_name = {"": root, **by_name}
        children_of = self._children
        children_of[""] = {}
        last_parent: str | None = None
        pdir = root
        siblings: dict[str, TOCEntry] = {}
        for e in list(by_name.values()):
            name = e.name
            if name == "":
                continue
            pname, _, base = name.rpartition("/")
            if pname != last_parent:      # entries of one directory mostly come together
                found = by_name.get(pname)
                pdir = found if found is not None and found.type == "dir" else self._dir(pname)
                got = children_of.get(pname)
                if got is None:
                    got = children_of[pname] = {}
                siblings = got
                last_parent = pname
            e.num_link += 1
            child = e
            if e.type == "hardlink":
                child = self._resolve(e)
                child.num_link += 1
            if child.type == "dir":
                pdir.num_link += 1
            siblings[base] = child
        if strict:      # ranges chunks() would refuse when read: refused now, so a mount falls back
            ends = self._ends()
            for index, e in enumerate(self._entries):
                if ends[index] - e.offset > MAX_COMPRESSED_RANGE and not e.end_offset and (
                        e.type == "chunk" or (e.type == "reg" and e.size)):
                    raise FormatError(f"TOC entry {index} ({e.name[:200]!r}): compressed range "
                                      f"[{e.offset}, {ends[index]}) is over the limit "
                                      f"({MAX_COMPRESSED_RANGE})")

    def _strict_target(self, index: int, e: TOCEntry, target: TOCEntry | None) -> TOCEntry:
        """The entry a strict reader's hardlink ``e`` points to: ``target`` (its link name's entry so
        far), itself resolved; refused when extraction could not link it (UnsafeEntryError)."""
        problem = "is not in the layer (yet)"
        if target is not None:
            if target.type == "hardlink":
                target = self._targets[id(target)]      # resolved when it came: one step, not a chain
            if target.type != "dir":
                return target
            problem = "is a directory"
        raise entryrules.UnsafeEntryError(f"TOC entry {index} ({e.name[:200]!r}): hardlink target "
                                          f"{e.link_name[:200]!r} {problem}")

    def _too_big(self, index: int, e: TOCEntry, rest: int) -> None:
        """Refuse, when the tree is built, a chunk :meth:`chunks` would refuse when it is read: a mount
        then falls back to a full download instead of failing reads."""
        size = e.chunk_size or rest
        raise FormatError(f"TOC entry {index} ({e.name[:200]!r}): chunk at {e.chunk_offset} of {size} bytes "
                          f"(inner offset {e.inner_offset}) exceeds the chunk size limit ({MAX_CHUNK_SIZE})")

    def _strict_check(self, index: int, e: TOCEntry) -> bool:
        """Refuse an unsafe name (UnsafeEntryError naming the entry); True for aufs metadata."""
        try:
            parts = entryrules.split_name(e.name)
        except entryrules.UnsafeEntryError as err:
            raise entryrules.UnsafeEntryError(f"TOC entry {index} ({e.name[:200]!r}): {err}") from err
        return entryrules.is_dropped(parts)

    def _strict_check_other(self, index: int, e: TOCEntry) -> None:
        """Refuse unsafe link targets, device numbers, xattrs and sizes beyond the declared layer size;
        leave out overlayfs's own xattrs."""
        try:
            entryrules.check_owner(e.uid, e.gid)
            if e.type in ("symlink", "hardlink"):
                entryrules.check_link_target(e.link_name, hardlink=e.type == "hardlink")
            elif e.type in ("char", "block"):
                entryrules.check_device(e.dev_major, e.dev_minor)
            elif e.type == "reg" and self.max_file_size is not None and e.size > self.max_file_size:
                raise entryrules.UnsafeEntryError(f"size {e.size} exceeds the layer's declared uncompressed "
                                                  f"size {self.max_file_size}")
            for xname, value in e.xattrs.items():
                entryrules.check_xattr(xname, value)
        except entryrules.UnsafeEntryError as err:
            raise entryrules.UnsafeEntryError(f"TOC entry {index} ({e.name[:200]!r}): {err}") from err
        if any(entryrules.is_overlay_xattr(xname) for xname in e.xattrs):     # dropped, as extraction does
            e.xattrs = {k: v for k, v in e.xattrs.items() if not entryrules.is_overlay_xattr(k)} or _NO_XATTRS

    def _dir(self, name: str) -> TOCEntry:
        """The directory ``name``, creating it and missing ancestors (iteratively: names can be deep)."""
        missing: list[str] = []
        cur = name
        while True:
            e = self._map.get(cur)
            if e is not None:
                if e.type != "dir":
                    raise FormatError(f"{cur!r} is a parent directory in the TOC but has type {e.type!r}")
                self._children.setdefault(cur, {})
                break
            missing.append(cur)
            cur = parent_dir(cur)
        parent = e
        for d in reversed(missing):
            created = TOCEntry(name=d, type="dir", mode=0o755, num_link=2)
            self._map[d] = created
            self._children[d] = {}
            parent.num_link += 1
            self._children[parent.name][base_name(d)] = created
            parent = created
        return parent

    def _resolve(self, e: TOCEntry) -> TOCEntry:
        """The target of hardlink ``e`` of the tree (Go's rule: the entry its link name has in the whole
        TOC), remembered for every hardlink on the way: a chain of n hardlinks costs n steps, not n**2."""
        targets = self._targets
        found = targets.get(id(e))
        if found is not None:
            return found
        chain: list[TOCEntry] = []
        on_chain: set[int] = set()
        org = e
        while org.type == "hardlink":
            known = targets.get(id(org))
            if known is not None:
                org = known
                break
            chain.append(org)
            on_chain.add(id(org))
            target = self._map.get(org.link_name)
            if target is None:
                raise FormatError(f"{e.name!r} is a hardlink but the linkname {org.link_name!r} isn't found")
            if id(target) in on_chain:
                raise FormatError(f"hardlink {e.name!r} is part of a loop")
            org = target
        for link in chain:
            targets[id(link)] = org
        return org

    # -- tree ---------------------------------------------------------------------------------------------

    def entries(self) -> Iterator[TOCEntry]:
        """Every entry once (last duplicate wins), root ``""`` first, implied directories included.

        Hardlinks appear as themselves (``type == "hardlink"``, normalised ``link_name``); use
        ``resolve`` or ``lookup`` for the target.
        """
        yield from self._map.values()

    def resolve(self, entry: TOCEntry) -> TOCEntry:
        """The entry a hardlink of this reader's tree points to (itself for anything else)."""
        if entry.type != "hardlink":
            return entry
        if self._map.get(entry.name) is not entry:
            raise FormatError(f"{entry.name!r} is not an entry of this layer")
        return self._targets[id(entry)]        # (every hardlink of the tree was resolved when it was built)

    def directories(self) -> Iterator[tuple[TOCEntry, dict[str, TOCEntry]]]:
        """Every directory with children, root first: its entry and its children by base name (hardlinks
        resolved to their target). The reader's own dicts, not copies: callers must not change them."""
        by_name = self._map
        for name, kids in self._children.items():
            yield by_name[name], kids

    def link_count(self, entry: TOCEntry) -> int:
        """The link count a file system shows for an entry of the tree: its names (hardlinks included);
        for a directory 2 and one per subdirectory. ``num_link`` is Go's count, one less for a root the
        TOC lists (Go counts no parent link for it)."""
        if self._root_listed and entry.name == "" and self._map[""] is entry:
            return entry.num_link + 1
        return entry.num_link

    def lookup(self, name: str) -> TOCEntry | None:
        """The entry for ``name`` (any spelling), hardlinks resolved to their target, or None."""
        e = self._map.get(clean_entry_name(name))
        if e is None:
            return None
        return self.resolve(e)

    def children(self, name: str) -> dict[str, TOCEntry]:
        """Base name -> entry (hardlinks resolved) of a directory; empty for anything else."""
        return dict(self._children.get(clean_entry_name(name), {}))

    # -- content ------------------------------------------------------------------------------------------

    def chunks(self, entry: TOCEntry) -> list[Chunk]:
        """The chunks of a regular file in file order (hardlinks resolved); made afresh at each call (the
        lazy tree keeps those of the files it reads, a second copy would cost memory per file)."""
        entry = self.resolve(entry)
        if entry.type != "reg" or entry.size == 0:
            return []
        index = self._first.get(id(entry))
        if index is None or self._entries[index] is not entry:
            raise FormatError(f"{entry.name!r} is not an entry of this layer")
        entries, ends = self._entries, self._ends()
        stop = index + 1
        while stop < len(entries) and entries[stop].type == "chunk":
            stop += 1
        group = [(entries[i], ends[i]) for i in range(index, stop)]
        out: list[Chunk] = []
        pos = 0
        for ce, end in group:
            coff = ce.chunk_offset
            csize = ce.chunk_size or entry.size - coff
            if entry.end_offset and ce is group[-1][0]:
                end = entry.end_offset  # containers/storage: the last frame of the payload ends here
            if csize > MAX_CHUNK_SIZE or ce.inner_offset > MAX_MEMBER_SKIP:
                raise FormatError(f"{entry.name!r}: chunk at {coff} of {csize} bytes (inner offset "
                                  f"{ce.inner_offset}) exceeds the chunk size limit ({MAX_CHUNK_SIZE})")
            digest = ce.chunk_digest
            if not digest and coff == 0 and csize == entry.size:
                digest = entry.digest
            if not digest and ce.chunk_type == "zeros" and csize > 0 and coff + csize <= entry.size:
                digest = zeros_digest(csize)  # containers/storage hole: the content is known
            if not is_digest(digest):
                raise FormatError(f"{entry.name!r}: chunk at {coff} has no usable chunkDigest ({digest!r})")
            if coff != pos or csize <= 0 or coff + csize > entry.size:
                raise FormatError(f"{entry.name!r}: chunk at {coff} (size {csize}) does not continue the "
                                  f"file at {pos} (file size {entry.size})")
            if not 0 <= ce.offset < end <= self.blob_size:
                raise FormatError(f"{entry.name!r}: chunk at {coff} has invalid compressed range "
                                  f"[{ce.offset}, {end}) in a {self.blob_size}-byte blob")
            if end - ce.offset > MAX_COMPRESSED_RANGE:
                raise FormatError(f"{entry.name!r}: chunk at {coff} has a compressed range of "
                                  f"{end - ce.offset} bytes, over the limit ({MAX_COMPRESSED_RANGE})")
            out.append(Chunk(name=entry.name, chunk_offset=coff, chunk_size=csize, digest=digest,
                             offset=ce.offset, inner_offset=ce.inner_offset, end=end,
                             compression=self.compression))
            pos = coff + csize
        if pos != entry.size:
            raise FormatError(f"{entry.name!r}: chunks cover {pos} of {entry.size} bytes")
        return out

    def read_chunk(self, chunk: Chunk) -> bytes:
        """Fetch and verify one chunk."""
        length = chunk.end - chunk.offset
        data = self.src.read_at(chunk.offset, length)
        if len(data) != length:
            raise FormatError(f"blob is truncated: {chunk.name!r} chunk at {chunk.chunk_offset} needs bytes "
                              f"[{chunk.offset}, {chunk.end}) of a {self.blob_size}-byte blob")
        return decode_chunk(chunk, data)

    def read_file(self, entry: TOCEntry) -> bytes:
        """The whole content of a regular file, every chunk verified (for small files and tests)."""
        entry = self.resolve(entry)
        if entry.type != "reg":
            raise FormatError(f"{entry.name!r} is a {entry.type}, not a regular file")
        return b"".join(self.read_chunk(c) for c in self.chunks(entry))

    def prefetch_range(self) -> tuple[int, int] | None:
        """``[0, landmark offset)`` when the layer has ``.prefetch.landmark``; None otherwise."""
        root = self._children[""]
        if NO_PREFETCH_LANDMARK in root:
            return None
        landmark = root.get(PREFETCH_LANDMARK)
        if landmark is None or landmark.type != "reg":
            return None
        return (0, landmark.offset)

    def landmark(self) -> str | None:
        """Which landmark file the layer carries, if any."""
        root = self._children[""]
        for name in (NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK):
            if name in root:
                return name
        return None

    def verify(self) -> None:
        """Read and verify every chunk of every file; raises FormatError naming the first bad one."""
        done: set[int] = set()
        for e in self._map.values():
            target = self.resolve(e)
            if target.type != "reg" or id(target) in done:
                continue
            done.add(id(target))
            for chunk in self.chunks(target):
                self.read_chunk(chunk)


class _Skip(msgspec.Struct, gc=False):
    """Any JSON object, its keys ignored: counting a TOC's entries costs a pointer each, not a decode."""


_COUNTER = msgspec.json.Decoder(list[_Skip])


def check_entry_count(toc_json: bytes, max_entries: int) -> None:
    """Refuse a TOC of more than ``max_entries`` entries before decoding it (decoding costs memory).

    Every entry is a JSON object, so the number of ``{`` bounds the number of entries from above: only
    a TOC over the limit by that count is counted exactly (its ``entries`` array, any key spelling).
    """
    braces = toc_json.count(b"{")
    if braces <= max_entries:
        return
    count = braces          # JSON msgspec cannot decode (only Python's parser takes it): the bound
    try:
        top = msgspec.json.decode(toc_json, type=dict[str, msgspec.Raw])
        raw = [value for key, value in top.items() if key.lower() == "entries"]
        count = len(_COUNTER.decode(raw[-1])) if raw else 0
    except (msgspec.MsgspecError, ValueError, RecursionError):
        pass
    if count > max_entries:
        raise FormatError(f"TOC has {count} entries, more than the limit of {max_entries} per layer")


def tail_read_size(blob_size: int) -> int:
    """Bytes ``open_layer`` reads from the end of a blob of ``blob_size`` bytes (no offset hint)."""
    return min(blob_size, max(TAIL_READ, min(MAX_TAIL_READ, blob_size // TAIL_SHARE)))


def open_layer(src: BlobSource, *, toc_digest: str | None = None, external_toc: bytes | None = None,
               toc_offset_hint: int | None = None, max_toc_size: int = DEFAULT_MAX_TOC_SIZE,
               max_entries: int = DEFAULT_MAX_ENTRIES, strict: bool = False,
               max_file_size: int | None = None) -> LayerReader:
    """Read the footer and TOC of a blob and check the TOC against ``toc_digest`` (if given).

    ``max_entries`` bounds the memory the TOC's tree takes; ``strict`` and ``max_file_size`` are the
    lazy mount's checks (see :class:`LayerReader`).

    ``toc_digest`` may be the digest of the TOC JSON (``containerd.io/snapshot/stargz/toc.digest``) or,
    for zstd:chunked, of the compressed TOC (``...zstd-chunked.manifest-checksum``);
    ``LayerReader.verified_by`` says which matched. ``external_toc`` is the TOC blob (a gzip member)
    of a layer built with an external TOC.
    """
    if toc_digest is not None and not is_digest(toc_digest):
        raise FormatError(f"expected TOC digest {toc_digest!r} is not a sha256 digest")
    size = src.size
    if size < 40:
        raise FormatError(f"blob of {size} bytes is too small to be eStargz or zstd:chunked")
    start = size - tail_read_size(size)
    if toc_offset_hint is not None:
        if not 0 <= toc_offset_hint < size:
            raise FormatError(f"TOC offset hint {toc_offset_hint} is outside the blob ({size} bytes)")
        start = min(max(0, toc_offset_hint - 8), size - min(size, MAX_FOOTER_SIZE))
    tail = src.read_at(start, size - start)
    if len(tail) != size - start:
        raise FormatError(f"blob is truncated: read {len(tail)} of {size - start} bytes at offset {start}")
    footer = parse_footer(tail, size)

    def fetch(offset: int, length: int) -> bytes:
        if offset >= start:
            return tail[offset - start : offset - start + length]
        head = min(length, start - offset)        # only what the tail lacks
        data = src.read_at(offset, head)
        if len(data) != head:
            raise FormatError(f"blob is truncated: TOC range [{offset}, {offset + length}) is short")
        return data + tail[: length - head]

    manifest_checksum: str | None = None
    max_compressed = max_toc_size + (max_toc_size >> 4) + 65536
    if footer.kind in ("estargz", "legacy", "external"):
        compression = "gzip"
        if footer.kind == "external":
            if external_toc is None:
                raise FormatError("the blob's TOC is external (46-byte footer): pass the TOC blob")
            toc_member = external_toc
            what = "external TOC blob"
        else:
            if footer.toc_length > max_compressed:
                raise FormatError(f"TOC member of {footer.toc_length} bytes exceeds the limit "
                                  f"({max_toc_size})")
            toc_member = fetch(footer.toc_offset, footer.toc_length)
            what = f"TOC member at offset {footer.toc_offset}"
        tar = gunzip_member(toc_member, max_toc_size + 4096, what)
        toc_json = _parse_toc_tar(tar, what)
        if len(toc_json) > max_toc_size:
            raise FormatError(f"TOC of {len(toc_json)} bytes exceeds the limit ({max_toc_size})")
    else:
        compression = "zstd"
        if footer.toc_uncompressed > max_toc_size or footer.toc_length > max_compressed:
            raise FormatError(f"zstd:chunked TOC of {footer.toc_uncompressed} bytes "
                              f"({footer.toc_length} compressed) exceeds the limit ({max_toc_size})")
        compressed = fetch(footer.toc_offset, footer.toc_length)
        manifest_checksum = "sha256:" + hashlib.sha256(compressed).hexdigest()
        toc_json = unzstd_bounded(compressed, max_toc_size, f"zstd:chunked TOC at offset {footer.toc_offset}")
        if len(toc_json) != footer.toc_uncompressed:
            raise FormatError(f"zstd:chunked TOC is {len(toc_json)} bytes, footer says "
                              f"{footer.toc_uncompressed}")
    json_digest = "sha256:" + hashlib.sha256(toc_json).hexdigest()
    verified_by: str | None = None
    if toc_digest is not None:
        if toc_digest == json_digest:
            verified_by = "toc"
        elif manifest_checksum is not None and toc_digest == manifest_checksum:
            verified_by = "manifest"
        else:
            also = f" nor compressed TOC digest {manifest_checksum}" if manifest_checksum else ""
            raise DigestMismatchError(f"invalid TOC: JSON digest {json_digest}{also} does not match "
                                      f"expected {toc_digest}")
    check_entry_count(toc_json, max_entries)
    toc = parse_toc(toc_json)
    return LayerReader(src, footer, toc, toc_json, compression, manifest_checksum, verified_by,
                       toc_digest=json_digest, strict=strict, max_file_size=max_file_size)
