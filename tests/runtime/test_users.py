"""Users and files are looked up inside the image's root, never through symlinks out of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lazypull.errors import ContainerError
from lazypull.runtime.options import merge_env, parse_env
from lazypull.runtime.users import ProcessUser, read_in_root, resolve_in_root, resolve_user

PASSWD = "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000:Bob:/home/bob:/bin/sh\nodd:x:notanumber:1::/:\n"
GROUP = "root:x:0:\nbob:x:1000:\nwheel:x:10:bob,carol\naudio:x:29:bob\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    (tmp_path / "etc" / "group").write_text(GROUP)
    return tmp_path


@pytest.mark.parametrize("spec,expected", [
    ("", ProcessUser(0, 0, (), "/root")),
    ("bob", ProcessUser(1000, 1000, (10, 29), "/home/bob")),
    ("1000", ProcessUser(1000, 1000, (10, 29), "/home/bob")),
    ("bob:wheel", ProcessUser(1000, 10, (), "/home/bob")),
    ("bob:77", ProcessUser(1000, 77, (), "/home/bob")),
    ("4242", ProcessUser(4242, 0, (), "/")),
    ("4242:4343", ProcessUser(4242, 4343, (), "/")),
])
def test_resolve_user(root: Path, spec: str, expected: ProcessUser) -> None:
    assert resolve_user(root, spec) == expected


@pytest.mark.parametrize("spec,message", [
    ("nobody-here", "unable to find user 'nobody-here'"),
    ("bob:nogroup", "unable to find group 'nogroup'"),
    ("odd", "invalid uid"),
])
def test_resolve_user_errors(root: Path, spec: str, message: str) -> None:
    with pytest.raises(ContainerError, match=message):
        resolve_user(root, spec)


def test_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    host_secret = tmp_path / "secret"
    host_secret.write_text("alice:x:0:0::/:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    # Absolute and ../-heavy links point at the host's file if followed naively.
    os.symlink(str(host_secret), root / "etc" / "passwd")
    os.symlink("../../../../secret", root / "etc" / "group")
    assert resolve_in_root(root, "/etc/passwd") is None  # /tmp/... does not exist inside the root
    assert read_in_root(root, "/etc/passwd") is None
    assert read_in_root(root, "/etc/group") is None
    with pytest.raises(ContainerError, match="unable to find user 'alice'"):
        resolve_user(root, "alice")
    (root / "data").mkdir()
    (root / "data" / "passwd").write_text("carol:x:7:7::/c:/bin/sh\n")
    os.remove(root / "etc" / "passwd")
    os.symlink("/data/passwd", root / "etc" / "passwd")
    assert resolve_user(root, "carol").uid == 7


def test_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    os.symlink("passwd", tmp_path / "etc" / "passwd")
    with pytest.raises(ContainerError, match="too many levels"):
        read_in_root(tmp_path, "/etc/passwd")


def test_env_parsing(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nA=1\n\nB=two words\n")
    assert parse_env(["C=3", "HOSTVAR", "MISSING"], [env_file], {"HOSTVAR": "h"}) == (
        "A=1", "B=two words", "C=3", "HOSTVAR=h")
    with pytest.raises(ContainerError, match="invalid environment variable"):
        parse_env(["=x"])
    assert merge_env(["PATH=/bin", "A=1"], ["A=2", "B=3"]) == ["PATH=/bin", "A=2", "B=3"]
