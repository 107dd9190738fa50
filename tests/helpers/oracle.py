"""The ``oracle`` fixture; the wrapper lives in :mod:`devtools.oracle` (shared with bench)."""

from __future__ import annotations

import pytest

from devtools.oracle import Oracle, OracleBuild, OracleError, build_oracle

__all__ = ["Oracle", "OracleBuild", "OracleError", "build_oracle", "oracle"]


@pytest.fixture(scope="session")
def oracle() -> Oracle:
    """The Go oracle, built once per session."""
    return Oracle(build_oracle())
