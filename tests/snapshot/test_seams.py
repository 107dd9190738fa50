"""The snapshot package's seams: the containerd proxy and the CRI image service do not import each other
(both speak protobuf through ``snapshot.protobuf``; the proxy takes the CRI keychain as a protocol), and
the mount server's replies are checked for their shape when they are parsed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lazypull.snapshot
from lazypull.errors import MountError
from lazypull.snapshot.protocol import LayerMount, MountInfo, PulledImage

PACKAGE = Path(lazypull.snapshot.__file__).parent


def _imports(package: str) -> set[str]:
    """Every module a module of ``lazypull.snapshot.<package>`` imports (TYPE_CHECKING ones too)."""
    found: set[str] = set()
    for path in (PACKAGE / package).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("package,other", [("proxy", "cri"), ("cri", "proxy")])
def test_proxy_and_cri_do_not_import_each_other(package: str, other: str) -> None:
    assert not {m for m in _imports(package) if m.startswith(f"lazypull.snapshot.{other}")}


@pytest.mark.parametrize("parse,data,message", [
    (PulledImage.from_json, {"name": "a", "digest": "sha256:x", "layers": None}, "'layers' is not a list"),
    (PulledImage.from_json, ["a"], "malformed pull result: list, not an object"),
    (PulledImage.from_json, {"name": "a", "digest": "d", "layers": [{"digest": 3, "lazy": True}]},
     "malformed layer: 'digest' is not a str"),
    (LayerMount.from_json, {"digest": "d", "lazy": "yes"}, "'lazy' is not a bool"),
    (MountInfo.from_json, {"digest": "d"}, "malformed mount: 'path' is not a str"),
    (MountInfo.from_json, {"digest": "d", "path": "/p", "holders": "h"}, "'holders' is not a list"),
], ids=["layers-null", "not-an-object", "digest-number", "lazy-string", "path-missing", "holders-string"])
def test_malformed_replies_are_one_mount_error(parse: object, data: object, message: str) -> None:
    assert callable(parse)
    with pytest.raises(MountError, match=message):
        parse(data)


def test_replies_round_trip() -> None:
    layer = LayerMount("sha256:a", True, Path("/m/a"))
    assert LayerMount.from_json(layer.to_json()) == layer
    assert LayerMount.from_json(LayerMount("sha256:b", False, None).to_json()).path is None
    info = MountInfo("sha256:a", Path("/m/a"), ["h1"], True)
    assert MountInfo.from_json(info.to_json()) == info
    assert MountInfo.from_json({"digest": "d", "path": "/p"}) == MountInfo("d", Path("/p"))
    pulled = PulledImage.from_json({"name": "n", "digest": "sha256:m", "layers": [layer.to_json()]})
    assert pulled == PulledImage("n", "sha256:m", [layer])
