"""The external-TOC image (format.md 2.3): an eStargz image converted with ``--estargz-external-toc``
keeps each layer's TOC in a layer of the image tagged ``<tag>-esgztoc`` beside it, annotated with the
digest of the layer it belongs to. The lazy filesystem is given the TOC bytes this module fetches; it
knows nothing of references or manifests.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from lazypull.errors import LazypullError, MountError
from lazypull.format.annotations import TOC_IMAGE_SUFFIX, TOC_LAYER_DIGEST_ANNOTATION
from lazypull.format.reader import DEFAULT_MAX_TOC_SIZE
from lazypull.registry import (
    ReferenceError_,
    RegistryConnectionError,
    is_index,
    parse_index,
    parse_manifest,
)

if TYPE_CHECKING:
    from lazypull.registry import Reference, RegistryClient


def toc_image_reference(ref: Reference) -> Reference:
    """``reg/repo:tag`` -> ``reg/repo:tag-esgztoc``; ``MountError`` for a reference without a tag."""
    if not ref.tag:
        raise MountError(f"{ref} has no tag to find its {TOC_IMAGE_SUFFIX} image by")
    return ref.with_tag(ref.tag + TOC_IMAGE_SUFFIX)


#: ``-esgztoc`` images of a repository a digest-pinned reference's lookup opens at most.
MAX_TOC_IMAGES = 16
#: ``tags/list`` pages that lookup reads at most (a registry may paginate without end).
TOC_TAG_PAGES = 4


def fetch_external_toc(client: RegistryClient, ref: Reference, layer_digest: str) -> bytes:
    """The TOC blob of ``layer_digest`` from the ``<tag>-esgztoc`` image next to ``ref`` (digest checked
    by the client, size bounded as a TOC is); ``MountError`` if that image does not list it.

    A reference pinned by digest alone names no TOC image (a base pulled as ``repo@sha256:...``, or
    an image built on one): the repository's ``-esgztoc`` images are searched for the layer instead, at
    most ``MAX_TOC_IMAGES`` of them from ``TOC_TAG_PAGES`` pages of tags. One that fails (a bad
    manifest or blob, a tag it cannot be fetched by) is passed over for the next: the registry's
    other images are not to be judged by it; a registry that cannot be reached ends the search. What
    is found there is trusted no more than what a tag finds: the mount verifies the TOC against the
    layer's own ``toc.digest``."""
    if ref.tag:
        toc_ref = toc_image_reference(ref)
        toc = _toc_in(client, toc_ref, layer_digest)
        if toc is None:
            raise MountError(f"TOC of layer {layer_digest} not found in {toc_ref}")
        return toc
    candidates = _toc_images(ref, client.list_tags(ref, max_pages=TOC_TAG_PAGES))[:MAX_TOC_IMAGES]
    failed: list[str] = []
    for candidate in candidates:
        try:
            toc = _toc_in(client, candidate, layer_digest)
        except RegistryConnectionError:
            raise
        except LazypullError as err:        # another image's trouble: look at the next one
            failed.append(f"{candidate.tag}: {err}")
            continue
        if toc is not None:
            return toc
    failures = f" ({len(failed)} could not be read; first: {failed[0]})" if failed else ""
    raise MountError(f"layer {layer_digest} has an external TOC, but {ref} has no tag to find it by and "
                     f"none of the {len(candidates)} {TOC_IMAGE_SUFFIX} images of {ref.name} looked at "
                     f"lists it{failures}")


def _toc_images(ref: Reference, tags: list[str]) -> list[Reference]:
    """The repository's ``-esgztoc`` images in tag order; a tag that is not a valid tag name (the
    registry's list is not trusted) is left out."""
    images = []
    for tag in sorted({t for t in tags if t.endswith(TOC_IMAGE_SUFFIX)}):
        with contextlib.suppress(ReferenceError_):
            images.append(ref.with_tag(tag))
    return images


def _toc_in(client: RegistryClient, toc_ref: Reference, layer_digest: str) -> bytes | None:
    """The layer's TOC blob from the TOC image ``toc_ref``; None if that image does not list it."""
    raw, media_type, _ = client.get_manifest(toc_ref)
    if is_index(media_type):        # the TOC image has one manifest: take the first
        entries = parse_index(raw, media_type).manifests
        if not entries:
            raise MountError(f"external TOC index {toc_ref} lists no manifest")
        raw, media_type, _ = client.get_manifest(toc_ref.with_digest(entries[0].digest))
    for layer in parse_manifest(raw, media_type).layers:
        if layer.annotations.get(TOC_LAYER_DIGEST_ANNOTATION) == layer_digest:
            return client.fetch_blob(toc_ref, layer.digest, max_size=DEFAULT_MAX_TOC_SIZE)
    return None
