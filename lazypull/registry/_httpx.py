"""httpx without its command line: the registry modules import ``httpx`` from here.

``import httpx`` also imports ``httpx._main`` (the ``httpx`` console script), which loads rich and
pygments whenever they are installed, as they are here (rich draws lazypull's progress bars): ~50 ms
of every ``lazypull pull``, a third of the cost of httpx itself. A placeholder registered under that
name first makes httpx's ``__init__`` take it instead. It only runs if httpx is not imported yet;
calling its ``main`` says why the httpx command is missing.
"""

from __future__ import annotations

import sys
import types

_CLI_MODULE = "httpx._main"


def _no_cli() -> None:
    raise SystemExit("the httpx command line is not loaded in a process that imported lazypull.registry "
                     "(it would load rich and pygments); run the `httpx` command instead")


if "httpx" not in sys.modules and _CLI_MODULE not in sys.modules:
    _placeholder = types.ModuleType(_CLI_MODULE, "placeholder: see lazypull.registry._httpx")
    _placeholder.main = _no_cli  # type: ignore[attr-defined]
    sys.modules[_CLI_MODULE] = _placeholder

import httpx  # noqa: E402  (after the placeholder, on purpose)

__all__ = ["httpx"]
