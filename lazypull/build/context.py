"""Sources of COPY and ADD: the build context (refused when a path or link leaves it) or a stage's root.

In the context, a source path is cleaned first: one that climbs above the context (``../x``) is an
error, and so is a symlink on the way whose target is absolute or climbs out; ``.dockerignore``
excluded paths do not exist. In a stage's (or image's) root, links resolve inside that root as
for a process chrooted there. Wildcards are matched one path element at a time (Go's
``filepath.Match``: ``*``, ``?``, ``[...]``). The digest of what a step copies keys its cache.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lazypull.build.dockerignore import IgnoreRules
from lazypull.build.errors import BuildError
from lazypull.build.fsops import scoped_path
from lazypull.rootpath import LeavesRoot, TooManyLinks, resolve_in_root

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class SourceItem:
    """One matched source: its real path, the name it is copied under, whether it is a directory."""

    path: Path
    name: str
    is_dir: bool


class SourceRoot:
    """The context directory (``strict``: nothing may leave it) or a stage's mounted root."""

    def __init__(self, root: Path, *, ignore: IgnoreRules | None = None, strict: bool, what: str) -> None:
        self.root = root
        self.real_root = Path(os.path.realpath(root))
        self.ignore = ignore or IgnoreRules([])
        self.strict = strict
        self.what = what

    # -- paths -----------------------------------------------------------------------------------

    def _relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def excluded(self, path: Path) -> bool:
        """Whether ``path`` (below the root) is left out by ``.dockerignore``."""
        if not self.ignore.patterns or path == self.root:
            return False
        return self.ignore.excluded(self._relative(path))

    def _clean(self, source: str) -> str:
        cleaned = posixpath.normpath(source)
        if self.strict and (cleaned == ".." or cleaned.startswith("../")):
            raise BuildError(f"{source}: the path leaves the {self.what}")
        return posixpath.normpath("/" + cleaned).lstrip("/")

    def _follow(self, relative: str, original: str) -> Path:
        """The real path of a context-relative path, links followed and checked to stay inside."""
        if not self.strict:
            return scoped_path(self.root, relative)
        try:
            result = resolve_in_root(self.root, relative, strict=True)
        except TooManyLinks:
            raise BuildError(f"{original}: too many levels of symbolic links") from None
        except LeavesRoot as err:
            if err.link is None:
                raise BuildError(f"{original}: a symlink on the way leaves the {self.what}") from None
            raise BuildError(f"{original}: symlink {self._relative(err.link)} -> {err.target} "
                             f"leaves the {self.what}") from None
        real = os.path.realpath(result)
        if real != str(self.real_root) and not real.startswith(str(self.real_root) + "/"):
            raise BuildError(f"{original}: the path leaves the {self.what}")
        return result

    def resolve(self, source: str) -> list[SourceItem]:
        """The items ``source`` (a path or wildcard pattern) names; an error if there are none."""
        relative = self._clean(source)
        parts = [p for p in relative.split("/") if p]
        candidates = [relative] if not any(_GLOB_CHARS & set(p) for p in parts) else self._glob(parts, source)
        items = []
        for candidate in candidates:
            path = self._follow(candidate, source) if candidate else self.root
            if path != self.root and self.excluded(path):
                continue
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as err:
                raise BuildError(f"{source}: {err.strerror}") from err
            items.append(SourceItem(path, posixpath.basename(candidate) or "", stat.S_ISDIR(st.st_mode)))
        if not items:
            raise BuildError(f"{source}: not found in the {self.what}"
                             + (" (or excluded by .dockerignore)" if self.strict else ""))
        return items

    def _glob(self, parts: list[str], source: str) -> list[str]:
        found = [""]
        for part in parts:
            pattern = part.replace("[^", "[!")
            nxt = []
            for prefix in found:
                if not (_GLOB_CHARS & set(part)):
                    nxt.append(f"{prefix}/{part}".lstrip("/"))
                    continue
                directory = self._follow(prefix, source) if prefix else self.root
                try:
                    names = sorted(os.listdir(directory))
                except OSError:
                    continue
                nxt.extend(f"{prefix}/{name}".lstrip("/") for name in names
                           if fnmatch.fnmatchcase(name, pattern))
            found = nxt
        return found

    # -- content digest --------------------------------------------------------------------------

    def walk(self, item: SourceItem) -> Iterator[tuple[str, Path]]:
        """Every path an item copies (its own first), relative names, ignored paths left out."""
        yield "", item.path
        if not item.is_dir:
            return
        stack = [(item.path, "")]
        while stack:
            directory, prefix = stack.pop()
            with os.scandir(directory) as entries:
                children = sorted(entries, key=lambda e: e.name)
            for entry in children:
                path = Path(entry.path)
                if self.excluded(path):
                    continue
                name = f"{prefix}{entry.name}"
                yield name, path
                if entry.is_dir(follow_symlinks=False):
                    stack.append((path, name + "/"))

    def digest(self, items: list[SourceItem], *, owners: bool) -> str:
        """sha256 of names, types, modes, link targets and contents (owners too if they are kept)."""
        h = hashlib.sha256()
        for item in items:
            h.update(f"item {item.name}\0".encode())
            for name, path in self.walk(item):
                st = os.lstat(path) if name else os.stat(path)
                h.update(f"{name}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}\0".encode())
                if owners:
                    h.update(f"{st.st_uid}:{st.st_gid}\0".encode())
                if stat.S_ISLNK(st.st_mode):
                    h.update(os.fsencode(os.readlink(path)) + b"\0")
                elif stat.S_ISREG(st.st_mode):
                    h.update(_file_digest(path).encode())
        return h.hexdigest()


def _file_digest(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "special"
        h = hashlib.sha256()
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
