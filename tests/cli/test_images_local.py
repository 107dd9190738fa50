"""``images`` LOCAL: what an image's layers hold on this machine. After a lazy pull it is the chunks
fetched so far (growing as the container reads), next to SIZE, the whole unpacked size; after a full
pull both are the unpacked size; a converted image nobody pulled holds nothing (nerdctl's 0.0 B)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.cli.test_platform import lazypull
from tests.helpers.images import file
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import busybox_specs, push_lazy_image

BIG = 2 << 20
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


@pytest.fixture(scope="module")
def image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox, then a layer with a small file and a big incompressible one."""
    return push_lazy_image(tmp_path_factory.mktemp("local"), f"{registry.host}/local/esgz:v1",
                           [busybox_specs(), [file("srv/small", "hi\n"),
                                              file("srv/big", os.urandom(BIG))]])[0]


def _bytes(text: str) -> float:
    value, unit = text.split()
    return float(value) * _UNITS[unit]


def _row(root: Path, name: str) -> dict[str, str]:
    listing = lazypull(root, "images")
    assert listing.returncode == 0, listing.stderr
    header, *lines = listing.stdout.splitlines()
    columns = re.split(r"\s{2,}", header.strip())
    assert columns[-3:] == ["SIZE", "BLOB SIZE", "LOCAL"], header
    for line in lines:
        row = dict(zip(columns, re.split(r"\s{2,}", line.strip()), strict=True))
        if f"{row['REPOSITORY']}:{row['TAG']}" == name:
            return row
    raise AssertionError(f"{name} not listed:\n{listing.stdout}")


def test_lazy_pull_shows_what_is_local(tmp_path: Path, image: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    # no prefetch nor background fetch: only what the container reads comes
    (root / "config.toml").write_text("prefetch = false\nbackground_fetch = false\n")
    try:
        pulled = lazypull(root, "--snapshotter=stargz", "pull", "-q", image)
        assert pulled.returncode == 0, pulled.stderr
        row = _row(root, image)
        full = _bytes(row["SIZE"])
        assert full > BIG, "SIZE counts the mounted layers whole"
        assert _bytes(row["LOCAL"]) < BIG // 4, row
        small = lazypull(root, "--snapshotter=stargz", "run", "--rm", image, "cat", "/srv/small")
        assert small.returncode == 0 and small.stdout == "hi\n", small.stderr
        after_small = _bytes(_row(root, image)["LOCAL"])
        # what the start and cat read (busybox, /srv/small), not the big file
        assert 0 < after_small < full - BIG * 3 // 4
        big = lazypull(root, "--snapshotter=stargz", "run", "--rm", image, "sh", "-c",
                       "cat /srv/big > /dev/null")
        assert big.returncode == 0, big.stderr
        row = _row(root, image)
        assert after_small + BIG * 0.95 <= _bytes(row["LOCAL"]) <= full * 1.05
        assert _bytes(row["SIZE"]) == full
    finally:
        lazypull(root, "daemon", "stop")


def test_full_pull_holds_everything(tmp_path: Path, image: str) -> None:
    root = tmp_path / "root"
    pulled = lazypull(root, "--snapshotter=overlayfs", "pull", "-q", image)
    assert pulled.returncode == 0, pulled.stderr
    row = _row(root, image)
    assert row["LOCAL"] == row["SIZE"] and _bytes(row["SIZE"]) > BIG
