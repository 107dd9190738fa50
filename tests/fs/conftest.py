"""The ``fuse_path`` parameter: each test taking it runs once per read path this kernel offers."""

from __future__ import annotations

import pytest

from tests.fs.fusepath import fuse_paths


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fuse_path" in metafunc.fixturenames:
        metafunc.parametrize("fuse_path", fuse_paths(), scope="module")
