"""Interop fixtures: the synthetic tars, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.tarcases import TarCase, dot_prefixed_tar, edge_case_tar, many_files_tar


@pytest.fixture(scope="session")
def tar_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TarCase]:
    """name -> TarCase: `edge` (every edge case, a 70 kB file), `dot` (`./` names, GNU format),
    `many` (60 small files), `bigchunk` (edge cases plus a file over the 4 MiB default chunk)."""
    d: Path = tmp_path_factory.mktemp("tars")
    return {
        "edge": edge_case_tar(d / "edge.tar"),
        "dot": dot_prefixed_tar(d / "dot.tar"),
        "many": many_files_tar(d / "many.tar"),
        "bigchunk": edge_case_tar(d / "bigchunk.tar", big_size=(4 << 20) + 300_000),
    }
