"""Every package's public API is its ``__init__``: an explicit ``__all__``, sorted, matching what it exports.

One parametrized check for all packages (httpx's ``test_exported_members``, trio's ``test_exports``): a name
added to ``__init__`` but not to ``__all__`` (or the reverse) fails here, naming the package and the name.
"""

from __future__ import annotations

import importlib
import pkgutil
import types
from pathlib import Path

import pytest

import lazypull


def _packages() -> list[str]:
    root = Path(lazypull.__file__).parent
    found = ["lazypull"]
    for info in pkgutil.walk_packages([str(root)], prefix="lazypull."):
        if info.ispkg:
            found.append(info.name)
    return sorted(found)


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then functions and the rest."""
    if name.isupper():
        return 0, name
    return (1 if name[:1].isupper() else 2), name


PACKAGES = _packages()


def test_every_package_is_checked() -> None:
    for name in ("lazypull.format", "lazypull.registry", "lazypull.image", "lazypull.fs", "lazypull.fs.fuse",
                 "lazypull.fs.layer", "lazypull.snapshot", "lazypull.runtime", "lazypull.cli"):
        assert name in PACKAGES


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_explicit_sorted_and_complete(package: str) -> None:
    module = importlib.import_module(package)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{package} has no __all__ list"
    assert len(set(exported)) == len(exported), f"{package}.__all__ repeats a name"
    assert exported == sorted(exported, key=_isort_key), f"{package}.__all__ is not sorted"
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names {missing}, which it does not define"
    public = {name for name, value in vars(module).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)
              and name != "annotations"}     # from __future__ import annotations
    assert public <= set(exported), \
        f"{package} exports {sorted(public - set(exported))} without listing them in __all__"
