"""Docker's word processing of instruction arguments: variable expansion, quotes, word splitting.

As BuildKit's ``shell.Lex``: ``$NAME``, ``${NAME}``, ``${NAME:-word}``, ``${NAME-word}``,
``${NAME:+word}``, ``${NAME+word}``, ``${NAME:?msg}``; single quotes are literal, double quotes
expand; the escape character (``\\`` or the ``# escape=`` one) quotes the next character. Used for
the instructions Docker expands (ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME,
WORKDIR, ARG); RUN, CMD and ENTRYPOINT are left to the shell.
"""

from __future__ import annotations

from collections.abc import Mapping

from lazypull.build.errors import BuildError

_NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_NAME_CHARS = _NAME_START + "0123456789"


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str) -> None:
        self.text = text
        self.pos = 0
        self.env = env
        self.escape = escape

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        ch = self.peek()
        self.pos += 1
        return ch

    def words(self) -> list[str]:
        """Whitespace-separated words; a word made only of an empty unquoted expansion is dropped."""
        result: list[str] = []
        word: list[str] = []
        quoted = False
        while self.pos < len(self.text):
            ch = self.peek()
            if ch in " \t\r\n":
                self.pos += 1
                if word or quoted:
                    result.append("".join(word))
                word, quoted = [], False
                continue
            if ch == self.escape:
                self.pos += 1
                if self.pos < len(self.text):
                    word.append(self.take())
                continue
            if ch == "'":
                self.pos += 1
                quoted = True
                end = self.text.find("'", self.pos)
                if end < 0:
                    raise BuildError(f"unmatched ' in {self.text!r}")
                word.append(self.text[self.pos:end])
                self.pos = end + 1
                continue
            if ch == '"':
                self.pos += 1
                quoted = True
                word.append(self._double_quoted())
                continue
            if ch == "$":
                # Unquoted, an expansion is split at blanks (Docker splits after substituting).
                pieces = self._dollar().split()
                for n, piece in enumerate(pieces):
                    if n:
                        result.append("".join(word))
                        word, quoted = [], False
                    word.append(piece)
                continue
            word.append(self.take())
        if word or quoted:
            result.append("".join(word))
        return result

    def _double_quoted(self) -> str:
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                raise BuildError(f'unmatched " in {self.text!r}')
            ch = self.take()
            if ch == '"':
                return "".join(out)
            if ch == self.escape and self.peek() in ('"', "$", self.escape):
                out.append(self.take())
            elif ch == "$":
                self.pos -= 1
                out.append(self._dollar())
            else:
                out.append(ch)

    def _dollar(self) -> str:
        self.pos += 1                       # the $
        ch = self.peek()
        if ch == "{":
            self.pos += 1
            name = self._name()
            if not name:
                raise BuildError(f"bad substitution in {self.text!r}")
            if self.peek() == "}":
                self.pos += 1
                return self.env.get(name, "")
            colon = self.peek() == ":"
            if colon:
                self.pos += 1
            op = self.take()
            if op not in "-+?":
                modifier = f"{name}{':' if colon else ''}{op}"
                raise BuildError(f"unsupported modifier ${{{modifier}}} in {self.text!r}")
            word = self._until_brace()
            value = self.env.get(name)
            present = value is not None and (value != "" or not colon)
            if op == "-":
                return value if present and value is not None else word
            if op == "+":
                return word if present else ""
            if not present:
                raise BuildError(f"{name}: {word or 'is not set'}")
            return value or ""
        if ch and ch in _NAME_START:
            return self.env.get(self._name(), "")
        return "$"

    def _name(self) -> str:
        start = self.pos
        while self.peek() and self.peek() in _NAME_CHARS:
            self.pos += 1
        return self.text[start:self.pos]

    def _until_brace(self) -> str:
        out: list[str] = []
        depth = 0
        while True:
            if self.pos >= len(self.text):
                raise BuildError(f"missing }} in {self.text!r}")
            ch = self.peek()
            if ch == "}" and depth == 0:
                self.pos += 1
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
                continue
            if ch == self.escape:
                self.pos += 1
                out.append(self.take())
                continue
            if ch == "'" or ch == '"':
                self.pos += 1
                out.append(self._double_quoted() if ch == '"' else self._single())
                continue
            out.append(self.take())

    def _single(self) -> str:
        end = self.text.find("'", self.pos)
        if end < 0:
            raise BuildError(f"unmatched ' in {self.text!r}")
        value = self.text[self.pos:end]
        self.pos = end + 1
        return value


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """The words of ``text`` after expansion and quote removal (COPY sources, EXPOSE, VOLUME...)."""
    try:
        return _Lexer(text, env, escape).words()
    except RecursionError as err:        # ${A:-${A:-${A:-...}}} nested past Python's stack
        raise BuildError(f"substitutions nested too deeply in {text[:80]!r}") from err


def expand_word(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """``text`` as one word: expanded, quotes removed, blanks kept (WORKDIR, USER, a value)."""
    try:
        return _expand_word(text, env, escape)
    except RecursionError as err:
        raise BuildError(f"substitutions nested too deeply in {text[:80]!r}") from err


def _expand_word(text: str, env: Mapping[str, str], escape: str) -> str:
    lexer = _Lexer(text, env, escape)
    pieces: list[str] = []
    while lexer.pos < len(text):
        ch = lexer.peek()
        if ch == lexer.escape:
            lexer.pos += 1
            if lexer.pos < len(text):
                pieces.append(lexer.take())
        elif ch == "'":
            lexer.pos += 1
            pieces.append(lexer._single())
        elif ch == '"':
            lexer.pos += 1
            pieces.append(lexer._double_quoted())
        elif ch == "$":
            pieces.append(lexer._dollar())
        else:
            pieces.append(lexer.take())
    return "".join(pieces)


def split_raw(text: str, escape: str = "\\") -> list[str]:
    """Whitespace-separated words with quotes and escapes kept (for ``key=value`` pairs, expanded after)."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            word.append(ch)
            if ch == escape and quote == '"' and i + 1 < len(text):
                word.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in " \t\r\n":
            if word:
                words.append("".join(word))
                word = []
        elif ch == escape and i + 1 < len(text):
            word.extend((ch, text[i + 1]))
            i += 1
        else:
            if ch in "'\"":
                quote = ch
            word.append(ch)
        i += 1
    if quote:
        raise BuildError(f"unmatched {quote} in {text!r}")
    if word:
        words.append("".join(word))
    return words


def key_values(text: str, env: Mapping[str, str], escape: str, what: str) -> list[tuple[str, str]]:
    """``K=V ...`` pairs (values expanded, quotes removed), or the legacy ``K V`` form (one pair)."""
    words = split_raw(text, escape)
    if not words:
        raise BuildError(f"{what} needs at least one argument")
    if "=" not in words[0]:
        key, _, value = text.strip().partition(" ")
        if not value.strip():
            raise BuildError(f"{what} {key} needs a value (KEY=VALUE or KEY VALUE)")
        return [(key, expand_word(value.strip(), env, escape))]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise BuildError(f"{what}: {word!r} is not KEY=VALUE")
        pairs.append((expand_word(key, env, escape), expand_word(value, env, escape)))
    return pairs
