"""The command lines lazypull starts itself with (the mount server, a detached container's supervisor).

They run as root, often from a directory root does not control (``cd /tmp/untrusted; lazypull pull``):
a plain ``python -m lazypull`` or ``python -c CODE`` puts the current directory first on ``sys.path``,
so a ``subprocess.py`` or a ``lazypull/`` there would be imported as root. ``-I`` (isolated mode) leaves
out the current directory, the user site directory and the ``PYTHON*`` environment variables; the
interpreter's own site-packages (where lazypull is installed) stays.
"""

from __future__ import annotations

import sys


def python_argv(*args: str) -> list[str]:
    """``<this interpreter> -I ARGS``."""
    return [sys.executable, "-I", *args]


def lazypull_argv(*args: str) -> list[str]:
    """``<this interpreter> -I -m lazypull ARGS``."""
    return python_argv("-m", "lazypull", *args)


__all__ = ["lazypull_argv", "python_argv"]
