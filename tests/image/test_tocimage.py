"""Finding a layer's external TOC in the ``<tag>-esgztoc`` image beside its image (image.tocimage)."""

from __future__ import annotations

import json

import pytest

from lazypull.errors import MountError
from lazypull.format.annotations import TOC_LAYER_DIGEST_ANNOTATION
from lazypull.image.tocimage import fetch_external_toc, toc_image_reference
from lazypull.registry import RegistryClient, TooLargeError, parse_reference
from tests.helpers.registry import RegistryServer
from tests.snapshot.layerkit import push_blob, push_manifest

LAYER = "sha256:" + "1" * 64
OTHER = "sha256:" + "2" * 64
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _toc_manifest(url: str, repo: str, tocs: dict[str, bytes]) -> dict[str, object]:
    config = push_blob(url, repo, b"{}")
    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
               "digest": push_blob(url, repo, toc), "size": len(toc),
               "annotations": {TOC_LAYER_DIGEST_ANNOTATION: layer}}
              for layer, toc in tocs.items()]
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
            "layers": layers}


def test_the_toc_of_the_layer_named_by_its_annotation(registry: RegistryServer, unique_repo: str) -> None:
    push_manifest(registry.url, unique_repo, "v1-esgztoc",
                  _toc_manifest(registry.url, unique_repo, {OTHER: b"other toc", LAYER: b"the toc"}))
    ref = parse_reference(f"{registry.host}/{unique_repo}:v1")
    assert str(toc_image_reference(ref)) == f"{registry.host}/{unique_repo}:v1-esgztoc"
    with RegistryClient(insecure=True) as client:
        assert fetch_external_toc(client, ref, LAYER) == b"the toc"
        missing = "sha256:" + "3" * 64
        with pytest.raises(MountError, match=f"TOC of layer {missing} not found in .*v1-esgztoc"):
            fetch_external_toc(client, ref, missing)


def test_a_digest_pinned_reference_finds_its_toc_among_the_repositorys_toc_images(
        registry: RegistryServer, unique_repo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``repo@sha256:...`` names no ``-esgztoc`` image (a base pinned by digest, an image built on one):
    the repository's TOC images are looked through, at most MAX_TOC_IMAGES of them."""
    for tag, tocs in (("a-esgztoc", {OTHER: b"other toc"}), ("b-esgztoc", {LAYER: b"the toc"})):
        push_manifest(registry.url, unique_repo, tag, _toc_manifest(registry.url, unique_repo, tocs))
    push_manifest(registry.url, unique_repo, "c", _toc_manifest(registry.url, unique_repo, {}))
    pinned = parse_reference(f"{registry.host}/{unique_repo}@sha256:" + "9" * 64)
    missing = "sha256:" + "3" * 64
    with RegistryClient(insecure=True) as client:
        assert fetch_external_toc(client, pinned, LAYER) == b"the toc"
        assert fetch_external_toc(client, pinned, OTHER) == b"other toc"
        with pytest.raises(MountError, match=rf"^layer {missing} has an external TOC, but .* has no tag to "
                                             r"find it by and none of the 2 -esgztoc images of .* lists it$"):
            fetch_external_toc(client, pinned, missing)
        monkeypatch.setattr("lazypull.image.tocimage.MAX_TOC_IMAGES", 1)      # only a-esgztoc is looked at
        with pytest.raises(MountError, match="none of the 1 -esgztoc images"):
            fetch_external_toc(client, pinned, LAYER)


def test_an_index_is_followed_to_its_first_manifest(registry: RegistryServer, unique_repo: str) -> None:
    manifest = _toc_manifest(registry.url, unique_repo, {LAYER: b"from the index"})
    raw = json.dumps(manifest).encode()
    digest = push_manifest(registry.url, unique_repo, "m", manifest)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": len(raw)}]}
    _push_index(registry.url, unique_repo, "v2-esgztoc", index)
    ref = parse_reference(f"{registry.host}/{unique_repo}:v2")
    with RegistryClient(insecure=True) as client:
        assert fetch_external_toc(client, ref, LAYER) == b"from the index"


def test_a_hostile_toc_image_is_one_error(registry: RegistryServer, unique_repo: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An index listing nothing, or a TOC blob larger than any TOC may be: an error naming what was
    wrong, and the blob is not read into memory beyond the bound."""
    _push_index(registry.url, unique_repo, "v3-esgztoc",
                {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []})
    ref = parse_reference(f"{registry.host}/{unique_repo}:v3")
    with RegistryClient(insecure=True) as client, pytest.raises(MountError, match="lists no manifest"):
        fetch_external_toc(client, ref, LAYER)
    push_manifest(registry.url, unique_repo, "v4-esgztoc",
                  _toc_manifest(registry.url, unique_repo, {LAYER: b"a TOC of 21 bytes ..."}))
    monkeypatch.setattr("lazypull.image.tocimage.DEFAULT_MAX_TOC_SIZE", 16)
    ref = parse_reference(f"{registry.host}/{unique_repo}:v4")
    with RegistryClient(insecure=True) as client, pytest.raises(TooLargeError, match="exceeds 16 bytes"):
        fetch_external_toc(client, ref, LAYER)


def _push_index(url: str, repo: str, tag: str, index: dict[str, object]) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=30) as http:
        http.put(f"/v2/{repo}/manifests/{tag}", content=json.dumps(index).encode(),
                 headers={"Content-Type": "application/vnd.oci.image.index.v1+json"}).raise_for_status()
