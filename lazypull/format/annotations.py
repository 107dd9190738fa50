"""Keys of the layer-descriptor annotations eStargz and zstd:chunked readers and writers use, and the
name of the external-TOC image (format.md 1.11, 2.3, 3.1); one home for each."""

TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
"""sha256 of the TOC JSON: what authenticates a lazily read layer."""
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
"""Size of the uncompressed layer (the tar): no file in it can be bigger."""
UNCOMPRESSED_DIGEST_ANNOTATION = "containerd.io/uncompressed"
"""The layer's DiffID, as containerd's and stargz-snapshotter's converters and BuildKit annotate layer
descriptors; must equal the config's ``rootfs.diff_ids`` entry for the layer."""

MANIFEST_CHECKSUM_ANNOTATION = "io.containers.zstd-chunked.manifest-checksum"
"""zstd:chunked: sha256 of the compressed TOC (stargz-snapshotter's spelling)."""
MANIFEST_POSITION_ANNOTATION = "io.containers.zstd-chunked.manifest-position"
"""zstd:chunked: ``offset:compressed:uncompressed:type`` of the TOC in the blob."""
CS_MANIFEST_CHECKSUM_ANNOTATION = "io.github.containers.zstd-chunked.manifest-checksum"
"""containers/storage's spelling of the manifest-checksum."""
CS_MANIFEST_POSITION_ANNOTATION = "io.github.containers.zstd-chunked.manifest-position"
"""containers/storage's spelling of the manifest-position."""
CS_TARSPLIT_POSITION_ANNOTATION = "io.github.containers.zstd-chunked.tarsplit-position"
"""containers/storage: where its tar-split data is (lazypull does not use it)."""

TOC_LAYER_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/layer.digest"
"""On a layer of an external-TOC image: the digest of the layer whose TOC it holds."""
TOC_IMAGE_SUFFIX = "-esgztoc"
"""``<tag>-esgztoc`` is the image holding the external TOCs of the image ``<tag>``."""

BLOB_LAYOUT_ANNOTATIONS = (TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION, MANIFEST_CHECKSUM_ANNOTATION,
                           MANIFEST_POSITION_ANNOTATION, CS_MANIFEST_CHECKSUM_ANNOTATION,
                           CS_MANIFEST_POSITION_ANNOTATION, CS_TARSPLIT_POSITION_ANNOTATION)
"""The keys describing one blob's bytes (its TOC, where things are in it): stale once a conversion
rewrites the blob, so never carried over to the new one."""
