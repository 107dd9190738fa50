"""What a lazy pull or run tells its user: the metadata it fetched, as nerdctl's ``fetching sha256:...
<media type>`` lines, and once per layer why a layer is not served lazily (it is then pulled whole)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lazypull.image.store import ResolvedImage
    from lazypull.snapshot.protocol import LayerMount


def fetched_lines(metadata: Sequence[tuple[str, str]]) -> list[str]:
    """``fetching sha256:2ea0dd96... <media type>`` per (digest, media type): the index (if any),
    manifest and config (``Store.metadata_of``, or what the mount server's pull reply listed)."""
    return [f"fetching {digest[:15]}... {media_type}" for digest, media_type in metadata]


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
