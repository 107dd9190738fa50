"""lazypull.format depends on the stdlib, three compression libraries and msgspec (the TOC's JSON) only
(like ggcr's depcheck)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import lazypull.format

ALLOWED_THIRD_PARTY = {"zstandard", "zlib_ng", "isal", "msgspec"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module is not None
            found.add(node.module)
    return found


def test_format_imports_only_stdlib_and_compression_libraries() -> None:
    package = Path(lazypull.format.__file__).parent
    files = sorted(package.rglob("*.py"))
    assert len(files) > 5
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "lazypull":
                assert name == "lazypull.format" or name.startswith("lazypull.format."), f"{path}: {name}"
            else:
                assert top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY, f"{path}: {name}"


def test_exports_match_all() -> None:
    exported = {n for n in dir(lazypull.format) if not n.startswith("_")}
    modules = {n for n in exported if type(getattr(lazypull.format, n)).__name__ == "module"}
    assert sorted(lazypull.format.__all__) == sorted(exported - modules)
