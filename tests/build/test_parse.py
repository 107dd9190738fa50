"""The Dockerfile parser, Docker's word expansion and .dockerignore rules, without building anything."""

from __future__ import annotations

import pytest

from lazypull.build.dockerfile import parse_dockerfile
from lazypull.build.dockerignore import IgnoreRules
from lazypull.build.errors import BuildError, DockerfileError
from lazypull.build.words import expand_word, expand_words, key_values


def test_continuations_comments_flags_forms() -> None:
    df = parse_dockerfile(
        "# syntax=docker/dockerfile:1\n"
        "# escape=`\n"
        "\n"
        "FROM busybox AS base\n"
        "  # indented comment\n"
        "RUN echo a `\n"
        "# comment inside\n"
        "\n"
        "   b\n"
        "COPY --from=base --chown=1:2 [\"a b\", \"/c/\"]\n"
        'CMD ["sh", "-c"]\n'
        "CMD sh -c [x\n", "Df")
    assert df.escape == "`"
    assert df.directives == {"syntax": "docker/dockerfile:1", "escape": "`"}
    keywords = [(i.keyword, i.line) for i in df.instructions]
    assert keywords == [("FROM", 4), ("RUN", 6), ("COPY", 10), ("CMD", 11), ("CMD", 12)]
    assert df.instructions[1].args == "echo a    b"         # the continuation keeps its leading blanks
    copy = df.instructions[2]
    assert copy.flags == {"from": "base", "chown": "1:2"} and copy.exec_form() == ["a b", "/c/"]
    assert df.instructions[3].exec_form() == ["sh", "-c"]
    assert df.instructions[4].exec_form() is None             # not valid JSON: the shell form


def test_heredoc_and_errors() -> None:
    df = parse_dockerfile("FROM x\nRUN <<EOF\necho 1\n  echo 2\nEOF\nRUN true\n")
    run = df.instructions[1]
    assert run.heredocs[0].name == "EOF" and run.heredocs[0].body == "echo 1\n  echo 2\n"
    assert df.instructions[2].line == 6
    with pytest.raises(DockerfileError, match=r"^Df:2: unknown instruction: COPPY$"):
        parse_dockerfile("FROM x\nCOPPY a b\n", "Df")
    with pytest.raises(DockerfileError, match=r"^Df:2: RUN: heredoc EOF is not terminated$"):
        parse_dockerfile("FROM x\nRUN cat <<EOF\nhello\n", "Df")
    with pytest.raises(DockerfileError, match="invalid escape character"):
        parse_dockerfile("# escape=x\nFROM x\n", "Df")
    with pytest.raises(DockerfileError, match=r"^Df:5001: more than 5000 instructions$"):
        parse_dockerfile("FROM x\n" + "ENV a=b\n" * 6000, "Df")


def test_word_expansion() -> None:
    env = {"A": "1", "EMPTY": "", "SP": "x y"}
    text = "$A-${A}-${B:-def}-${EMPTY:-e}-${EMPTY-e}-${A:+set}-${B:+set}"
    assert expand_word(text, env) == "1-1-def-e--set-"
    assert expand_word("'$A' \"$A\" \\$A", env) == "$A 1 $A"
    assert expand_words("$SP \"$SP\" '' $EMPTY end", env) == ["x", "y", "x y", "", "end"]
    assert expand_word("`$A", env, escape="`") == "$A"
    with pytest.raises(BuildError, match="nested too deeply"):
        expand_word("${A:-" * 5000 + "}" * 5000, env)
    with pytest.raises(BuildError, match="B: must be set"):
        expand_word("${B:?must be set}", env)
    assert key_values('K=v Q="a b" Z="$A c"', env, "\\", "ENV") == [("K", "v"), ("Q", "a b"), ("Z", "1 c")]
    assert key_values("KEY value with spaces", env, "\\", "ENV") == [("KEY", "value with spaces")]


@pytest.mark.parametrize(("patterns", "path", "excluded"), [
    (["*.log"], "a.log", True),
    (["*.log"], "dir/a.log", False),                # * does not cross a /
    (["**/*.log"], "dir/sub/a.log", True),
    (["dir"], "dir/sub/file", True),                # a parent excluded excludes the path
    (["dir", "!dir/keep"], "dir/keep", False),      # the last match decides
    (["dir", "!dir/keep"], "dir/other", True),
    (["/abs/./x"], "abs/x", True),                  # cleaned, leading / dropped
    (["# comment", ""], "# comment", False),
    (["fil?[0-9]"], "file7", True),
    (["fil?[^0-9]"], "file7", False),
])
def test_dockerignore(patterns: list[str], path: str, excluded: bool) -> None:
    assert IgnoreRules(patterns).excluded(path) is excluded
