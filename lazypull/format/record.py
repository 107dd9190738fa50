"""ctr-remote's record file (``--estargz-record-in``): the files a workload read first.

A stream of JSON objects, in practice one per line, as ``ctr-remote image optimize --record-out``
writes them: ``{"path": "etc/passwd", "manifestDigest": "sha256:...", "layerIndex": 0}``. Only ``path`` is
required. When a layer index (or manifest digest) is asked for, objects that name a different one are
skipped; objects without them apply everywhere. Order is kept and duplicates dropped.
"""

from __future__ import annotations

import json

from lazypull.format.errors import FormatError

MAX_RECORD_SIZE = 64 << 20


def parse_record(text: str | bytes, *, layer_index: int | None = None, manifest_digest: str | None = None,
                 where: str = "record file") -> list[str]:
    """The prioritised paths of a record stream; errors name the entry number and what is wrong."""
    if isinstance(text, bytes):
        if len(text) > MAX_RECORD_SIZE:
            raise FormatError(f"{where} is larger than {MAX_RECORD_SIZE} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise FormatError(f"{where} is not UTF-8: {err}") from err
    decoder = json.JSONDecoder()
    out: list[str] = []
    seen: set[str] = set()
    pos = n = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return out
        try:
            entry, pos = decoder.raw_decode(text, pos)
        except ValueError as err:
            raise FormatError(f"{where}: entry {n + 1} is not valid JSON: {err}") from err
        n += 1
        if not isinstance(entry, dict):
            raise FormatError(f"{where}: entry {n} is not a JSON object")
        path = entry.get("path")
        if not isinstance(path, str) or not path:
            raise FormatError(f"{where}: entry {n} has no \"path\" string")
        index = entry.get("layerIndex")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            raise FormatError(f"{where}: entry {n} has a non-integer layerIndex {index!r}")
        digest = entry.get("manifestDigest")
        if digest is not None and not isinstance(digest, str):
            raise FormatError(f"{where}: entry {n} has a non-string manifestDigest")
        if layer_index is not None and index is not None and index != layer_index:
            continue
        if manifest_digest is not None and digest is not None and digest != manifest_digest:
            continue
        if path not in seen:
            seen.add(path)
            out.append(path)
