"""The public API of lazypull.image is what docs/architecture.md promises, and nothing is missing."""

from __future__ import annotations

import lazypull.image as image


def test_contract_names_are_exported() -> None:
    for name in ("Store", "ImageRecord", "ResolvedImage", "pull_image", "convert_image", "push_image",
                 "Image", "ImageIndex", "Layer", "Layout", "ConvertOptions"):
        assert name in image.__all__, name
    for name in image.__all__:
        assert getattr(image, name) is not None, name
    public = {n for n in vars(image) if not n.startswith("_") and n not in {"annotations"}}
    modules = {n for n in public if type(getattr(image, n)).__name__ == "module"}
    assert public - modules == set(image.__all__)


def test_image_imports_only_layers_above_it() -> None:
    """docs/architecture.md: image/ may import format/ and registry/ (and lazypull.errors, lazypull._lazy,
    lazypull.smallfile, lazypull.removetree, lazypull.treeusage, lazypull.lockfile, lazypull.layerdir),
    nothing below."""
    import ast
    from pathlib import Path

    allowed = ("lazypull.image", "lazypull.format", "lazypull.registry", "lazypull.errors", "lazypull._lazy",
               "lazypull.smallfile", "lazypull.removetree", "lazypull.treeusage", "lazypull.lockfile",
               "lazypull.layerdir")
    package = Path(image.__file__).parent
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("lazypull"):
                    assert name.startswith(allowed), f"{path.name} imports {name}"
