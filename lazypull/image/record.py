"""``--estargz-record-in`` files, per layer: an adapter over ``lazypull.format.record``.

The record (what ``ctr-remote image optimize --record-out`` writes) is parsed once up front so a bad
file fails before any conversion; each layer then gets the entries that name it (``manifestDigest`` of
the source manifest, ``layerIndex``) or name no layer, in record order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lazypull.format import FormatError
from lazypull.format.record import MAX_RECORD_SIZE
from lazypull.format.record import parse_record as _parse
from lazypull.image.errors import ImageError


@dataclass(frozen=True)
class Record:
    """A checked record stream."""

    text: str
    where: str = "record file"

    def files_for(self, manifest_digest: str, layer_index: int) -> list[str]:
        """The prioritised files of one layer of one source manifest."""
        try:
            return _parse(self.text, layer_index=layer_index, manifest_digest=manifest_digest,
                          where=self.where)
        except FormatError as err:
            raise ImageError(str(err)) from err

    def __bool__(self) -> bool:
        return bool(self.text.strip())


def parse_record(text: str, where: str = "record file") -> Record:
    """Check a record stream; errors name the entry number and what is wrong."""
    try:
        _parse(text, where=where)
    except FormatError as err:
        raise ImageError(str(err)) from err
    return Record(text, where)


def read_record(path: Path | str) -> Record:
    """Read and check a record file."""
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
