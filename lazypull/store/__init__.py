"""The additional layer store (``lazypull store``): containers/storage (podman, buildah, CRI-O) reads
lazy layers from a FUSE directory the mount server serves (docs/podman.md).

``names`` (directory names <-> references and digests, ``info``), ``catalog`` (what an image's layers
are, from its registry), ``auth`` (the credential files podman uses), ``tree`` (the FUSE tree),
``service`` (the store in the mount server: layer mounts, use counts, release after a grace period).
"""
