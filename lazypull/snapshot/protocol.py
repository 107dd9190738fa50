"""The mount server's wire protocol: one JSON object per line over ``<root>/run/lazypull.sock``.

Request: ``{"op": "<name>", "args": {...}}``. Response: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"type": "<exception class>", "message": "..."}}``. One connection may carry
any number of requests, answered in order. The types below are what the results decode to; a result
that does not have their shape is a ``MountError`` naming what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lazypull.errors import ContainerError, ImageError, LazypullError, MountError, StoreError

SOCKET_NAME = "lazypull.sock"
MAX_LINE = 16 << 20

T = TypeVar("T")
Json = dict[str, object]
"""A JSON object as this protocol writes it."""

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

    def to_json(self) -> Json:
        """Wire form."""
        return {"digest": self.digest, "lazy": self.lazy, "path": str(self.path) if self.path else None}

    @classmethod
    def from_json(cls, data: object) -> LayerMount:
        """Parse the wire form."""
        obj = _object(data, "layer")
        path = _field(obj, "path", str, "layer", required=False)
        return cls(digest=_field(obj, "digest", str, "layer"), lazy=_field(obj, "lazy", bool, "layer"),
                   path=Path(path) if path else None)


@dataclass(frozen=True)
class PulledImage:
    """What a lazy pull in the server stored and mounted."""

    name: str
    digest: str                 # of the manifest (or index) pulled
    layers: list[LayerMount]    # of this machine's platform, bottom first
    # (digest, media type) of the index (if any), manifest and config stored (``Store.metadata_of``), for
    # nerdctl's ``fetching`` lines without the client reading the store; None: not listed (all platforms)
    metadata: list[tuple[str, str]] | None = None
    # what the name meant before this pull (``{"name": ..., "record": <images.json record>}``, None: nothing),
    # put back if the client's download of a layer the server cannot serve fails
    previous: Json | None = None
    previous_known: bool = False    # False: the server did not say (an older one): the name is left alone

    @classmethod
    def from_json(cls, data: object) -> PulledImage:
        """Parse the wire form."""
        obj, what = _object(data, "pull result"), "pull result"
        listed = obj.get("metadata")
        metadata = None
        if isinstance(listed, list) and all(isinstance(m, list) and len(m) == 2
                                            and all(isinstance(x, str) for x in m) for m in listed):
            metadata = [(str(m[0]), str(m[1])) for m in listed]
        elif listed is not None:
            raise MountError(f"mount server returned a malformed {what}: 'metadata' is not a list of "
                             "[digest, media type]")
        previous = obj.get("previous")
        if previous is not None and not isinstance(previous, dict):
            raise MountError(f"mount server returned a malformed {what}: 'previous' is not an object")
        return cls(name=_field(obj, "name", str, what), digest=_field(obj, "digest", str, what),
                   layers=[LayerMount.from_json(item) for item in _field(obj, "layers", list, what)],
                   metadata=metadata, previous=previous, previous_known="previous" in obj)


@dataclass(frozen=True)
class MountInfo:
    """One layer filesystem the server keeps mounted, and who holds it."""

    digest: str
    path: Path
    holders: list[str] = field(default_factory=list)
    prefetch_done: bool = False

    def to_json(self) -> Json:
        """Wire form."""
        return {"digest": self.digest, "path": str(self.path), "holders": list(self.holders),
                "prefetch_done": self.prefetch_done}

    @classmethod
    def from_json(cls, data: object) -> MountInfo:
        """Parse the wire form."""
        obj = _object(data, "mount")
        holders = _field(obj, "holders", list, "mount", required=False) or []
        return cls(digest=_field(obj, "digest", str, "mount"), path=Path(_field(obj, "path", str, "mount")),
                   holders=[str(h) for h in holders],
                   prefetch_done=bool(_field(obj, "prefetch_done", bool, "mount", required=False)))


def _object(data: object, what: str) -> Mapping[str, object]:
    if not isinstance(data, dict):
        raise MountError(f"mount server returned a malformed {what}: {type(data).__name__}, not an object")
    return data


def _field(obj: Mapping[str, object], key: str, kind: type[T], what: str, *, required: bool = True) -> T:
    """``obj[key]`` if it is a ``kind`` (absent and not ``required``: ``kind()``), else MountError."""
    value = obj.get(key)
    if value is None and not required:
        return kind()
    if not isinstance(value, kind):
        raise MountError(f"mount server returned a malformed {what}: {key!r} is not a {kind.__name__}")
    return value


def encode(message: Mapping[str, object]) -> bytes:
    """One message as one line."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line; anything but a JSON object is a protocol error. (Its values are what JSON holds:
    each reader checks the ones it takes, hence ``Any``.)"""
    try:
        message = json.loads(line)
    except ValueError as err:
        raise MountError(f"mount server protocol: not JSON: {line[:80]!r}") from err
    if not isinstance(message, dict):
        raise MountError(f"mount server protocol: expected an object, got {type(message).__name__}")
    return message


def error_reply(err: BaseException) -> Json:
    """The reply for a failed request: named by the nearest class the client knows (a registry's
    ``NotFoundError`` becomes a ``LazypullError``); anything not lazypull's is a ``MountError``."""
    known = [c.__name__ for c in type(err).__mro__ if _ERRORS.get(c.__name__) is c]
    name = known[0] if known else "MountError"
    return {"ok": False, "error": {"type": name, "message": str(err) or repr(err)}}


def raise_error(error: object) -> None:
    """Re-raise an error reply as the exception the server named."""
    reply = error if isinstance(error, dict) else {}
    cls = _ERRORS.get(str(reply.get("type")), MountError)
    raise cls(str(reply.get("message", "mount server error")))
