"""Hostile or broken blobs and tars: each is a clear FormatError, never a crash, hang or host access."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from lazypull.format import (
    BuildOptions,
    BytesSource,
    DigestMismatchError,
    FormatError,
    build,
    open_layer,
)
from lazypull.format.footer import estargz_footer
from lazypull.format.tarheader import TarHeader, encode_go_header

TINY_TOC_OFFSET = 245  # format.md 1.12


def _tiny(vectors: Path) -> bytes:
    return (vectors / "tiny.esgz").read_bytes()


def _with_toc(vectors: Path, toc: bytes | dict[str, object], *, member: bytes | None = None) -> bytes:
    """tiny.esgz's data members followed by a TOC member of our choosing and a matching footer."""
    data = _tiny(vectors)[:TINY_TOC_OFFSET]
    raw = toc if isinstance(toc, bytes) else json.dumps(toc).encode()
    if member is None:
        tar = encode_go_header(TarHeader(name="stargz.index.json", size=len(raw)))
        member = gzip.compress(tar + raw + bytes(-len(raw) % 512) + bytes(1024))
    return data + member + estargz_footer(TINY_TOC_OFFSET)


def _tiny_toc(vectors: Path) -> dict[str, object]:
    return json.loads((vectors / "tiny.esgz.toc.json").read_bytes())  # type: ignore[no-any-return]


@pytest.mark.parametrize("cut", [1, 10, 51, 300, 600])
def test_truncated_blob(vectors: Path, cut: int) -> None:
    blob = _tiny(vectors)
    with pytest.raises(FormatError):
        open_layer(BytesSource(blob[:-cut])).verify()


def test_truncated_source_reads_short(vectors: Path) -> None:
    class Short(BytesSource):
        def read_at(self, offset: int, length: int) -> bytes:
            return super().read_at(offset, length)[: max(0, length - 5)]

    with pytest.raises(FormatError, match="truncated"):
        open_layer(Short(_tiny(vectors)))


@pytest.mark.parametrize(("pos", "value", "message"), [
    (-51 + 12, b"XG", "no eStargz"),           # subfield id
    (-51 + 14, b"\x15\x00", "no eStargz"),      # subfield length
    (-51 + 32, b"STARGX", "no eStargz"),        # magic
    (-51 + 16, b"zz", "hex"),                   # TOC offset digits
    (-51 + 16, b"ffff", "beyond"),              # TOC offset past the end
])
def test_wrong_footer(vectors: Path, pos: int, value: bytes, message: str) -> None:
    blob = bytearray(_tiny(vectors))
    blob[len(blob) + pos : len(blob) + pos + len(value)] = value
    with pytest.raises(FormatError, match=message):
        open_layer(BytesSource(bytes(blob)))


def test_not_a_layer() -> None:
    with pytest.raises(FormatError, match="footer"):
        open_layer(BytesSource(bytes(range(256)) * 4))
    with pytest.raises(FormatError, match="too small"):
        open_layer(BytesSource(b"\x1f\x8b"))


def test_toc_digest_mismatch_and_bad_digest(vectors: Path) -> None:
    with pytest.raises(DigestMismatchError, match="does not match"):
        open_layer(BytesSource(_tiny(vectors)), toc_digest="sha256:" + "0" * 64)
    with pytest.raises(FormatError, match="not a sha256"):
        open_layer(BytesSource(_tiny(vectors)), toc_digest="md5:abc")


def test_corrupted_chunk(vectors: Path) -> None:
    blob = bytearray(_tiny(vectors))
    blob[220] ^= 0xFF  # inside the member holding "hello\n" (c-range [210, 245))
    reader = open_layer(BytesSource(bytes(blob)))
    with pytest.raises(FormatError, match=r"hello\.txt"):
        reader.verify()


def test_chunk_digest_mismatch(vectors: Path) -> None:
    toc = _tiny_toc(vectors)
    entries = toc["entries"]
    assert isinstance(entries, list)
    entries[2]["chunkDigest"] = "sha256:" + "1" * 64
    reader = open_layer(BytesSource(_with_toc(vectors, toc)))
    with pytest.raises(DigestMismatchError, match="chunkDigest"):
        reader.verify()


def test_missing_chunk_digest(vectors: Path) -> None:
    toc = _tiny_toc(vectors)
    entries = toc["entries"]
    assert isinstance(entries, list)
    del entries[2]["chunkDigest"]
    del entries[2]["digest"]
    reader = open_layer(BytesSource(_with_toc(vectors, toc)))
    with pytest.raises(FormatError, match="chunkDigest"):
        reader.verify()


def test_non_gzip_toc_member(vectors: Path) -> None:
    with pytest.raises(FormatError, match="gzip"):
        open_layer(BytesSource(_with_toc(vectors, b"", member=b"this is not gzip at all" * 4)))


def test_toc_entry_not_named_stargz_index(vectors: Path) -> None:
    raw = b"{}"
    tar = encode_go_header(TarHeader(name="other.json", size=len(raw)))
    member = gzip.compress(tar + raw + bytes(510) + bytes(1024))
    with pytest.raises(FormatError, match=r"not 'stargz\.index\.json'"):
        open_layer(BytesSource(_with_toc(vectors, b"", member=member)))


@pytest.mark.parametrize(("toc", "message"), [
    (b"[1, 2]", "not an object"),
    (b"{not json", "not valid JSON"),
    (b'{"entries": [{"name": "a", "type": "weird"}]}', "unknown type"),
    (b'{"entries": [{"name": "a", "type": "reg", "size": "1"}]}', "must be an integer"),
    (b'{"entries": [{"name": "a", "type": "reg", "size": -1}]}', "negative"),
    (b'{"entries": [{"name": "a", "type": "hardlink", "linkName": "missing"}]}', "isn't found"),
    (b'{"entries": [{"name": "a", "type": "hardlink", "linkName": "a"}]}', "loop"),
    (b'{"entries": [{"name": "f", "type": "reg"}, {"name": "f/g", "type": "reg"}]}', "parent directory"),
    (b'{"entries": [{"name": "x", "type": "chunk"}]}', "follows no regular file"),
    (b'{"entries": [{"name": "a", "type": "reg", "xattrs": {"k": "!!"}}]}', "base64"),
])
def test_bad_toc_json(vectors: Path, toc: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        open_layer(BytesSource(_with_toc(vectors, toc)))


def test_bad_chunk_ranges(vectors: Path) -> None:
    toc = _tiny_toc(vectors)
    entries = toc["entries"]
    assert isinstance(entries, list)
    entries[2]["offset"] = 10_000
    reader = open_layer(BytesSource(_with_toc(vectors, toc)))
    with pytest.raises(FormatError, match="invalid compressed range"):
        reader.verify()


def test_toc_size_limit(vectors: Path) -> None:
    with pytest.raises(FormatError, match=r"more than|exceeds"):
        open_layer(BytesSource(_tiny(vectors)), max_toc_size=100)
    # a gzip bomb in place of the TOC is refused without inflating it all
    bomb = gzip.compress(bytes(8 << 20), 1)
    with pytest.raises(FormatError, match="more than"):
        open_layer(BytesSource(_with_toc(vectors, b"", member=bomb)), max_toc_size=1 << 20)


def test_zstd_footer_magic_and_range(vectors: Path) -> None:
    blob = bytearray((vectors / "tiny.zstd").read_bytes())
    bad_range = bytearray(blob)
    bad_range[-40:-32] = (10_000).to_bytes(8, "little")
    with pytest.raises(FormatError, match="outside the blob"):
        open_layer(BytesSource(bytes(bad_range)))
    blob[-1:] = b"y"
    with pytest.raises(FormatError, match="footer"):
        open_layer(BytesSource(bytes(blob)))


def test_external_toc_required(vectors: Path) -> None:
    with pytest.raises(FormatError, match="external"):
        open_layer(BytesSource((vectors / "tiny-ext.esgz").read_bytes()))


def _tar(*members: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT,
         **kw: object) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, **kw) as tf:  # type: ignore[call-overload]
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mtime = kind, size, link, 1609459200
    return info


def test_dot_dot_names_and_absolute_links_stay_data() -> None:
    tar = _tar(
        (_info("../../etc/evil", size=3), b"bad"),
        (_info("/abs/file", size=2), b"ok"),
        (_info("link", tarfile.SYMTYPE, link="/etc/passwd"), None),
        (_info("up", tarfile.SYMTYPE, link="../../../../etc/shadow"), None),
        (_info("hard", tarfile.LNKTYPE, link="../../etc/evil"), None),
    )
    out = io.BytesIO()
    res = build(io.BytesIO(tar), out)
    reader = open_layer(BytesSource(out.getvalue()), toc_digest=res.toc_digest)
    reader.verify()
    names = {e.name for e in reader.entries()}
    assert {"etc/evil", "abs/file", "link", "up", "hard"} <= names
    assert all(not n.startswith(("/", "..")) and "/../" not in n for n in names)
    link, up = reader.lookup("link"), reader.lookup("up")
    assert link is not None and link.link_name == "/etc/passwd"
    assert up is not None and up.link_name == "../../../../etc/shadow"
    hard = reader.lookup("hard")
    assert hard is not None and reader.read_file(hard) == b"bad"


@pytest.mark.parametrize(("kind", "message"), [
    (tarfile.CONTTYPE, "unsupported input tar entry"),
    (b"Z", "unsupported input tar entry"),
])
def test_unsupported_tar_types(kind: bytes, message: str) -> None:
    tar = _tar((_info("x", kind, size=1), b"x"))
    with pytest.raises(FormatError, match=message):
        build(io.BytesIO(tar), io.BytesIO())


def test_global_pax_header_refused() -> None:
    tar = _tar((_info("a", size=1), b"a"), pax_headers={"comment": "global"})
    with pytest.raises(FormatError, match="global PAX header"):
        build(io.BytesIO(tar), io.BytesIO())


@pytest.mark.parametrize("damage", ["checksum", "truncated", "garbage"])
def test_broken_tar_input(vectors: Path, damage: str) -> None:
    tar = bytearray((vectors / "tiny.tar").read_bytes())
    if damage == "checksum":
        tar[0] ^= 1
    elif damage == "truncated":
        tar = tar[:1100]
    else:
        tar = bytearray(b"\x00" * 512 + b"\x01" * 512)
    with pytest.raises(FormatError):
        build(io.BytesIO(bytes(tar)), io.BytesIO())


def test_corrupt_compressed_input(vectors: Path) -> None:
    data = gzip.compress((vectors / "tiny.tar").read_bytes())
    with pytest.raises(FormatError, match="decompress"):
        build(io.BytesIO(data[:40]), io.BytesIO(), BuildOptions())


def test_oversized_extension_header() -> None:
    from lazypull.format.tarheader import _Block

    blk = _Block()
    blk.b[156] = ord("x")
    blk.string(0, 100, b"PaxHeaders.0/x")
    blk.octal(124, 12, 1 << 30)
    tar = blk.finish(4) + bytes(2048)
    with pytest.raises(FormatError, match="limit"):
        build(io.BytesIO(tar), io.BytesIO())
