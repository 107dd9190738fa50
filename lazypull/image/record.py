"""``--estargz-record-in`` files: which files a workload reads first, per layer.

The file is what ``ctr-remote image optimize --record-out`` writes: a stream of JSON objects (one per
line in practice) ``{"path": "etc/passwd", "manifestDigest": "sha256:...", "layerIndex": 0}``. An entry
with ``manifestDigest`` and ``layerIndex`` applies to that layer of that source manifest only; an entry
without them applies to every layer (what nerdctl does with all entries). Order is kept, duplicates
dropped; the files go to ``BuildOptions.prioritized_files`` (missing ones are allowed and reported).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.image.digest import check_digest
from lazypull.image.errors import ImageError

MAX_RECORD_SIZE = 64 << 20


@dataclass
class Record:
    """Prioritised paths, global and per (manifest digest, layer index)."""

    everywhere: list[str] = field(default_factory=list)
    per_layer: dict[tuple[str, int], list[str]] = field(default_factory=dict)

    def files_for(self, manifest_digest: str, layer_index: int) -> list[str]:
        """The prioritised files of one layer, in record order, without duplicates."""
        seen: set[str] = set()
        out: list[str] = []
        for path in [*self.per_layer.get((manifest_digest, layer_index), []), *self.everywhere]:
            if path not in seen:
                seen.add(path)
                out.append(path)
        return out

    def __bool__(self) -> bool:
        return bool(self.everywhere or self.per_layer)


def parse_record(text: str, where: str = "record") -> Record:
    """Parse a record stream; errors name the entry number and what is wrong."""
    decoder = json.JSONDecoder()
    record = Record()
    pos, n = 0, 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return record
        try:
            entry, pos = decoder.raw_decode(text, pos)
        except ValueError as err:
            raise ImageError(f"{where}: entry {n + 1} is not valid JSON: {err}") from err
        n += 1
        if not isinstance(entry, dict):
            raise ImageError(f"{where}: entry {n} is not a JSON object")
        path = entry.get("path")
        if not isinstance(path, str) or not path:
            raise ImageError(f"{where}: entry {n} has no \"path\" string")
        manifest = entry.get("manifestDigest")
        index = entry.get("layerIndex")
        if manifest is None and index is None:
            record.everywhere.append(path)
            continue
        check_digest(manifest, f"{where} entry {n} manifestDigest")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ImageError(f"{where}: entry {n} has an invalid layerIndex {index!r}")
        record.per_layer.setdefault((str(manifest), index), []).append(path)


def read_record(path: Path | str) -> Record:
    """Read and parse a record file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECORD_SIZE + 1)
    except OSError as err:
        raise ImageError(f"cannot read record file {path}: {err.strerror}") from err
    if len(data) > MAX_RECORD_SIZE:
        raise ImageError(f"record file {path} is larger than {MAX_RECORD_SIZE} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError as err:
        raise ImageError(f"record file {path} is not UTF-8: {err}") from err
    return parse_record(text, str(path))
