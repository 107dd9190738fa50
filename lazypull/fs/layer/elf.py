"""What the dynamic loader will open after a program or library: its ELF interpreter and needed libraries.

A dynamically linked executable is followed, at once and in a fixed order, by reads of its interpreter
(``PT_INTERP``), ``/etc/ld.so.cache`` and every ``DT_NEEDED`` library. On a lazy layer each of those is
a miss waiting a round trip; knowing them when the executable's first bytes arrive lets the layer fetch
them all at the same time instead (see ``fs.layer.hints``).

Only the ELF header, the program headers, the dynamic section and its string table are read, each
bounded in size; anything malformed is an :class:`ElfError` (the caller then simply does not guess).
"""

from __future__ import annotations

import posixpath
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

MAGIC = b"\x7fELF"

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 15, 29

MAX_PHDRS = 256
MAX_DYNAMIC = 64 << 10
MAX_STRTAB = 4 << 20
MAX_NAME = 4096

#: e_machine -> Debian multiarch triplet (the loader's default directories include /lib/<triplet>)
MULTIARCH = {
    3: "i386-linux-gnu", 8: "mips-linux-gnu", 20: "powerpc-linux-gnu", 21: "powerpc64le-linux-gnu",
    22: "s390x-linux-gnu", 40: "arm-linux-gnueabihf", 62: "x86_64-linux-gnu", 183: "aarch64-linux-gnu",
    243: "riscv64-linux-gnu", 258: "loongarch64-linux-gnu",
}

Reader = Callable[[int, int], bytes]
"""``read(offset, length)``: bytes of the file (short only at its end)."""


class ElfError(ValueError):
    """Not an ELF file this module understands, or a malformed one."""


@dataclass
class DynamicInfo:
    """The loader-relevant facts of one ELF file."""

    machine: int
    interpreter: str | None = None          # PT_INTERP, an absolute path
    needed: list[str] = field(default_factory=list)
    runpath: list[str] = field(default_factory=list)   # DT_RUNPATH, else DT_RPATH, entries unexpanded

    def search_dirs(self, origin: str) -> list[str]:
        """Directories the loader looks in for a needed library (without LD_LIBRARY_PATH and the cache):
        the run path (``$ORIGIN`` = ``origin``, the file's directory), then the default directories."""
        dirs: list[str] = []
        for entry in self.runpath:
            for token in ("$ORIGIN", "${ORIGIN}"):
                entry = entry.replace(token, origin)
            if entry.startswith("/") and "$" not in entry:
                dirs.append(posixpath.normpath(entry))
        triplet = MULTIARCH.get(self.machine)
        if triplet:
            dirs += [f"/lib/{triplet}", f"/usr/lib/{triplet}"]
        dirs += ["/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib"]
        return list(dict.fromkeys(dirs))


def parse(read: Reader, early: Callable[[DynamicInfo], None] | None = None) -> DynamicInfo:
    """Interpreter, needed libraries and run path of the ELF file behind ``read``. ``early`` is called
    with what is known once the program headers are read (the interpreter), before the dynamic section
    (often far into the file, not here yet) is read."""
    ident = read(0, 64)
    if len(ident) < 52 or ident[:4] != MAGIC:
        raise ElfError("not an ELF file")
    wide = {1: False, 2: True}.get(ident[4])
    order = {1: "<", 2: ">"}.get(ident[5])
    if wide is None or order is None:
        raise ElfError(f"unknown ELF class {ident[4]} or data encoding {ident[5]}")
    if wide:
        if len(ident) < 64:
            raise ElfError("truncated ELF header")
        machine, = struct.unpack_from(order + "H", ident, 18)
        phoff, = struct.unpack_from(order + "Q", ident, 32)
        phentsize, phnum = struct.unpack_from(order + "HH", ident, 54)
        ph_format, ph_size = order + "IIQQQQQQ", 56
    else:
        machine, = struct.unpack_from(order + "H", ident, 18)
        phoff, = struct.unpack_from(order + "I", ident, 28)
        phentsize, phnum = struct.unpack_from(order + "HH", ident, 42)
        ph_format, ph_size = order + "IIIIIIII", 32
    if phnum == 0:
        raise ElfError("no program headers")
    if phnum > MAX_PHDRS or phentsize < ph_size:
        raise ElfError(f"implausible program header table ({phnum} x {phentsize} bytes)")
    table = read(phoff, phnum * phentsize)
    if len(table) < phnum * phentsize:
        raise ElfError("program header table beyond the end of the file")
    info = DynamicInfo(machine)
    loads: list[tuple[int, int, int]] = []          # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        fields = struct.unpack_from(ph_format, table, i * phentsize)
        if wide:
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = fields[:6]
        else:
            p_type, p_offset, p_vaddr, _paddr, p_filesz = fields[:5]
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == PT_INTERP and 1 < p_filesz <= MAX_NAME:
            name = read(p_offset, p_filesz).split(b"\0", 1)[0]
            info.interpreter = _text(name) if name.startswith(b"/") else None
    if early is not None:
        early(info)
    if dynamic is None:
        return info                                 # static: nothing more is loaded
    dyn_off, dyn_size = dynamic
    if dyn_size > MAX_DYNAMIC:
        raise ElfError(f"dynamic section of {dyn_size} bytes")
    raw = read(dyn_off, dyn_size)
    entry_format, entry_size = (order + "qQ", 16) if wide else (order + "iI", 8)
    needed: list[int] = []
    runpath: list[int] = []
    rpath: list[int] = []
    strtab = strsz = None
    for pos in range(0, len(raw) - entry_size + 1, entry_size):
        tag, value = struct.unpack_from(entry_format, raw, pos)
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed.append(value)
        elif tag == DT_STRTAB:
            strtab = value
        elif tag == DT_STRSZ:
            strsz = value
        elif tag == DT_RUNPATH:
            runpath.append(value)
        elif tag == DT_RPATH:
            rpath.append(value)
    if not needed and not runpath and not rpath:
        return info
    if strtab is None or strsz is None or strsz > MAX_STRTAB:
        raise ElfError("dynamic section without a usable string table")
    base = _file_offset(loads, strtab)
    strings = read(base, strsz)
    info.needed = [name for name in (_string(strings, off) for off in needed) if name]
    for off in runpath or rpath:
        info.runpath += [p for p in _string(strings, off).split(":") if p]
    return info


def _file_offset(loads: list[tuple[int, int, int]], vaddr: int) -> int:
    for seg_vaddr, seg_offset, seg_filesz in loads:
        if seg_vaddr <= vaddr < seg_vaddr + seg_filesz:
            return vaddr - seg_vaddr + seg_offset
    raise ElfError(f"address {vaddr:#x} is in no loaded segment")


def _string(table: bytes, offset: int) -> str:
    if offset >= len(table):
        raise ElfError(f"string offset {offset} beyond the string table")
    end = table.find(b"\0", offset, offset + MAX_NAME)
    if end < 0:
        raise ElfError(f"unterminated string at {offset}")
    return _text(table[offset:end])


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
