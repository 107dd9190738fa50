"""Keys of the layer-descriptor annotations eStargz readers and writers use (one home for each)."""

TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
"""sha256 of the TOC JSON: what authenticates a lazily read layer."""
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
"""Size of the uncompressed layer (the tar): no file in it can be bigger."""
UNCOMPRESSED_DIGEST_ANNOTATION = "containerd.io/uncompressed"
"""The layer's DiffID, as containerd's and stargz-snapshotter's converters and BuildKit annotate layer
descriptors; must equal the config's ``rootfs.diff_ids`` entry for the layer."""
