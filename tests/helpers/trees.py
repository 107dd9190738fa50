"""Directory trees tests build on disk."""

from __future__ import annotations

import os
from pathlib import Path


def make_deep_tree(top: Path, levels: int, name: str = "d") -> None:
    """``levels`` nested directories named ``name`` below ``top`` and a file ``f`` of 8 KiB at the bottom,
    made one directory fd at a time (a long ``name`` takes the bottom past PATH_MAX)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        with os.fdopen(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"x" * 8192)
    finally:
        os.close(fd)
