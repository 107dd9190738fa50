"""sha256 digests in OCI form (``sha256:<64 lowercase hex>``), checked strictly.

Digests name files in the store and in OCI layouts, so a malformed one (``sha256:../../x``) must never
reach a path join: :func:`check_digest` is the gate.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from lazypull.errors import ImageError

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def check_digest(digest: object, what: str = "digest") -> str:
    """Return ``digest`` if it is a well-formed sha256 digest, else raise ImageError naming ``what``."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ImageError(f"invalid {what} {digest!r}: expected sha256:<64 lowercase hex digits>")
    return digest


def is_digest(digest: object) -> bool:
    """True for a well-formed sha256 digest."""
    return isinstance(digest, str) and _DIGEST_RE.fullmatch(digest) is not None


def hex_of(digest: str) -> str:
    """The hex part of a checked digest."""
    return check_digest(digest)[len("sha256:"):]


def sha256_bytes(data: bytes) -> str:
    """Digest of a byte string."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_chunks(chunks: Iterable[bytes]) -> tuple[str, int]:
    """Digest and total length of a sequence of byte chunks."""
    h = hashlib.sha256()
    n = 0
    for chunk in chunks:
        h.update(chunk)
        n += len(chunk)
    return "sha256:" + h.hexdigest(), n


def check_diff_id(label: str, actual: str, expected: str) -> None:
    """Refuse a layer whose uncompressed stream (``actual``, hashed to its end) is not the one the image
    config names: the one text of every path that hashes a whole layer (pulls, both extractions)."""
    if actual != expected:
        from lazypull.image.errors import DigestMismatchError

        raise DigestMismatchError(f"{label}: uncompressed content has digest {actual}, "
                                  f"config says diff_id {expected}")
