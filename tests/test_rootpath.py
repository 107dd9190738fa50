"""lazypull.rootpath: one walk for the three callers (users, build destinations, build context)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lazypull.rootpath import MAX_SYMLINKS, LeavesRoot, TooManyLinks, resolve_in_root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.symlink("/etc", r / "abs")          # absolute: the root's /etc, never the host's
    os.symlink("../../etc", r / "up")      # climbs above the root: clamped at its top
    os.symlink("passwd", r / "etc" / "last")
    return r


def test_links_resolve_inside_the_root(root: Path) -> None:
    assert resolve_in_root(root, "/abs/passwd") == root / "etc" / "passwd"
    assert resolve_in_root(root, "up/passwd") == root / "etc" / "passwd"
    assert resolve_in_root(root, "../../../etc/passwd") == root / "etc" / "passwd"


def test_follow_last_false_names_the_link_itself(root: Path) -> None:
    assert resolve_in_root(root, "/etc/last") == root / "etc" / "passwd"
    assert resolve_in_root(root, "/abs/last", follow_last=False) == root / "etc" / "last"


def test_missing_components_kept_or_raised(root: Path) -> None:
    assert resolve_in_root(root, "/abs/new/dir") == root / "etc" / "new" / "dir"
    with pytest.raises(FileNotFoundError):
        resolve_in_root(root, "/abs/new/dir", keep_missing=False)
    with pytest.raises(NotADirectoryError):
        resolve_in_root(root, "/etc/passwd/x", keep_missing=False)


def test_strict_refuses_links_leaving_the_root(root: Path) -> None:
    with pytest.raises(LeavesRoot) as absolute:
        resolve_in_root(root, "abs/passwd", strict=True)
    assert (absolute.value.link, absolute.value.target) == (root / "abs", "/etc")
    with pytest.raises(LeavesRoot) as climbing:
        resolve_in_root(root, "up/passwd", strict=True)
    assert climbing.value.link is None
    assert resolve_in_root(root, "etc/last", strict=True) == root / "etc" / "passwd"


def test_a_link_loop_is_bounded(root: Path) -> None:
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    with pytest.raises(TooManyLinks):
        resolve_in_root(root, "/a")
    chain = [f"l{i}" for i in range(MAX_SYMLINKS + 1)]
    for name, target in zip(chain, [*chain[1:], "etc"], strict=True):
        os.symlink(target, root / name)
    with pytest.raises(TooManyLinks):
        resolve_in_root(root, "/l0/passwd")
    assert resolve_in_root(root, f"/{chain[1]}/passwd") == root / "etc" / "passwd"
