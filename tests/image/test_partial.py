"""``image.partial``'s manifest check: the JSON decoded once, errors naming the document's digest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lazypull.image import Layout, Store, copy_into_store
from lazypull.image import mediatypes as mt
from lazypull.image.digest import sha256_bytes
from lazypull.image.errors import ImageError
from lazypull.image.partial import parse_index, parse_manifest
from lazypull.registry import Descriptor, ManifestError
from tests.helpers.images import make_oci_layout, sample_layers

CONFIG = {"mediaType": mt.OCI_CONFIG, "digest": "sha256:" + "c" * 64, "size": 2}
LAYER = {"mediaType": mt.OCI_LAYER_GZIP, "digest": "sha256:" + "1" * 64, "size": 10,
         "annotations": {"a": "b"}}


def _doc(**extra: Any) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": CONFIG,
                       "layers": [LAYER], **extra}).encode()


def _desc(raw: bytes, media_type: str = mt.OCI_MANIFEST) -> Descriptor:
    return Descriptor(media_type, sha256_bytes(raw), len(raw))


_REAL_LOADS = json.loads


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every document ``json.loads`` decodes from now on, in order."""
    decoded: list[bytes] = []

    def counting(data: Any, *args: Any, **kwargs: Any) -> Any:
        decoded.append(data)
        return _REAL_LOADS(data, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counting)
    return decoded


def test_a_manifest_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _doc(annotations={"org.example": "x"})
    decoded = _count_decodes(monkeypatch)
    real = _REAL_LOADS
    document, config, layers = parse_manifest(raw, _desc(raw))
    assert decoded == [raw]
    assert document == real(raw)
    assert config.digest == CONFIG["digest"] and [d.digest for d in layers] == [LAYER["digest"]]
    assert layers[0].annotations == {"a": "b"}


def test_errors_name_the_document() -> None:
    bad = _doc(layers="none")
    with pytest.raises(ManifestError, match=rf"^manifest {_desc(bad).digest}: manifest has no layers list"):
        parse_manifest(bad, _desc(bad))
    raw = _doc()
    docker = _desc(raw, mt.DOCKER_MANIFEST)
    with pytest.raises(ImageError, match=rf"^manifest {docker.digest}: mediaType .* differs from descriptor"):
        parse_manifest(raw, docker)
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": _desc(raw).digest, "size": len(raw)}]}).encode()
    assert [d.digest for d in parse_index(index, _desc(index, mt.OCI_INDEX))] == [_desc(raw).digest]
    with pytest.raises(ManifestError, match=r"^index sha256:[0-9a-f]{64}: not an index"):
        parse_index(raw, _desc(raw, mt.OCI_INDEX))


def test_resolving_a_stored_image_decodes_its_manifest_once(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    built = make_oci_layout(tmp_path / "layout", sample_layers()[:2], tag="v1")
    layout = Layout(built.path)
    store = Store(tmp_path / "root")
    copy_into_store(store, layout.root("v1"), layout, "example.com/once:1", source=None, platforms=None)
    manifest = store.read_blob(built.images[0].manifest_digest)
    decoded = _count_decodes(monkeypatch)
    real = _REAL_LOADS
    resolved = store.resolve("example.com/once:1")
    assert decoded.count(manifest) == 1
    assert resolved.manifest == real(manifest) and len(resolved.layers) == 2
