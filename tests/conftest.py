"""Shared fixtures. Real parts (registry, FUSE, runc) are started by fixtures in tests/helpers/."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.helpers.registry", "tests.helpers.oracle", "tests.helpers.containerd"]

VECTORS = Path(__file__).resolve().parent / "data" / "vectors"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The Go-made test vectors in tests/data/vectors (their README says how each was made)."""
    if not VECTORS.is_dir():
        pytest.fail(f"test vectors not found at {VECTORS}")
    return VECTORS


def pytest_report_header() -> str:
    """Which FUSE read path(s) this run tests (passthrough needs kernel 6.9+)."""
    from tests.fs.fusepath import describe

    return describe()
