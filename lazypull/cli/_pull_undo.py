"""Undoing a lazy pull that failed after the image was named: the one home of that clean-up, used by
``lazypull pull`` and by ``run``/``create`` (which pull the metadata themselves, then download the
layers the mount server cannot serve; a digest mismatch there must not leave a metadata-only name).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from lazypull.errors import LazypullError

if TYPE_CHECKING:
    from lazypull.image.store import ImageRecord, Store


def previous_image(store: Store, ref: str) -> ImageRecord | None:
    """What ``ref`` names in the store now (put back if the pull about to start fails); None if nothing
    or not a valid name (the pull itself says so)."""
    try:
        return store.find_image(ref)
    except LazypullError:
        return None


def undo_pull(store: Store, name: str, before: ImageRecord | None) -> None:
    """No name for ``name`` (or what it meant ``before`` again), and no blobs only it referenced. A name
    that still means ``before`` (nothing was pulled, or the same image) is left alone."""
    with contextlib.suppress(LazypullError), store.lease():
        record = store.find_image(name)
        if record is None or (before is not None and record.target.digest == before.target.digest):
            return
        blobs = sorted(store.referenced_blobs(record.target))
        if before is None:
            store.remove(record.name)
        else:
            store.put_image(before.name, before.target, source=before.source, labels=before.labels,
                            created=before.created)
        store.discard_unreferenced(blobs)


__all__ = ["previous_image", "undo_pull"]
