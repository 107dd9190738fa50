"""What a lazy pull or run tells its user: the metadata it fetched, as nerdctl's ``fetching sha256:...
<media type>`` lines, and once per layer why a layer is not served lazily (it is then pulled whole)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from lazypull.image import mediatypes as mt

if TYPE_CHECKING:
    from lazypull.image.store import ResolvedImage, Store
    from lazypull.snapshot.protocol import LayerMount

def fetched_lines(store: Store, image: ResolvedImage) -> list[str]:
    """``fetching sha256:2ea0dd96... <media type>`` for the index (if any), manifest and config."""
    record = store.get_image(image.name)
    descs = []
    if record.target.digest != image.manifest_digest:
        descs.append((record.target.digest, record.target.media_type))
    manifest_type = image.manifest_descriptor.media_type if image.manifest_descriptor else mt.OCI_MANIFEST
    descs.append((image.manifest_digest, manifest_type))
    config = image.manifest.get("config") if isinstance(image.manifest, dict) else None
    media = config.get("mediaType") if isinstance(config, dict) else None
    descs.append((image.config_digest, str(media or mt.OCI_CONFIG)))
    return [f"fetching {digest[:15]}... {media_type}" for digest, media_type in descs]


def not_lazy_reason(image: ResolvedImage, digest: str) -> str:
    """Why the layer ``digest`` of ``image`` is not mounted lazily, as one line."""
    from lazypull.format.layerkind import is_lazy

    desc = next((d for d in image.layers if d.digest == digest), None)
    if desc is not None and is_lazy(desc.annotations):
        return (f"layer {digest} is eStargz/zstd:chunked but its TOC could not be read (an external TOC "
                "needs the image's -esgztoc image next to it; see the mount server's log): pulling it whole")
    return f"layer {digest} is not eStargz/zstd:chunked: pulling it whole"


def announce_fallbacks(image: ResolvedImage, mounts: Sequence[LayerMount] | None,
                       say: Callable[[str], None]) -> None:
    """One line per layer the mount server did not serve lazily."""
    for mount in mounts or ():
        if not mount.lazy:
            say(not_lazy_reason(image, mount.digest))
