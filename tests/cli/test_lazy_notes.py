"""A lazy pull/run says what it fetched (nerdctl's ``fetching sha256:... <media type>`` lines, off a
terminal) and, once per layer, why a layer is not lazy; -q keeps it silent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli.test_platform import lazypull
from tests.helpers.images import file
from tests.helpers.registry import RegistryServer
from tests.helpers.rootfs import busybox_specs, push_image_layers, push_lazy_image

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"


@pytest.fixture(scope="module")
def plain(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    return push_image_layers(tmp_path_factory.mktemp("plain"), f"{registry.host}/notes/plain:v1",
                             [busybox_specs(), [file("etc/motd", "hi\n")]])


@pytest.fixture(scope="module")
def esgz(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    return push_lazy_image(tmp_path_factory.mktemp("esgz"), f"{registry.host}/notes/esgz:v1",
                           [[file("etc/motd", "hi\n")]])[0]


def _fetching(stderr: str) -> list[str]:
    return re.findall(r"^fetching sha256:[0-9a-f]{8}\.\.\. (\S+)$", stderr, re.M)


def test_lazy_pull_of_a_plain_image_says_why(tmp_path: Path, plain: str) -> None:
    root = tmp_path / "root"
    try:
        pulled = lazypull(root, "--snapshotter=stargz", "pull", plain)
        assert pulled.returncode == 0, pulled.stderr
        assert _fetching(pulled.stderr) == [MANIFEST, CONFIG]
        reasons = re.findall(r"^layer (sha256:[0-9a-f]{64}) is not eStargz/zstd:chunked: pulling it whole$",
                             pulled.stderr, re.M)
        assert len(reasons) == 2 and len(set(reasons)) == 2, pulled.stderr
        assert pulled.stderr.count("fetching layer") == 2, "progress of the whole downloads"
        quiet = lazypull(root, "--snapshotter=stargz", "pull", "-q", plain)
        assert quiet.returncode == 0 and quiet.stderr == ""
        ran = lazypull(root, "--snapshotter=stargz", "run", "--rm", plain, "cat", "/etc/motd")
        assert ran.returncode == 0 and ran.stdout == "hi\n", ran.stderr
        assert len(re.findall(r"is not eStargz/zstd:chunked", ran.stderr)) == 2
    finally:
        lazypull(root, "daemon", "stop")


def test_lazy_pull_of_an_estargz_image_lists_its_metadata_only(tmp_path: Path, esgz: str) -> None:
    root = tmp_path / "root"
    try:
        pulled = lazypull(root, "--snapshotter=stargz", "pull", esgz)
        assert pulled.returncode == 0, pulled.stderr
        assert _fetching(pulled.stderr) == [MANIFEST, CONFIG]
        assert "pulling it whole" not in pulled.stderr
    finally:
        lazypull(root, "daemon", "stop")
