"""Whether a mount gets FUSE passthrough: the kernel's FUSE_INIT offer decides, the config can refuse it,
and a mount that asked and was refused says why once (the kernel version names what would change it)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from lazypull.fs.config import load_config
from lazypull.fs.fuse import FuseMount
from lazypull.fs.fuse import session as fuse_session
from lazypull.fs.fuse.passthrough import kernel_version, unavailable_reason
from tests.fs.fusepath import kernel_offers_passthrough
from tests.fs.memtree import MemTree


@pytest.mark.parametrize(("release", "version"), [
    ("6.1.0-28-amd64", (6, 1)), ("5.15.0-91-generic", (5, 15)), ("6.9", (6, 9)),
    ("6.18.44-fc-v1300", (6, 18)), ("6.10.3-arch1-1", (6, 10)), ("weird", None),
])
def test_kernel_version(release: str, version: tuple[int, int] | None) -> None:
    assert kernel_version(release) == version


def test_reason_names_the_kernel_and_what_it_needs() -> None:
    reason = unavailable_reason("6.1.0-28-amd64")
    assert reason == "kernel 6.1.0-28-amd64 has no FUSE passthrough (it needs 6.9+)"
    assert "did not offer FUSE passthrough" in unavailable_reason("6.12.0")


def test_config_can_switch_passthrough_off(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("passthrough = false\n")
    config = load_config(tmp_path)
    assert config.passthrough is False
    backing = tmp_path / "backing"
    backing.write_bytes(b"local copy")
    tree = MemTree()
    tree.add_file("f", b"local copy", backing=str(backing))
    (tmp_path / "mnt").mkdir()
    with FuseMount(tree, tmp_path / "mnt", passthrough=config.passthrough) as m:
        assert (tmp_path / "mnt" / "f").read_bytes() == b"local copy"
        assert not m.passthrough_active and tree.calls["read"] == 1 and tree.calls["backing_path"] == 0


def test_refused_passthrough_is_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """On a kernel without passthrough the first mount logs why; with it, nothing is logged."""
    monkeypatch.setattr(fuse_session, "_no_passthrough_noted", threading.Event())
    caplog.set_level(logging.INFO, logger="lazypull.fs.fuse.session")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        with FuseMount(MemTree(), tmp_path / name) as m:
            assert m.passthrough_active == kernel_offers_passthrough()
    said = [r.getMessage() for r in caplog.records if "serves every read" in r.getMessage()]
    expected = f"{unavailable_reason()}: lazypull serves every read itself"
    assert said == ([] if kernel_offers_passthrough() else [expected])
    with FuseMount(MemTree(), tmp_path / "a", passthrough=False):
        pass
    assert len([r for r in caplog.records if "serves every read" in r.getMessage()]) == len(said)
