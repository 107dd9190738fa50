"""Hand-made ELF files for the tests of ``lazypull.fs.layer.elf`` and the loader hints: only what the dynamic
loader (and our parser) looks at, i.e. the header, program headers, interpreter, dynamic section, strings."""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

VBASE = 0x400000


def make_elf(*, interp: str | None = None, needed: Sequence[str] = (), runpath: str | None = None,
             rpath: str | None = None, machine: int = 62, wide: bool = True, big_endian: bool = False,
             pad: int = 0) -> bytes:
    """An ELF shared object naming ``interp``/``needed``/``runpath``, followed by ``pad`` random bytes."""
    order = ">" if big_endian else "<"
    strtab = b"\0"
    offsets: dict[str, int] = {}
    for text in [*needed, runpath, rpath]:
        if text is not None and text not in offsets:
            offsets[text] = len(strtab)
            strtab += text.encode() + b"\0"
    ehsize, phentsize = (64, 56) if wide else (52, 32)
    phnum = 2 + (1 if interp else 0)
    pos = ehsize + phnum * phentsize
    interp_bytes = interp.encode() + b"\0" if interp else b""
    interp_off = pos
    pos += len(interp_bytes)
    str_off = pos
    pos += len(strtab)
    dyn_off = (pos + 7) // 8 * 8
    tags = [(1, offsets[n]) for n in needed]
    if runpath is not None:
        tags.append((29, offsets[runpath]))
    if rpath is not None:
        tags.append((15, offsets[rpath]))
    tags += [(5, VBASE + str_off), (10, len(strtab)), (0, 0)]
    dyn = b"".join(struct.pack(order + ("qQ" if wide else "iI"), t, v) for t, v in tags)
    total = dyn_off + len(dyn) + pad
    ident = b"\x7fELF" + bytes([2 if wide else 1, 2 if big_endian else 1, 1]) + bytes(9)
    if wide:
        header = struct.pack(order + "HHIQQQIHHHHHH", 3, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize,
                             phnum, 0, 0, 0)
    else:
        header = struct.pack(order + "HHIIIIIHHHHHH", 3, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize,
                             phnum, 0, 0, 0)

    def phdr(kind: int, offset: int, size: int) -> bytes:
        if wide:
            return struct.pack(order + "IIQQQQQQ", kind, 4, offset, VBASE + offset, VBASE + offset, size,
                               size, 8)
        return struct.pack(order + "IIIIIIII", kind, offset, VBASE + offset, VBASE + offset, size, size, 4, 8)

    phdrs = phdr(1, 0, total)
    if interp:
        phdrs += phdr(3, interp_off, len(interp_bytes))
    phdrs += phdr(2, dyn_off, len(dyn))
    out = ident + header + phdrs + interp_bytes + strtab
    out += bytes(dyn_off - len(out)) + dyn
    return out + random.Random(total).randbytes(pad)
