"""``.dockerignore``: Docker's pattern rules (moby's ``patternmatcher``).

One pattern a line; ``#`` lines are comments; blanks around a pattern are dropped; a leading ``!``
makes an exception; patterns are cleaned as paths (``./a`` is ``a``, a leading ``/`` is dropped);
``*`` and ``?`` match within one path element, ``**`` any number of elements, ``[...]`` a class;
the last pattern matching a path decides; a path is also excluded when a parent directory is.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from lazypull.build.errors import BuildError
from lazypull.smallfile import read_small

MAX_DOCKERIGNORE = 1 << 20


@dataclass(frozen=True)
class _Pattern:
    text: str
    regex: re.Pattern[str]
    exclusion: bool             # "!pattern": re-include


def _translate(pattern: str) -> re.Pattern[str]:
    out = ["^"]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):          # "**/": zero or more directories
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            negated = pattern.startswith(("[^", "[!"), i)
            end = pattern.find("]", i + 2 if negated else i + 1)
            if end < 0:
                raise BuildError(f".dockerignore: bad pattern {pattern!r} (unclosed [)")
            body = pattern[i + 1:end]
            if body.startswith(("^", "!")):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return re.compile("".join(out))


class IgnoreRules:
    """The patterns of one ``.dockerignore``; :meth:`excluded` answers for a context-relative path."""

    def __init__(self, lines: list[str]) -> None:
        self.patterns: list[_Pattern] = []
        for line in lines:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            exclusion = text.startswith("!")
            if exclusion:
                text = text[1:].strip()
            text = posixpath.normpath(text).lstrip("/")
            if text in ("", "."):
                continue
            self.patterns.append(_Pattern(text, _translate(text), exclusion))

    @property
    def has_exceptions(self) -> bool:
        """Whether some ``!`` pattern may re-include a path below an excluded directory."""
        return any(p.exclusion for p in self.patterns)

    def excluded(self, path: str) -> bool:
        """Whether the context-relative ``path`` (``a/b``) is left out of the context."""
        parts = path.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for pattern in self.patterns:
            if any(pattern.regex.match(prefix) for prefix in prefixes):
                result = not pattern.exclusion
        return result


def load_ignore(context: Path) -> IgnoreRules:
    """The rules of ``CONTEXT/.dockerignore`` (none if the file is absent)."""
    data = read_small(context / ".dockerignore", MAX_DOCKERIGNORE, ".dockerignore", BuildError)
    if data is None:
        return IgnoreRules([])
    return IgnoreRules(data.decode("utf-8", "replace").splitlines())
