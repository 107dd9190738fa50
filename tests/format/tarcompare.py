"""Compare what a LayerReader presents with the tar it was made from (Python's tarfile as the judge)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass, field

import zstandard

from lazypull.format import LayerReader
from lazypull.format.landmarks import LANDMARKS
from lazypull.format.names import clean_entry_name
from lazypull.format.toc import TOC_TAR_NAME

TYPES = {
    tarfile.REGTYPE: "reg", tarfile.AREGTYPE: "reg", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo",
}


@dataclass
class Expected:
    """One tar member as the layer must present it."""

    type: str
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime: int
    link: str = ""
    content: bytes = b""
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)


def expected_tree(tar_bytes: bytes, *, drop_special: bool = True) -> dict[str, Expected]:
    """Cleaned name -> expected entry; later duplicates win; TOC and landmark entries dropped."""
    out: dict[str, Expected] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tf:
        for m in tf.getmembers():
            name = clean_entry_name(m.name)
            if drop_special and (name == TOC_TAR_NAME or name in LANDMARKS):
                continue
            content = b""
            if m.isreg():
                f = tf.extractfile(m)
                assert f is not None
                content = f.read()
            xattrs = {
                k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
                for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")
            }
            link = clean_entry_name(m.linkname) if m.islnk() else m.linkname
            out.pop(name, None)
            out[name] = Expected(
                type=TYPES[m.type], mode=m.mode & 0o7777, uid=m.uid, gid=m.gid, uname=m.uname,
                gname=m.gname, mtime=round(m.mtime), link=link, content=content,
                dev=(m.devmajor, m.devminor) if m.ischr() or m.isblk() else (0, 0), xattrs=xattrs,
            )
    return out


def assert_same_tree(reader: LayerReader, tar_bytes: bytes, *, check_names: bool = True) -> None:
    """Every tar member is in the layer with the same metadata and content, and nothing else is."""
    want = expected_tree(tar_bytes)
    seen = set()
    for entry in reader.entries():
        if entry.name in LANDMARKS or entry.name == "":
            continue
        seen.add(entry.name)
        exp = want.get(entry.name)
        if exp is None:
            # implied directory: only allowed when some entry lives below it
            assert entry.type == "dir", entry.name
            assert any(n.startswith(entry.name + "/") for n in want), entry.name
            continue
        where = entry.name
        assert entry.type == exp.type, where
        assert entry.mode & 0o7777 == exp.mode, where
        assert (entry.uid, entry.gid) == (exp.uid, exp.gid), where
        if check_names:
            assert (entry.user_name, entry.group_name) == (exp.uname, exp.gname), where
        if exp.mtime != 0:
            assert entry.modtime is not None and int(entry.modtime.timestamp()) == exp.mtime, where
        assert entry.xattrs == exp.xattrs, where
        if exp.type == "reg":
            assert entry.size == len(exp.content), where
            assert reader.read_file(entry) == exp.content, where
        elif exp.type == "hardlink":
            assert entry.link_name == exp.link, where
            target = reader.lookup(entry.name)
            assert target is not None and target.type == "reg", where
            assert reader.read_file(target) == want[exp.link].content, where
        elif exp.type == "symlink":
            assert entry.link_name == exp.link, where
        elif exp.type in ("char", "block"):
            assert (entry.dev_major, entry.dev_minor) == exp.dev, where
    assert set(want) <= seen | {""}, set(want) - seen


def decompressed(blob: bytes) -> bytes:
    """The whole decompressed stream of a gzip or zstd blob (what the DiffID is computed over)."""
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True)
    return reader.read()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
