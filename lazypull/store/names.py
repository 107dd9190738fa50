"""The additional layer store's names and files, as containers/storage uses them.

A layer is looked up at ``<store>/<base64(image reference)>/<digest>/`` (``:ref`` stores): standard
base64 with padding of the reference podman pulled (``host/repo:tag`` or ``host/repo@sha256:...``),
then the layer's compressed blob digest (c/image < 5.31, Debian 12's podman 4.3) or its TOC digest
(newer c/image). The layer directory holds ``diff`` (the tree), ``info`` (containers/storage's layer
record as JSON) and ``blob`` (the registry bytes).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from lazypull.errors import LazypullError

DIGEST_NAME = re.compile(r"sha256:[0-9a-f]{64}")
MAX_REF_NAME = 255          # one path component
COMPRESSION_GZIP = 2        # containers/storage's archive.Compression values
COMPRESSION_ZSTD = 4
DIFF = b"diff"
INFO = b"info"
BLOB = b"blob"
USE = b"use"


class StoreNameError(LazypullError):
    """A store path component that is not an encoded reference or a digest."""


def encode_ref(ref: str) -> str:
    """The directory name containers/storage uses for ``ref`` (Go's ``base64.StdEncoding``)."""
    return base64.b64encode(ref.encode()).decode()


def decode_ref(name: bytes) -> str:
    """The reference a directory name encodes; StoreNameError for anything else."""
    if not name or len(name) > MAX_REF_NAME:
        raise StoreNameError(f"store name of {len(name)} bytes is not an encoded image reference")
    try:
        text = base64.b64decode(name, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError) as err:
        raise StoreNameError(f"store name {name[:64]!r} is not base64 of an image reference") from err
    if not text.isprintable() or not text:
        raise StoreNameError(f"store name {name[:64]!r} decodes to a non-printable reference")
    return text


def parse_digest_name(name: bytes) -> str | None:
    """``sha256:<hex>`` as a layer directory name, or None (``diff1``, junk: not a layer here)."""
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if DIGEST_NAME.fullmatch(text) else None


@dataclass(frozen=True)
class LayerInfo:
    """What ``info`` says about one layer (containers/storage's ``Layer`` record, less id/parent)."""

    digest: str                  # compressed blob digest (manifest)
    size: int                    # compressed size
    diff_id: str                 # config.rootfs.diff_ids[i]
    diff_size: int               # uncompressed size, -1 when unknown
    compression: int             # COMPRESSION_GZIP or COMPRESSION_ZSTD
    toc_digest: str | None

    def to_json(self, *, by_toc: bool) -> bytes:
        """The ``info`` file. Looked up by blob digest (podman 4.3): ``diff-digest`` is required (its
        c/storage panics without it). By TOC digest (c/image >= 5.31): ``toc-digest`` must match the
        name, and the DiffID goes in ``flags`` (that c/image does not trust the store's diff-digest)."""
        data: dict[str, object] = {"compressed-size": self.size, "diff-size": self.diff_size,
                                   "compression": self.compression}
        if by_toc:
            data["toc-digest"] = self.toc_digest
            data["flags"] = {"expected-layer-diffid": self.diff_id}
        else:
            data["compressed-diff-digest"] = self.digest
            data["diff-digest"] = self.diff_id
        return json.dumps(data, sort_keys=True).encode()
