"""The lazy filesystem's config file: defaults, overrides, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazypull.errors import MountError
from lazypull.fs.config import FsConfig, load_config, parse_config


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lazypull.fs.config.SYSTEM_CONFIG", tmp_path / "absent.toml")
    config = load_config(tmp_path)
    assert config == FsConfig()
    assert (config.prefetch, config.prefetch_timeout, config.background_fetch) == (True, 10.0, True)
    assert config.background_concurrency == 2
    assert config.chunk_dir(tmp_path) == tmp_path / "cache" / "chunks"


def test_root_file_overrides(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'prefetch = false\nprefetch_timeout = 3\n[fs]\nbackground_concurrency = 4\ncache_dir = "/x/c"\n')
    config = load_config(tmp_path)
    assert config.prefetch is False and config.prefetch_timeout == 3.0
    assert config.background_concurrency == 4 and config.background_fetch is True
    assert config.chunk_dir(tmp_path) == Path("/x/c")


@pytest.mark.parametrize("text,match", [
    (b"prefetch = 'yes'", "prefetch must be a bool"),
    (b"nonsense = 1", "unknown setting 'nonsense'"),
    (b"read_deadline = -1", "must not be negative"),
    (b"background_concurrency = 0", "at least 1"),
    (b"prefetch = [", "not valid TOML"),
    (b"\xff\xfe", "not valid TOML"),
    (b"fs = 3", "must be a table"),
], ids=["wrong-type", "unknown-key", "negative", "zero-concurrency", "bad-toml", "not-utf8", "fs-not-table"])
def test_bad_files_are_refused_clearly(text: bytes, match: str) -> None:
    with pytest.raises(MountError, match=match):
        parse_config(text, "test.toml")
