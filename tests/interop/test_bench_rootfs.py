"""bench/rootfs.py's fast parts (the debootstrap run itself is exercised by the benchmarks): where the
mirror comes from, cache keys, and splitting a rootfs tar into layers that extract on their own."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from bench.rootfs import RootfsError, apt_mirror, cache_key, split_layers
from tests.interop.tarcases import TarCase, clean


def test_apt_mirror_from_deb822_and_list_files(tmp_path: Path) -> None:
    (tmp_path / "a.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/security\nSuites: bookworm-security\nComponents: main\n\n"
        "# comment\nTypes: deb deb-src\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\n"
    )
    assert apt_mirror("bookworm", tmp_path) == "http://mirror.invalid/debian"
    (tmp_path / "b.list").write_text("deb [arch=amd64] http://other.invalid/debian trixie main\n")
    assert apt_mirror("trixie", tmp_path) == "http://other.invalid/debian"
    with pytest.raises(RootfsError, match="sid"):
        apt_mirror("sid", tmp_path)


def test_cache_key_ignores_order_and_rejects_odd_names() -> None:
    assert cache_key(["gcc", "python3"], "bookworm") == cache_key(["python3", "gcc", "gcc"], "bookworm")
    assert cache_key(["gcc"], "bookworm") != cache_key(["gcc"], "trixie")
    with pytest.raises(RootfsError, match="not a Debian package name"):
        cache_key(["python3; rm -rf /"], "bookworm")


def test_split_layers_keeps_hardlinks_with_targets(tar_cases: dict[str, TarCase], tmp_path: Path) -> None:
    case = tar_cases["edge"]
    layers = split_layers(case.path, tmp_path, [["etc/hard", "home"], ["usr/share", "/dev/"]])
    assert len(layers) == 3
    names: list[set[str]] = []
    for layer in layers:
        with tarfile.open(layer) as tar:
            names.append({clean(m.name) for m in tar.getmembers()})
    with tarfile.open(case.path) as tar:
        everything = [clean(m.name) for m in tar.getmembers()]
    assert sorted(n for layer in names for n in layer) == sorted(set(everything))
    assert {"home", "home/u1", "home/u2", "home/u3"} <= names[1]
    assert "etc/hard" in names[0] and "etc/hello.txt" in names[0]  # the link follows its target
    assert {"usr/share", "dev/null", "dev/fifo"} <= names[2]
    assert (
        split_layers(case.path, tmp_path, [["etc/hard", "home"], ["usr/share", "/dev/"]]) == layers
    )  # cached
