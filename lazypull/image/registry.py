"""Images in a registry, read through ``lazypull.registry.RegistryClient`` (the remote source).

Manifests are fetched by digest from ``/manifests/``, other blobs from ``/blobs/``; whole blobs are
verified by the client. Large blobs are copied with :meth:`RegistryProvider.copy_blob` straight into a
destination file (the store's ingest writer) rather than through a stream.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from typing import BinaryIO

from lazypull.image import mediatypes as mt
from lazypull.image.model import Root
from lazypull.image.partial import kind_of, open_root, verify_bytes
from lazypull.registry import Descriptor, Reference, RegistryClient, parse_reference


class RegistryProvider:
    """One repository of one registry as a BlobProvider."""

    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        self.client = client
        self.ref = ref

    def read_blob(self, desc: Descriptor) -> bytes:
        if mt.is_manifest(desc.media_type) or mt.is_index(desc.media_type):
            raw, _media_type, _digest = self.client.get_manifest(self.ref.with_digest(desc.digest))
            return verify_bytes(raw, desc, kind_of(desc))
        buf = io.BytesIO()
        self.client.get_blob(self.ref, desc.digest, buf, size=desc.size)
        return verify_bytes(buf.getvalue(), desc, kind_of(desc))

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller
        try:
            self.client.get_blob(self.ref, desc.digest, spool, size=desc.size)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool

    def copy_blob(self, desc: Descriptor, dest: BinaryIO,
                  progress: Callable[[int], None] | None = None) -> None:
        """Download a blob into ``dest`` (digest checked by the client)."""
        self.client.get_blob(self.ref, desc.digest, dest, size=desc.size, progress=progress)


def remote_root(client: RegistryClient, ref: Reference | str,
                manifest: tuple[bytes, str, str] | None = None) -> tuple[Root, RegistryProvider]:
    """The image or index ``ref`` names, read lazily from the registry.

    ``manifest``: what ``client.get_manifest(ref)`` returned already (raw, media type, checked digest),
    so that it is not asked for twice.
    """
    parsed = parse_reference(ref) if isinstance(ref, str) else ref
    raw, media_type, digest = manifest if manifest is not None else client.get_manifest(parsed)
    desc = Descriptor(media_type, digest, len(raw))
    provider = RegistryProvider(client, parsed)
    return open_root(provider, desc, raw), provider
