"""Property: any tree, any options -> our writer -> our reader gives back the same files and metadata."""

from __future__ import annotations

import io
import random
import tarfile
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazypull.format import BuildOptions, BytesSource, build, open_layer
from lazypull.format.landmarks import PREFETCH_LANDMARK
from lazypull.format.names import clean_entry_name
from tests.format.tarcompare import assert_same_tree, decompressed, sha256

COMPONENT = st.text(alphabet="abcXYZ019_-.é", min_size=1, max_size=10).filter(lambda s: s not in (".", ".."))
LONG = st.text(alphabet="lmnop", min_size=90, max_size=140)
IDS = st.sampled_from([0, 1, 1000, 65534, 3_000_000])
MTIMES = st.sampled_from([0, 1, 1_609_459_200, 2**33 + 5])
KINDS = st.sampled_from(["file", "file", "file", "symlink", "hardlink", "char", "block", "fifo", "dir"])


@dataclass
class Node:
    name: str
    kind: str
    size: int = 0
    link: str = ""
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    mode: int = 0o644
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, str] | None = None


@st.composite
def trees(draw: st.DrawFn) -> tuple[list[Node], int]:
    dirs = [""]
    for _ in range(draw(st.integers(0, 4))):
        parent = draw(st.sampled_from(dirs))
        dirs.append(f"{parent}/d{draw(COMPONENT)}".lstrip("/"))
    explicit = {d for d in dirs[1:] if draw(st.booleans())}
    nodes = [Node(name=d + "/", kind="dir", mode=0o755) for d in dirs[1:] if d in explicit]
    files: list[str] = []
    used: set[str] = set(dirs)
    for i in range(draw(st.integers(1, 10))):
        parent = draw(st.sampled_from(dirs))
        leaf = f"f{i}{draw(LONG) if draw(st.integers(0, 5)) == 0 else draw(COMPONENT)}"
        name = f"{parent}/{leaf}".lstrip("/")
        if name in used:
            continue
        used.add(name)
        kind = draw(KINDS)
        if kind == "hardlink" and not files:
            kind = "file"
        uid, gid = draw(IDS), draw(IDS)
        node = Node(name=name, kind=kind, uid=uid, gid=gid, mtime=draw(MTIMES),
                    mode=draw(st.sampled_from([0o644, 0o755, 0o4755, 0o1777, 0o600])))
        if kind == "dir":
            node.name += "/"
        if kind == "file":
            node.size = draw(st.sampled_from([0, 1, 100, 511, 512, 4096, 9000, 70000]))
            files.append(name)
            if draw(st.booleans()):
                keys = st.sampled_from(["user.a", "user.b", "security.capability"])
                values = st.text(alphabet="xyz\x01é=", max_size=8)
                node.xattrs = draw(st.dictionaries(keys, values, max_size=2))
        elif kind == "symlink":
            node.link = draw(st.sampled_from(["target", "/abs/target", "../up", "x" * 120]))
        elif kind == "hardlink":
            node.link = draw(st.sampled_from(files))
        elif kind in ("char", "block"):
            node.dev = (draw(st.integers(0, 300)), draw(st.integers(0, 300)))
        nodes.append(node)
    return nodes, draw(st.integers(0, 2**32))


def _tar(nodes: list[Node], seed: int, fmt: int) -> bytes:
    rnd = random.Random(seed)
    out = io.BytesIO()
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
             "fifo": tarfile.FIFOTYPE}
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
        for n in nodes:
            info = tarfile.TarInfo(n.name)
            info.type = types[n.kind]
            info.uid, info.gid, info.uname, info.gname = n.uid, n.gid, f"u{n.uid}", f"g{n.gid}"
            info.mtime, info.mode, info.linkname = n.mtime, n.mode, n.link
            info.devmajor, info.devminor = n.dev
            if n.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in n.xattrs.items()}
            data = None
            if n.kind == "file":
                half = n.size // 2
                content = rnd.randbytes(half) + bytes([rnd.randrange(4)]) * (n.size - half)
                info.size = n.size
                data = io.BytesIO(content)
            tf.addfile(info, data)
    return out.getvalue()


@st.composite
def options(draw: st.DrawFn, names: list[str]) -> BuildOptions:
    compression = draw(st.sampled_from(["gzip", "gzip", "zstd"]))
    external = compression == "gzip" and draw(st.booleans())
    lossless = external and draw(st.booleans())
    prio = None
    if not lossless and draw(st.booleans()):
        prio = draw(st.lists(st.sampled_from([*names, "nonexistent", "/missing/x"]), max_size=4))
    return BuildOptions(
        compression=compression,  # type: ignore[arg-type]
        level=draw(st.sampled_from([1, 6, 9] if compression == "gzip" else [1, 3])),
        chunk_size=draw(st.sampled_from([0, 512, 1000, 4096])),
        min_chunk_size=draw(st.sampled_from([0, 0, 700, 5000])),
        prioritized_files=prio,
        external_toc=external,
        keep_diff_id=lossless,
        parallelism=draw(st.integers(1, 3)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), tree=trees(), gnu=st.booleans())
def test_roundtrip(data: st.DataObject, tree: tuple[list[Node], int], gnu: bool) -> None:
    nodes, seed = tree
    tar = _tar(nodes, seed, tarfile.GNU_FORMAT if gnu else tarfile.PAX_FORMAT)
    names = [n.name for n in nodes]
    opts = data.draw(options(names))
    out = io.BytesIO()
    res = build(io.BytesIO(tar), out, opts)
    blob = out.getvalue()
    reader = open_layer(BytesSource(blob), toc_digest=res.toc_digest, external_toc=res.toc_blob)
    reader.verify()
    assert_same_tree(reader, tar)
    stream = decompressed(blob)
    assert sha256(stream) == res.diff_id and len(stream) == res.uncompressed_size
    if opts.keep_diff_id:
        assert stream == tar
    present = {clean_entry_name(n) for n in names}
    if opts.prioritized_files:
        assert res.missed == [p for p in opts.prioritized_files if clean_entry_name(p) not in present]
        order = [e.name for e in reader.toc.entries]
        landmark = order.index(PREFETCH_LANDMARK)
        cleaned = [clean_entry_name(e.name) for e in reader.toc.entries]
        for p in opts.prioritized_files:
            if clean_entry_name(p) in present:
                assert cleaned.index(clean_entry_name(p)) < landmark
    else:
        assert res.missed == []
