"""Finding a layer's external TOC in the ``<tag>-esgztoc`` image beside its image (image.tocimage)."""

from __future__ import annotations

import json

import pytest

from lazypull.errors import MountError
from lazypull.format.annotations import TOC_LAYER_DIGEST_ANNOTATION
from lazypull.image.tocimage import TOC_TAG_PAGES, fetch_external_toc, toc_image_reference
from lazypull.registry import RegistryClient, RegistryError, TooLargeError, parse_reference
from tests.helpers.registry import Fault, FaultProxy, RegistryServer
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


def _tag_list(fault_proxy: FaultProxy, body: bytes, headers: dict[str, str] | None = None) -> None:
    """The proxy answers every tags/list request with ``body`` (200, JSON), the rest as the registry."""
    fault_proxy.add(Fault("status", method="GET", path_contains="/tags/list", times=-1, status=200, body=body,
                          headers={"Content-Type": "application/json", **(headers or {})}))


@pytest.mark.parametrize(("body", "error", "message"), [
    (b"[]", RegistryError, r"tag list of .* is not the registry API's document: Expected `object`, "
                           r"got `array`"),
    (b'{"tags": {"a-esgztoc": 1}}', RegistryError, r"Expected `array \| null`, got `object` - at `\$\.tags`"),
    (b'{"tags": ["a-esgztoc", 7]}', RegistryError, r"Expected `str`, got `int` - at `\$\.tags\[1\]`"),
    (b"[" * 100_000, RegistryError, "is not the registry API's document"),
    (b'{"tags": ["' + b"x" * (1 << 20) + b'"]}', TooLargeError, r"listing tags of .* exceeds 1048576"),
])
def test_a_hostile_tag_list_is_one_registry_error(fault_proxy: FaultProxy, unique_repo: str, body: bytes,
                                                  error: type[Exception], message: str) -> None:
    """The digest-pinned lookup reads the registry's tag list: a page that is not the spec's document,
    or is over 1 MiB, is a RegistryError naming it (the mount then downloads the layer whole), not
    an AttributeError that failed the whole request."""
    _tag_list(fault_proxy, body)
    pinned = parse_reference(f"{fault_proxy.host}/{unique_repo}@sha256:" + "9" * 64)
    with RegistryClient(insecure=True) as client, pytest.raises(error, match=message) as caught:
        fetch_external_toc(client, pinned, LAYER)
    assert "\n" not in str(caught.value)


def test_the_lookup_reads_a_few_pages_of_tags(fault_proxy: FaultProxy, unique_repo: str) -> None:
    """A registry whose every tags/list page links to a next one: TOC_TAG_PAGES pages are read."""
    _tag_list(fault_proxy, b'{"tags": ["a-esgztoc"]}',
              {"Link": f'</v2/{unique_repo}/tags/list?n=1000&last=a>; rel="next"'})
    pinned = parse_reference(f"{fault_proxy.host}/{unique_repo}@sha256:" + "9" * 64)
    with RegistryClient(insecure=True) as client, pytest.raises(MountError, match="none of the 1 -esgztoc"):
        fetch_external_toc(client, pinned, LAYER)
    listed = [r for r in fault_proxy.requests if "/tags/list" in r.path]
    assert len(listed) == TOC_TAG_PAGES


def test_one_bad_toc_image_does_not_end_the_search(registry: RegistryServer, fault_proxy: FaultProxy,
                                                  unique_repo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tag that is no valid tag name is left out; a TOC image whose TOC is too large (an error of
    its own) is passed over: the next image that lists the layer is still found."""
    unlisted = "sha256:" + "3" * 64         # only in a-esgztoc, too large there too
    push_manifest(registry.url, unique_repo, "a-esgztoc",
                  _toc_manifest(registry.url, unique_repo, {unlisted: b"a TOC of 22 bytes ....",
                                                            LAYER: b"a TOC of 21 bytes ..."}))
    push_manifest(registry.url, unique_repo, "b-esgztoc",
                  _toc_manifest(registry.url, unique_repo, {LAYER: b"the toc"}))
    _tag_list(fault_proxy, json.dumps({"tags": ["a b-esgztoc", "a-esgztoc", "b-esgztoc"]}).encode())
    monkeypatch.setattr("lazypull.image.tocimage.DEFAULT_MAX_TOC_SIZE", 16)
    pinned = parse_reference(f"{fault_proxy.host}/{unique_repo}@sha256:" + "9" * 64)
    with RegistryClient(insecure=True) as client:
        assert fetch_external_toc(client, pinned, LAYER) == b"the toc"
        with pytest.raises(MountError, match=r"none of the 2 -esgztoc images .* lists it \(1 could not be "
                                             r"read; first: a-esgztoc: .*exceeds 16 bytes"):
            fetch_external_toc(client, pinned, unlisted)
