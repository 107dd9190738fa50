"""Package attributes loaded on first use (PEP 562).

Every ``lazypull`` command is a fresh process, and a container start runs two or three of them: a
package ``__init__`` that imported all its submodules would load httpx, rich or the FUSE server into
commands that never use them. So a package lists its public names and the submodule defining each,
and :func:`lazy_attributes` gives it the module ``__getattr__`` and ``__dir__`` that import a
submodule when one of its names is first used. (``lazypull.format`` keeps a copy of its own: it
imports nothing from the rest of lazypull.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any


def lazy_attributes(package: str, namespace: MutableMapping[str, Any], sources: Mapping[str, str],
                    public: Sequence[str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``sources`` maps each public name to its submodule
    (relative: ``".store"``); a name once loaded is kept in ``namespace`` (the package's globals)."""

    def __getattr__(name: str) -> object:
        source = sources.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        # __import__ rather than importlib.import_module: -X importtime then lists the submodule
        value = getattr(__import__(package + source, fromlist=[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        """The public API, loaded or not."""
        return list(public)

    return __getattr__, __dir__
