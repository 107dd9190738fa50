"""Reference parsing: docker's normalisation, layouts, hostile input, and round trips (Hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazypull.registry import Reference, ReferenceError_, parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), [
    ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
    ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
    ("user/app", "docker.io", "user/app", "latest", None),
    ("docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None),
    ("index.docker.io/library/ubuntu:1", "docker.io", "library/ubuntu", "1", None),
    ("127.0.0.1:5000/ubuntu:22.04-esgz", "127.0.0.1:5000", "ubuntu", "22.04-esgz", None),
    ("localhost/a/b/c", "localhost", "a/b/c", "latest", None),
    ("localhost:5000/a@" + D, "localhost:5000", "a", None, D),
    ("ghcr.io/o/r:t@" + D, "ghcr.io", "o/r", "t", D),
    ("[::1]:5000/x:y", "[::1]:5000", "x", "y", None),
    ("Registry/x", "Registry", "x", "latest", None),
    ("a__b/c-d--e.f:T_1", "docker.io", "a__b/c-d--e.f", "T_1", None),
], ids=lambda v: str(v)[:30])
def test_parse(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.transport == "docker"
    assert parse_reference(str(ref)) == ref


def test_docker_hub_details() -> None:
    ref = parse_reference("ubuntu:22.04")
    assert str(ref) == "docker.io/library/ubuntu:22.04"
    assert ref.familiar() == "ubuntu:22.04"
    assert ref.api_host == "registry-1.docker.io"
    assert ref.identifier == "22.04"
    assert ref.with_digest(D).identifier == D
    assert parse_reference("x", default_tag=None).tag is None


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("upper/Case", "lowercase"),
    ("host.example/Repo", "lowercase"),
    ("a b", "whitespace"),
    (" ubuntu", "whitespace"),
    ("ubuntu:", "bad tag"),
    ("ubuntu:-x", "bad tag"),
    ("ubuntu@sha256:123", "bad digest"),
    ("ubuntu@md5:" + "a" * 32, "bad digest"),
    ("https://host/x", "URL scheme"),
    ("host:99999/x", "bad registry host"),
    ("host:/x", "bad registry host"),
    ("-host.example/x", "bad registry host"),
    ("host.example/", "no repository"),
    ("a//b", "bad path component"),
    ("a/-b", "bad path component"),
    ("a/b_", "bad path component"),
    ("a:" + "t" * 129, "bad tag"),
    ("a/" + "b" * 300, "longer than 255"),
    ("oci:", "no directory"),
    ("oci:dir:bad tag", "bad tag"),
], ids=lambda v: str(v)[:20])
def test_invalid_references_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ReferenceError_, match=message):
        parse_reference(text)


@pytest.mark.parametrize(("text", "path", "tag"), [
    ("oci:/tmp/layout", "/tmp/layout", None),
    ("oci:/tmp/layout:v1", "/tmp/layout", "v1"),
    ("oci:relative/dir:latest", "relative/dir", "latest"),
    ("oci:dir", "dir", None),
    ("oci:/a:b/c", "/a:b/c", None),
])
def test_layout_references(text: str, path: str, tag: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.transport, ref.path, ref.tag) == ("oci", path, tag)
    assert parse_reference(str(ref)) == ref


_alnum = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_separator = st.sampled_from([".", "_", "__", "-", "--"])
_component = st.builds(lambda first, rest: first + "".join(sep + part for sep, part in rest),
                       _alnum, st.lists(st.tuples(_separator, _alnum), max_size=2))
_host = st.one_of(
    st.just("localhost"),
    st.builds(lambda a, b: f"{a}.{b}", _alnum, _alnum),
    st.builds(lambda a, b, p: f"{a}.{b}:{p}", _alnum, _alnum, st.integers(1, 65535)),
    st.builds(lambda p: f"127.0.0.1:{p}", st.integers(1, 65535)),
)
_tag = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")
_digest = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())


@given(_host, st.lists(_component, min_size=1, max_size=3), st.none() | _tag, st.none() | _digest)
def test_round_trip(host: str, path: list[str], tag: str | None, digest: str | None) -> None:
    text = f"{host}/{'/'.join(path)}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.digest) == (host, "/".join(path), digest)
    assert ref.tag == (tag if tag else None if digest else "latest")
    assert str(ref) == text if (tag or digest) else str(ref) == text + ":latest"
    assert parse_reference(str(ref)) == ref


@given(st.text(max_size=60))
def test_arbitrary_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        ref = parse_reference(text)
    except ReferenceError_:
        return
    assert isinstance(ref, Reference)
    assert parse_reference(str(ref)) == ref
