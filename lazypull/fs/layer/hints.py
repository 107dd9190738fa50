"""Fetching ahead what the dynamic loader is about to open, across the layers of one image.

When a program is started from a lazy layer, its first read misses; right after it the loader opens
its interpreter, ``/etc/ld.so.cache`` and each needed library in turn, every one of them another miss
waiting a round trip (five or more for a typical program). Once the program's first bytes are here, its
ELF headers say which files those are (``fs.layer.elf``), so they are looked up in the union of the
image's layers (following symlinks, as the overlay mount will show them) and fetched whole at the
same time, each followed in turn for its own libraries. A guess that turns out wrong costs bytes,
never correctness: the chunks fetched are verified and cached like any others.

Layers are grouped by the image reference their blobs come from (the ``ref`` of their registry source); a tree
from anywhere else forms a group of its own. A group's trees are searched in the order they joined,
the tree that asked first.
"""

from __future__ import annotations

import logging
import posixpath
import threading
from collections import deque
from typing import TYPE_CHECKING

from lazypull.fs.fuse.tree import ROOT_INODE
from lazypull.fs.layer import elf

if TYPE_CHECKING:
    from lazypull.fs.layer.inodes import Node
    from lazypull.fs.layer.tree import LayerTree

    Hit = tuple[LayerTree, Node]     # a file found in the union of an image's layers: (layer, its node)

log = logging.getLogger(__name__)

MAX_SYMLINKS = 40
MAX_STEPS = 1024    # path components resolved per lookup (a hostile TOC's deep or long links stop here)
LD_SO_CACHE = "/etc/ld.so.cache"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Read by every container start, before its program runs: ``lazypull create`` resolves the user through
# them (``runtime.users``) and runc reads them again. Each layer that has them fetches them at mount.
USER_DB = ("etc/passwd", "etc/group")
HEAD = 256          # bytes of a file enough to tell an ELF file or a script and read its ``#!`` line

class Groups:
    """The layers of each image, by the image reference their blobs come from (one per mount server,
    ``fs.facade.LayerFs``); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[str, list[LayerTree]] = {}

    def join(self, key: str | None, tree: LayerTree) -> None:
        """Make ``tree`` part of group ``key`` (None: a group of its own)."""
        if key is None:
            return
        with self._lock:
            self._groups.setdefault(key, []).append(tree)

    def leave(self, key: str | None, tree: LayerTree) -> None:
        if key is None:
            return
        with self._lock:
            members = self._groups.get(key, [])
            if tree in members:
                members.remove(tree)
            if not members:
                self._groups.pop(key, None)

    def members(self, key: str | None, tree: LayerTree) -> list[LayerTree]:
        """The trees to search for a path needed by ``tree``'s files: ``tree`` first."""
        with self._lock:
            others = [t for t in self._groups.get(key, []) if t is not tree] if key is not None else []
        return [tree, *others]

    def trees_of(self, key: str) -> list[LayerTree]:
        """The mounted trees of group ``key`` (an image reference as its layers' sources name it), in
        the order they joined: what a caller without its own list passes to :func:`expect_program`."""
        with self._lock:
            return list(self._groups.get(key, []))


def _child(tree: LayerTree, ino: int, name: str) -> Node | None:
    node = tree.inodes.get(ino)
    if node is None or node.children is None:
        return None
    child = node.children.get(name.encode("utf-8", "surrogateescape"))
    return None if child is None else tree.inodes.get(child)


def _walk(tree: LayerTree, parts: list[str]) -> Node | None:
    """The node at ``parts`` in one tree, without following symlinks (None when missing)."""
    node = tree.inodes.get(ROOT_INODE)
    for part in parts:
        if node is None:
            return None
        node = _child(tree, node.attr.ino, part)
    return node


def node_at(tree: LayerTree, path: str) -> Node | None:
    """The node at ``path`` (relative to the layer root, as TOC names are) in one tree, symlinks not
    followed; None when missing or too deep to be a real name."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if len(parts) > MAX_STEPS // 8 or ".." in parts:
        return None
    return _walk(tree, parts)


def resolve(trees: list[LayerTree], path: str) -> Hit | None:
    """(tree, node) of the regular file ``path`` names in the union of ``trees``, symlinks followed;
    None when it is missing, not a regular file with content, or the symlinks loop."""
    todo = deque(p for p in path.split("/"))
    done: list[str] = []
    hops = steps = 0
    while todo:
        steps += 1
        if steps > MAX_STEPS:
            return None
        name = todo.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        found = None
        for tree in trees:
            node = _walk(tree, [*done, name]) if len(done) < MAX_STEPS // 8 else None
            if node is not None:
                found = (tree, node)
                break
        if found is None:
            return None
        tree, node = found
        if node.link:
            hops += 1
            if hops > MAX_SYMLINKS:
                return None
            target = node.link.decode("utf-8", "surrogateescape")
            if target.startswith("/"):
                done = []
            todo.extendleft(reversed(target.split("/")))
            continue
        if todo:
            if node.children is None:
                return None
            done.append(name)
        elif node.entry is not None:
            return found
        else:
            return None
    return None


def loader_files(trees: list[LayerTree], info: elf.DynamicInfo) -> list[Hit]:
    """(tree, node) of a starting program's interpreter and, for glibc's, the cache it reads first."""
    if not info.interpreter:
        return []
    wanted = [info.interpreter]
    if posixpath.basename(info.interpreter).startswith("ld-linux"):
        wanted.append(LD_SO_CACHE)              # glibc's loader reads it before looking in directories
    return [hit for name in wanted if (hit := resolve(trees, name)) is not None]


def dependencies(trees: list[LayerTree], path: str, info: elf.DynamicInfo, *, program: bool = True
                 ) -> list[Hit]:
    """(tree, node) of the files the loader opens after ``path``: the libraries, and for a program being
    started its interpreter and cache (a library's own ``PT_INTERP``, libc's, is not loaded again)."""
    found = loader_files(trees, info) if program else []
    dirs = info.search_dirs("/" + posixpath.dirname(path))
    for lib in info.needed:
        if "/" in lib:
            hit = resolve(trees, lib) if lib.startswith("/") else None
        else:
            hit = next((h for d in dirs if (h := resolve(trees, f"{d}/{lib}")) is not None), None)
        if hit is not None:
            found.append(hit)
    return found


def script_programs(head: bytes) -> list[str]:
    """What the kernel starts for a script beginning with ``head``: its ``#!`` interpreter, and for
    ``#!/usr/bin/env NAME`` also NAME (a bare name, looked up in PATH)."""
    if head[:2] != b"#!":
        return []
    words = head[2:].split(b"\n", 1)[0].split()
    if not words or not words[0].startswith(b"/"):
        return []
    found = [words[0].decode("utf-8", "surrogateescape")]
    if posixpath.basename(found[0]) == "env":
        names = [w for w in words[1:] if not w.startswith(b"-") and b"=" not in w]
        if names:
            found.append(names[0].decode("utf-8", "surrogateescape"))
    return found


def find_program(trees: list[LayerTree], name: str, path_env: str | None = None, cwd: str = "/"
                 ) -> Hit | None:
    """(tree, node) of the program ``name`` as ``execvp`` finds it: a path, else through PATH."""
    if "/" in name:
        return resolve(trees, posixpath.join(cwd, name))
    for directory in (path_env or DEFAULT_PATH).split(":"):
        if directory.startswith("/"):
            hit = resolve(trees, f"{directory}/{name}")
            if hit is not None and hit[1].attr.mode & 0o111:
                return hit
    return None


def expect_program(trees: list[LayerTree], argv0: str, path_env: str | None = None, cwd: str = "/") -> bool:
    """Start fetching a program about to be run over these layers (upper first), and then what it
    loads, before the container asks: for a runtime that knows the command while the container is
    still being set up. False when the program is not found in them (nothing is fetched)."""
    hit = find_program(trees, argv0, path_env, cwd)
    if hit is None:
        return False
    tree, node = hit
    tree.fetch_ahead(node.attr.ino, program=True)
    return True


def follow(tree: LayerTree, ino: int, *, program: bool = True) -> None:
    """Fetch ahead what is opened after the file ``ino`` of ``tree`` (run in a worker): for an ELF file
    what the loader opens, for a script its interpreter. ``program`` is being started, else it is a
    library being loaded."""
    node = tree.inodes.get(ino)
    if node is None:
        return
    try:
        head = tree.read_quiet(ino, 0, HEAD)
        if head[:2] == b"#!":
            if program:
                trees = tree.groups.members(tree.group, tree)
                for name in script_programs(head):
                    hit = find_program(trees, name)
                    if hit is not None:
                        hit[0].fetch_ahead(hit[1].attr.ino, program=True)
            return
        if head[:4] != elf.MAGIC:
            return
        trees = tree.groups.members(tree.group, tree)

        def interpreter_first(known: elf.DynamicInfo) -> None:   # the loader's first open: start it now
            if program:
                for dep_tree, dep in loader_files(trees, known):
                    dep_tree.fetch_ahead(dep.attr.ino)

        info = elf.parse(lambda offset, length: tree.read_quiet(ino, offset, length), interpreter_first)
    except elf.ElfError as err:
        log.debug("layer %s: %s: %s; no libraries fetched ahead", tree.digest, node.path, err)
        return
    except Exception as err:       # a read failed (logged by the tree): the loader will find out itself
        log.debug("layer %s: cannot read the ELF headers of %s: %s", tree.digest, node.path, err)
        return
    for dep_tree, dep in dependencies(trees, node.path, info, program=False):
        dep_tree.fetch_ahead(dep.attr.ino)
