"""The mount server's wire protocol: one JSON object per line over ``<root>/run/lazypull.sock``.

Request: ``{"op": "<name>", "args": {...}}``. Response: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"type": "<exception class>", "message": "..."}}``. One connection may carry
any number of requests, answered in order. The types below are what the results decode to.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lazypull.errors import ContainerError, ImageError, LazypullError, MountError, StoreError

SOCKET_NAME = "lazypull.sock"
MAX_LINE = 16 << 20

# Exception classes the server may name in an error reply, re-raised as such by the client.
_ERRORS: dict[str, type[LazypullError]] = {
    cls.__name__: cls for cls in (LazypullError, ImageError, StoreError, MountError, ContainerError)
}


@dataclass(frozen=True)
class LayerMount:
    """One layer of a mounted image, bottom first: where its files are, if the server serves it."""

    digest: str
    lazy: bool
    path: Path | None  # FUSE mountpoint (lower dir) when lazy; None: the runtime extracts the layer

    def to_json(self) -> dict[str, Any]:
        """Wire form."""
        return {"digest": self.digest, "lazy": self.lazy, "path": str(self.path) if self.path else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerMount:
        """Parse the wire form."""
        path = data.get("path")
        return cls(digest=str(data["digest"]), lazy=bool(data["lazy"]), path=Path(path) if path else None)


@dataclass(frozen=True)
class PulledImage:
    """What a lazy pull in the server stored and mounted."""

    name: str
    digest: str                 # of the manifest (or index) pulled
    layers: list[LayerMount]    # of this machine's platform, bottom first

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PulledImage:
        """Parse the wire form."""
        try:
            return cls(name=str(data["name"]), digest=str(data["digest"]),
                       layers=[LayerMount.from_json(item) for item in data["layers"]])
        except (KeyError, TypeError) as err:
            raise MountError(f"mount server returned a malformed pull result: {err}") from err


@dataclass(frozen=True)
class MountInfo:
    """One layer filesystem the server keeps mounted, and who holds it."""

    digest: str
    path: Path
    holders: list[str] = field(default_factory=list)
    prefetch_done: bool = False

    def to_json(self) -> dict[str, Any]:
        """Wire form."""
        data = asdict(self)
        data["path"] = str(self.path)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MountInfo:
        """Parse the wire form."""
        return cls(digest=str(data["digest"]), path=Path(data["path"]),
                   holders=[str(h) for h in data.get("holders", [])],
                   prefetch_done=bool(data.get("prefetch_done", False)))


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line; anything but a JSON object is a protocol error."""
    try:
        message = json.loads(line)
    except ValueError as err:
        raise MountError(f"mount server protocol: not JSON: {line[:80]!r}") from err
    if not isinstance(message, dict):
        raise MountError(f"mount server protocol: expected an object, got {type(message).__name__}")
    return message


def error_reply(err: BaseException) -> dict[str, Any]:
    """The reply for a failed request: named by the nearest class the client knows (a registry's
    ``NotFoundError`` becomes a ``LazypullError``); anything not lazypull's is a ``MountError``."""
    known = [c.__name__ for c in type(err).__mro__ if _ERRORS.get(c.__name__) is c]
    name = known[0] if known else "MountError"
    return {"ok": False, "error": {"type": name, "message": str(err) or repr(err)}}


def raise_error(error: dict[str, Any]) -> None:
    """Re-raise an error reply as the exception the server named."""
    cls = _ERRORS.get(str(error.get("type")), MountError)
    raise cls(str(error.get("message", "mount server error")))
