"""Small synthetic layer tars with the edge cases that interoperability depends on (format.md section 5).

Each builder writes a tar with Python's tarfile and returns what a correct reader must show for it:
path -> sha256 of the content of every regular file (after duplicate names: last one wins).
"""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

MTIME = 1609459200  # 2021-01-01T00:00:00Z
LONG_DIR = "usr/share/" + "d" * 70
LONG_NAME = LONG_DIR + "/" + "f" * 90 + ".txt"  # 171 characters: needs a PAX path record
LONG_TARGET = "../" * 20 + "x" * 80  # symlink target over 100 characters


@dataclass
class TarCase:
    """A tar on disk and the facts about it tests compare readers against."""

    path: Path
    files: dict[str, str] = field(default_factory=dict)  # regular file path -> sha256:...
    symlinks: dict[str, str] = field(default_factory=dict)  # path -> target
    hardlinks: dict[str, str] = field(default_factory=dict)  # path -> target path
    implied_dirs: set[str] = field(default_factory=set)  # directories without a tar entry


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pseudo_random(n: int, seed: int) -> bytes:
    """Half-compressible bytes (random words from a small alphabet): fast to compress, many chunks."""
    rnd = random.Random(seed)
    words = [
        bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz0123456789", k=rnd.randint(2, 9))) for _ in range(512)
    ]
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(words) + b" "
    return bytes(out[:n])


def clean(name: str) -> str:
    """A tar name as readers normalise it: no leading `./` or `/`, no trailing `/`."""
    while name.startswith(("./", "/")):
        name = name[1:] if name.startswith("/") else name[2:]
    return name.rstrip("/")


class _Writer:
    def __init__(self, tar: tarfile.TarFile, case: TarCase) -> None:
        self.tar = tar
        self.case = case

    def _info(self, name: str, kind: bytes, mode: int, **kw: object) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.mtime = int(kw.pop("mtime", MTIME))  # type: ignore[call-overload]
        info.uname = str(kw.pop("uname", "root"))
        info.gname = str(kw.pop("gname", "root"))
        for k, v in kw.items():
            setattr(info, k, v)
        return info

    def dir(self, name: str, mode: int = 0o755) -> None:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode))

    def file(self, name: str, data: bytes, mode: int = 0o644, **kw: object) -> None:
        info = self._info(name, tarfile.REGTYPE, mode, **kw)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))
        self.case.files[clean(name)] = _sha(data)

    def symlink(self, name: str, target: str) -> None:
        self.tar.addfile(self._info(name, tarfile.SYMTYPE, 0o777, linkname=target))
        self.case.symlinks[clean(name)] = target

    def hardlink(self, name: str, target: str) -> None:
        self.tar.addfile(self._info(name, tarfile.LNKTYPE, 0o644, linkname=target))
        self.case.hardlinks[clean(name)] = clean(target)
        self.case.files[clean(name)] = self.case.files[clean(target)]

    def device(self, name: str, kind: bytes, major: int = 0, minor: int = 0, mode: int = 0o666) -> None:
        self.tar.addfile(self._info(name, kind, mode, devmajor=major, devminor=minor))


def edge_case_tar(path: Path, *, big_size: int = 70_000) -> TarCase:
    """Symlinks (short, long, dangling), a hardlink, whiteouts, an opaque dir, xattrs (text and binary),
    a long PAX name, char/block devices, a fifo, uid/gid names, an empty file, mtime 0, a non-ASCII
    name, a duplicate name, an implied directory (`bin/`) and a `big_size`-byte file spanning chunks."""
    case = TarCase(path)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        w = _Writer(tar, case)
        w.dir("etc/")
        w.file("etc/hello.txt", b"hello\n")
        w.symlink("etc/link", "hello.txt")
        w.symlink("etc/longlink", LONG_TARGET)
        w.hardlink("etc/hard", "etc/hello.txt")
        w.file("etc/empty", b"")
        w.file("etc/.wh.removed", b"")
        w.file("etc/dup", b"first\n")
        w.file("etc/epoch", b"no modtime\n", mtime=0)
        xattr = w._info("etc/xattr", tarfile.REGTYPE, 0o644)
        xattr.size = 3
        xattr.pax_headers = {
            "SCHILY.xattr.user.foo": "bar",
            "SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
        }
        tar.addfile(xattr, io.BytesIO(b"xyz"))
        case.files["etc/xattr"] = _sha(b"xyz")
        w.dir("var/", mode=0o700)
        w.file("var/.wh..wh..opq", b"")
        w.dir("usr/")
        w.dir("usr/share/")
        w.dir(LONG_DIR + "/")
        w.file(LONG_NAME, b"long\n")
        w.file("usr/share/ünïcödé.txt", "ünïcödé\n".encode())
        w.dir("dev/")
        w.device("dev/null", tarfile.CHRTYPE, 1, 3)
        w.device("dev/sda", tarfile.BLKTYPE, 8, 0, mode=0o660)
        w.device("dev/fifo", tarfile.FIFOTYPE, mode=0o600)
        w.dir("home/")
        w.file("home/u1", b"1\n", uid=1000, gid=1000, uname="user", gname="grp")
        w.file("home/u2", b"2\n", uid=1000, gid=1000, uname="", gname="")
        w.file("home/u3", b"3\n", uid=1001, gid=1002, uname="other", gname="staff", mode=0o4755)
        w.file("bin/big", pseudo_random(big_size, 1), mode=0o755)  # bin/ has no entry: implied
        w.file("etc/dup", b"second\n")
    case.implied_dirs.add("bin")
    return case


def dot_prefixed_tar(path: Path) -> TarCase:
    """The shape `tar -C rootfs .` produces (Debian rootfs, docker layers): a `./` root entry and
    `./`-prefixed names."""
    case = TarCase(path)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        w = _Writer(tar, case)
        w.dir("./")
        w.dir("./usr/")
        w.dir("./usr/bin/")
        w.file("./usr/bin/tool", pseudo_random(9000, 2), mode=0o755)
        w.symlink("./bin", "usr/bin")
        w.file("./usr/lib-" + "z" * 120, b"gnu longname\n")
    return case


def many_files_tar(path: Path, count: int = 60, size: int = 700) -> TarCase:
    """Many small files in a few directories (prioritisation, member boundaries)."""
    case = TarCase(path)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        w = _Writer(tar, case)
        for d in range(3):
            w.dir(f"d{d}/")
            for i in range(count // 3):
                w.file(f"d{d}/f{i:03d}", pseudo_random(size + i, 100 * d + i))
    return case
