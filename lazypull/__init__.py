"""lazypull: start containers before their images are downloaded (eStargz, zstd:chunked).

The package is layered, each layer importing only those below it:

- ``lazypull.format``   eStargz / zstd:chunked layer blobs (stdlib and compressors only)
- ``lazypull.registry`` OCI distribution client
- ``lazypull.image``    image and layer model, local store, OCI layouts, conversion
- ``lazypull.fs``       the lazy layer filesystem (FUSE) and its chunk cache
- ``lazypull.snapshot`` the mount server that keeps layer filesystems alive
- ``lazypull.runtime``  containers with runc on overlayfs
- ``lazypull.cli``      the ``lazypull`` command
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
