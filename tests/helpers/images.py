"""Image and layer builders now live in :mod:`devtools.images` (shared with bench); re-exported here."""

from devtools.images import (
    BuiltLayout,
    TarEntrySpec,
    directory,
    file,
    make_oci_layout,
    make_tar,
    sample_layers,
    sha256,
)

__all__ = ["BuiltLayout", "TarEntrySpec", "directory", "file", "make_oci_layout", "make_tar",
           "sample_layers", "sha256"]
