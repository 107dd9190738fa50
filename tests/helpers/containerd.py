"""The ``containerd`` fixture; the launcher and ``Ctr`` live in :mod:`devtools.containerd` (shared with
bench), re-exported here for the tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.containerd import (
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    ContainerdDaemon,
    ContainerdError,
    ConvertedImage,
    CriContainerd,
    Ctr,
    start_containerd,
    write_oci_archive,
)

__all__ = ["TOC_DIGEST_ANNOTATION", "UNCOMPRESSED_SIZE_ANNOTATION", "ContainerdDaemon", "ContainerdError",
           "ConvertedImage", "CriContainerd", "Ctr", "containerd", "start_containerd", "write_oci_archive"]


@pytest.fixture(scope="session")
def containerd() -> Iterator[Ctr]:
    """A private containerd 1.6 for the session; yields a `Ctr` bound to its socket."""
    daemon = start_containerd()
    work = Path(tempfile.mkdtemp(prefix="lpctr-work-"))
    try:
        yield Ctr(daemon.socket, work)
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
