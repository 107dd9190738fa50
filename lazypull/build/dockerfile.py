"""The Dockerfile syntax: parser directives, line continuations, comments, flags, exec/shell forms.

Docker's own rules (BuildKit's ``dockerfile/parser``): directives (``# syntax=``, ``# escape=``) only
before anything else; a line ending in the escape character (after trailing blanks) continues on the
next; comment and empty lines inside a continuation are dropped; a continuation keeps its leading
blanks; leading ``--name=value`` words are the instruction's flags; an argument that parses as a JSON
array of strings is the exec form, anything else the shell form. ``RUN``, ``COPY`` and ``ADD``
heredocs (``<<EOF``) take the lines up to their terminator. No library is used: the widely used
``dockerfile-parse`` keeps no exec/shell distinction of its own and the escape directive, flags and
heredocs are what matter here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from lazypull.build.errors import DockerfileError

INSTRUCTIONS = frozenset({
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
})
MAX_DOCKERFILE = 4 << 20       # bytes: a Dockerfile is text a person writes
MAX_INSTRUCTIONS = 5000        # a build's config grows with each: bounded work for a hostile file
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_HEREDOC = re.compile(r"<<(-?)\s*(['\"]?)([a-zA-Z_][a-zA-Z0-9_]*)\2")


@dataclass(frozen=True)
class Heredoc:
    """One ``<<NAME`` document of an instruction: its body lines (terminator excluded)."""

    name: str
    body: str
    strip_tabs: bool = False
    quoted: bool = False        # <<"EOF": no variable expansion in COPY/ADD bodies


@dataclass(frozen=True)
class Instruction:
    """One instruction: keyword upper-cased, flags (``--from=x``), the rest of the line unparsed."""

    keyword: str
    args: str
    line: int
    flags: dict[str, str] = field(default_factory=dict)
    heredocs: tuple[Heredoc, ...] = ()

    @property
    def text(self) -> str:
        """The instruction as written (one line): what progress and history show."""
        flags = " ".join(f"--{k}={v}" for k, v in self.flags.items())
        return " ".join(part for part in (self.keyword, flags, self.args) if part)

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec form argument, None for the shell form."""
        return parse_json_form(self.args)


@dataclass(frozen=True)
class Dockerfile:
    """A parsed Dockerfile: where it came from (for error messages), directives and instructions."""

    where: str
    escape: str
    directives: dict[str, str]
    instructions: list[Instruction]

    def error(self, instruction: Instruction, message: str) -> DockerfileError:
        """An error naming this file, the instruction's line and the instruction."""
        return DockerfileError(self.where, instruction.line, f"{instruction.keyword}: {message}")


def parse_json_form(args: str) -> list[str] | None:
    """``["a", "b"]`` -> ``["a", "b"]``; anything that is not a JSON array of strings -> None."""
    text = args.strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def _strip_continuation(line: str, escape: str) -> tuple[str, bool]:
    """The line without its trailing escape character, and whether it continues."""
    stripped = line.rstrip(" \t")
    if stripped.endswith(escape):
        return stripped[:-1], True
    return line, False


def _split_flags(rest: str) -> tuple[dict[str, str], str]:
    """Leading ``--name=value`` (or ``--name``) words, and the text after them."""
    flags: dict[str, str] = {}
    while True:
        rest = rest.lstrip()
        match = re.match(r"--([a-zA-Z][a-zA-Z0-9-]*)(?:=(\"[^\"]*\"|'[^']*'|\S*))?(?=\s|$)", rest)
        if not match:
            return flags, rest
        value = match.group(2) or ""
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        flags[match.group(1)] = value if match.group(2) is not None else "true"
        rest = rest[match.end():]


def parse_dockerfile(text: str, where: str = "Dockerfile") -> Dockerfile:
    """Parse the text of a Dockerfile; :class:`DockerfileError` names ``where`` and the line."""
    if "\x00" in text:
        raise DockerfileError(where, text[:text.index("\x00")].count("\n") + 1, "NUL byte in the Dockerfile")
    lines = text.splitlines()
    escape = "\\"
    directives: dict[str, str] = {}
    index = 0
    while index < len(lines):                    # parser directives: only at the very top
        match = _DIRECTIVE.match(lines[index].strip())
        if not match:
            break
        name, value = match.group(1).lower(), match.group(2)
        if name in directives:
            raise DockerfileError(where, index + 1, f"directive {name!r} given twice")
        if name == "escape":
            if value not in ("\\", "`"):
                raise DockerfileError(where, index + 1, f"invalid escape character {value!r}: use \\ or `")
            escape = value
        directives[name] = value
        index += 1
    instructions: list[Instruction] = []
    while index < len(lines):
        raw = lines[index]
        start = index + 1
        index += 1
        line = raw.lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        line, more = _strip_continuation(line, escape)
        while more and index < len(lines):
            nxt = lines[index]
            index += 1
            if nxt.lstrip(" \t").startswith("#") or not nxt.strip():
                continue                         # comments and empty lines inside a continuation
            part, more = _strip_continuation(nxt, escape)
            line += part
        keyword, _, rest = line.strip().partition(" ")
        if "\t" in keyword:
            keyword, _, tail = keyword.partition("\t")
            rest = tail + " " + rest
        upper = keyword.upper()
        if upper not in INSTRUCTIONS:
            raise DockerfileError(where, start, f"unknown instruction: {keyword}")
        flags, rest = _split_flags(rest)
        heredocs: list[Heredoc] = []
        if upper in ("RUN", "COPY", "ADD") and parse_json_form(rest) is None:
            for match in _HEREDOC.finditer(rest):
                body: list[str] = []
                while True:
                    if index >= len(lines):
                        raise DockerfileError(where, start,
                                              f"RUN: heredoc {match.group(3)} is not terminated")
                    body_line = lines[index]
                    index += 1
                    check = body_line.lstrip("\t") if match.group(1) else body_line
                    if check == match.group(3):
                        break
                    body.append(body_line)
                heredocs.append(Heredoc(match.group(3), "\n".join(body) + "\n", bool(match.group(1)),
                                        quoted=bool(match.group(2))))
        instructions.append(Instruction(upper, rest.strip(), start, flags, tuple(heredocs)))
        if len(instructions) > MAX_INSTRUCTIONS:
            raise DockerfileError(where, start, f"more than {MAX_INSTRUCTIONS} instructions")
    return Dockerfile(where, escape, directives, instructions)
