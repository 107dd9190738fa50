"""``lazypull build --output oci:DIR[:TAG]``: the built image written into an OCI image layout.

Blobs the store has are copied; base layers that were only mounted lazily (not in the store) are
downloaded from the base image's registry straight into the layout (digest-checked by the client,
committed by the layout's ingest: nothing partial is left in the layout on failure).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, cast

from lazypull.build.errors import BuildError
from lazypull.image import Layout, Store
from lazypull.registry import Descriptor, parse_reference

if TYPE_CHECKING:
    from lazypull.registry import RegistryClient


def export_layout(store: Store, manifest: Descriptor, source: str | None, output: str,
                  client_factory: Callable[[], RegistryClient]) -> None:
    """Write the image ``manifest`` (in ``store``) into the layout ``output`` (``oci:DIR[:TAG]``)."""
    layout, tag = Layout.from_reference(output)
    raw = store.read_blob(manifest.digest)
    document = json.loads(raw)
    blobs = [Descriptor.from_json(document["config"])]
    blobs += [Descriptor.from_json(layer) for layer in document.get("layers") or []]
    client: RegistryClient | None = None
    try:
        for desc in blobs:
            if layout.has_blob(desc.digest):
                continue
            path = store.blob_path(desc.digest)
            if path is not None:
                with open(path, "rb") as f:
                    layout.put_blob(f, desc.digest, desc.size)
                continue
            if source is None:
                raise BuildError(f"{output}: layer {desc.digest} is neither in the store nor in a registry")
            if client is None:
                client = client_factory()
            with layout.ingest(desc.digest, desc.size) as writer:
                client.get_blob(parse_reference(source), desc.digest, cast(BinaryIO, writer), size=desc.size)
                writer.commit()
        layout.put_blob(raw, manifest.digest, manifest.size)
        layout.add_entry(manifest, tag)
    finally:
        if client is not None:
            client.close()
