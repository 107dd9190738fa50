"""The busybox rootfs builders now live in :mod:`devtools.rootfs` (shared with bench); re-exported here."""

from devtools.rootfs import (
    Entry,
    busybox_entries,
    busybox_specs,
    busybox_tar,
    make_tar,
    push_image_layers,
    push_lazy_image,
)

__all__ = ["Entry", "busybox_entries", "busybox_specs", "busybox_tar", "make_tar", "push_image_layers",
           "push_lazy_image"]
