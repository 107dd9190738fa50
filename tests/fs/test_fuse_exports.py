"""The public names of lazypull.fs.fuse: sorted ``__all__`` that matches what the package exports."""

from __future__ import annotations

import lazypull.fs.fuse as fuse


def test_all_is_sorted_and_complete() -> None:
    assert fuse.__all__ == sorted(fuse.__all__, key=lambda n: (not n.isupper(), n))
    public = {n for n in dir(fuse) if not n.startswith("_") and not isinstance(getattr(fuse, n), type(fuse))}
    assert public - {"annotations"} == set(fuse.__all__)
