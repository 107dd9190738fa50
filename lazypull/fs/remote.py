"""The lazy layers' blob source: byte ranges of one layer blob with the read path's only retry loop.

``RangeSource`` is the one I/O seam under it: ``read_ranges([(offset, length), ...], deadline)`` answers
several disjoint ranges at once, tried once (``lazypull.registry.RegistryBlobSource``: one multi-range
HTTP request, no retries in the client; :class:`FileRangeSource`: a local file). ``RemoteBlob`` is the
blob source the lazy layer reads through (``format.BlobSource`` for the TOC, multi-range fetches for
chunks): the only retry loop of a lazy read (exponential backoff until a deadline, then
:class:`FetchError`, never a hang), for failed requests and for answers that do not verify alike, its
counters, the record of on-demand activity that background fetching yields to, and connection warming.

Each registry request has its own deadline and minimum rate (``lazypull.registry.NetLimits``), so a
stuck one is abandoned and the next try goes out on a new connection; a registry known to be down fails
at once (``RegistryUnavailableError``), which is not retried.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from lazypull.errors import LazypullError, MountError
from lazypull.format.source import FileSource
from lazypull.fs.config import FsConfig
from lazypull.fs.stats import LayerStats

if TYPE_CHECKING:
    from lazypull.fs.layer.activity import Activity

log = logging.getLogger(__name__)


class FetchError(MountError):
    """The blob's bytes could not be fetched before the deadline."""


class BlobCorruptError(FetchError):
    """The blob itself is corrupt: the same wrong bytes came twice for a range; not retried."""

    temporary = False


#: Bytes a re-asked range is grown by, so that two answers come from requests of different shapes (two
#: and not one: a corruption at every k-th byte from a third of the body on must not line up again).
RESHAPE = 2


def _answer_digest(r: tuple[int, int], asked: Sequence[tuple[int, int]], datas: Sequence[bytes]
                   ) -> tuple[tuple[int, int], bytes] | None:
    """The asked range that holds range ``r`` in an answer to ``asked`` (the shape ``r`` was asked in)
    and the sha256 of ``r``'s bytes in it; None if no asked range holds it."""
    off, length = r
    for (start, size), data in zip(asked, datas, strict=True):
        if start <= off and off + length <= start + size:
            return (start, size), hashlib.sha256(data[off - start : off - start + length]).digest()
    return None


class RangeSource(Protocol):
    """Random access to a compressed blob, several ranges per call, each call tried once."""

    @property
    def size(self) -> int: ...

    def read_ranges(self, ranges: Sequence[tuple[int, int]], deadline: float | None = None) -> list[bytes]:
        """Bytes of each ``(offset, length)``; no retries, nothing outliving ``deadline`` (monotonic)."""
        ...

    def describe(self) -> str: ...


@runtime_checkable
class WarmableSource(Protocol):
    """A source whose connections can be opened ahead of a burst of requests (a registry's)."""

    def warm(self, connections: int, *, interval: float, if_idle: float | None = None) -> bool: ...


#: ``accept(ranges, answers)`` takes what verifies of an answer and returns the ranges to ask again
Accept = Callable[[list[tuple[int, int]], list[bytes]], Sequence[tuple[int, int]]]

#: A registry client's connections are warmed at most once this often (the layers of an image share them).
WARM_INTERVAL = 2.0
#: A client idle this long has likely lost its keep-alive connections (the registry client keeps them
#: 30 s): the next miss warms new ones beside its own request.
REWARM_IDLE = 25.0


class FileRangeSource(FileSource):
    """A blob in a local file (the content store, or a test): ``format.FileSource`` with range reads."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.path = path

    def read_ranges(self, ranges: Sequence[tuple[int, int]], deadline: float | None = None) -> list[bytes]:
        return [self.read_at(offset, length) for offset, length in ranges]

    def describe(self) -> str:
        return str(self.path)


class RemoteBlob:
    """Retrying, counted range reads of one blob; thread-safe, holds no lock while fetching.

    ``activity``: the server's foreground work (``fs.layer.activity``, shared by its layers), which this
    layer's on-demand misses are part of: ``demand_begin``/``demand_end`` count them in both.
    """

    def __init__(self, source: RangeSource, stats: LayerStats, config: FsConfig, *,
                 activity: Activity | None = None) -> None:
        self.source = source
        self.stats = stats
        self.config = config
        self.activity = activity
        self._demand_lock = threading.Lock()     # this layer's misses, which its background fetch yields to
        self._demand_active = 0
        self._demand_last = 0.0
        self.closed = threading.Event()

    @property
    def size(self) -> int:
        return self.source.size

    # -- on-demand activity, which background fetching yields to --

    def demand_begin(self) -> None:
        """An on-demand miss starts (counted for this layer and in the server's activity)."""
        with self._demand_lock:
            self._demand_active += 1
        if self.activity is not None:
            self.activity.begin()

    def demand_end(self) -> None:
        with self._demand_lock:
            self._demand_active -= 1
            self._demand_last = time.monotonic()
        if self.activity is not None:
            self.activity.end()

    def demand_quiet(self) -> bool:
        """True when no on-demand miss is being served and none was for ``background_pause`` s."""
        with self._demand_lock:
            return (self._demand_active == 0
                    and time.monotonic() - self._demand_last >= self.config.background_pause)

    # -- fetching --

    def fetch(self, ranges: Sequence[tuple[int, int]], deadline: float) -> list[bytes]:
        """Bytes of each range (clipped to the blob), retrying failures until ``deadline`` (monotonic)."""
        out: list[bytes] = []

        def keep(asked: list[tuple[int, int]], datas: list[bytes]) -> list[tuple[int, int]]:
            out[:] = datas
            return []

        self.fetch_verified(ranges, deadline, keep)
        return out

    def fetch_verified(self, ranges: Sequence[tuple[int, int]], deadline: float, accept: Accept) -> None:
        """Fetch ``ranges`` (clipped to the blob) and hand each answer to ``accept``, which keeps what
        verifies and returns the ranges to ask again; failed requests and answers that did not verify
        are retried alike, with backoff, until ``deadline`` (monotonic). The read path's only retry loop.
        """
        pending = [(off, max(0, min(length, self.size - off))) for off, length in ranges]
        for off, length in pending:
            if off < 0 or off > self.size:
                raise FetchError(f"range {off}+{length} outside blob {self.source.describe()} "
                                 f"of {self.size} bytes")
        delay = self.config.retry_initial
        attempt = 0
        # range -> (the range it was asked as, sha256 of its bytes) in the last answer that did not verify
        failed: dict[tuple[int, int], tuple[tuple[int, int], bytes]] = {}
        reshape = False
        while True:
            attempt += 1
            cause: BaseException | None = None
            asked = self._reshaped(pending) if reshape else pending
            try:
                datas = self._read(asked, deadline)
            except Exception as err:
                # ours, the OS's, and the HTTP library's own errors if the client let one through
                if not isinstance(err, (LazypullError, OSError, EOFError, ValueError)) and \
                        type(err).__module__.split(".")[0] not in ("httpx", "httpcore", "h11", "ssl"):
                    raise
                self.stats.add(requests=1)
                if getattr(err, "temporary", True) is False:    # a registry known down, a 404: no retry
                    raise FetchError(f"fetching {len(pending)} range(s) of {self.source.describe()} "
                                     f"failed: {err}") from err
                cause, problem = err, str(err)
            else:
                self.stats.add(requests=1, bytes_fetched=sum(len(d) for d in datas))
                pending = list(accept(asked, datas))
                if not pending:
                    return
                now = {r: h for r in pending if (h := _answer_digest(r, asked, datas)) is not None}
                for (off, length), (shape, digest) in now.items():
                    before = failed.get((off, length))
                    # the same bytes twice prove the blob corrupt only from requests of different shapes:
                    # a range ``_reshaped`` could not grow (the whole blob) was asked the same way twice
                    if before is not None and before[1] == digest and before[0] != shape:
                        raise BlobCorruptError(
                            f"blob {self.source.describe()} is corrupt at {off}+{length}: two answers to "
                            f"requests of different shapes were the same bytes and did not verify")
                failed = now
                reshape = not reshape       # the next answer comes from a request of another shape
                problem = f"{len(pending)} range(s) did not verify"
            if self.closed.is_set() or time.monotonic() + delay >= deadline:
                raise FetchError(f"fetching {len(pending)} range(s) of {self.source.describe()} "
                                 f"failed after {attempt} attempt(s): {problem}") from cause
            self.stats.add(retries=1)
            log.info("fetch of %s failed (%s); retrying in %.2fs", self.source.describe(), problem, delay)
            if self.closed.wait(delay):
                raise FetchError(f"layer {self.source.describe()} closed during fetch") from cause
            delay = min(delay * 2, self.config.retry_max)

    def _reshaped(self, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """``ranges``, each grown by ``RESHAPE`` bytes before (or else after) it where that overlaps no
        neighbour: the same bytes asked in another request shape. A fault that corrupts an answer
        where it is (a proxy flipping bytes at body offsets) then corrupts the range differently,
        while a blob that is corrupt gives the same bytes whatever the shape. A range with no room on
        either side (the whole blob) keeps its shape: its answers prove nothing (``fetch_verified``)."""
        out: list[tuple[int, int]] = []
        for i, (off, length) in enumerate(ranges):
            prev_end = ranges[i - 1][0] + ranges[i - 1][1] if i else 0
            next_start = ranges[i + 1][0] if i + 1 < len(ranges) else self.size
            if off - RESHAPE >= prev_end:
                out.append((off - RESHAPE, length + RESHAPE))
            elif off + length + RESHAPE <= next_start:
                out.append((off, length + RESHAPE))
            else:
                out.append((off, length))
        return out

    def _read(self, ranges: list[tuple[int, int]], deadline: float) -> list[bytes]:
        """One request for ``ranges``, its answer checked for shape (count and lengths)."""
        datas = self.source.read_ranges(ranges, deadline)
        if len(datas) != len(ranges):
            raise FetchError(f"asked for {len(ranges)} ranges, got {len(datas)}")
        for (off, length), data in zip(ranges, datas, strict=True):
            if len(data) != length:
                raise FetchError(f"range {off}+{length} of {self.source.describe()} "
                                 f"returned {len(data)} bytes")
        return datas

    def warm(self, connections: int, *, if_idle: float | None = None) -> None:
        """Open connections ahead of concurrent fetches, when the source has any (registries): at most
        once per ``WARM_INTERVAL`` for the sources sharing a client; ``if_idle``: only when it sent
        nothing for that long."""
        if isinstance(self.source, WarmableSource) and connections > 0:
            self.source.warm(connections, interval=WARM_INTERVAL, if_idle=if_idle)

    def read_at(self, offset: int, length: int) -> bytes:
        """``BlobSource.read_at`` for the format reader (TOC and footer), with the read deadline."""
        return self.fetch([(offset, length)], time.monotonic() + self.config.read_deadline)[0]


class RecordingSource:
    """A ``BlobSource`` over a :class:`RemoteBlob` that keeps what it read (footer, TOC) in a file.

    The format reader reads the same few ranges every time it opens a layer, so after a restart they
    are served from the file and mounting needs no request. The TOC is verified against its digest
    either way.
    """

    def __init__(self, remote: RemoteBlob, record: Path | None) -> None:
        self.remote = remote
        self.record = record
        self.pieces: list[tuple[int, bytes]] = []
        self._saved: list[tuple[int, bytes]] = _load_record(record) if record else []

    @property
    def size(self) -> int:
        return self.remote.size

    def read_at(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        for start, data in self._saved + self.pieces:
            if start <= offset and offset + length <= start + len(data):
                return data[offset - start : offset - start + length]
        data = self.remote.read_at(offset, length)
        self.pieces.append((offset, data))
        return data

    def tail(self, length: int) -> bytes | None:
        """The last ``length`` bytes of the blob if they were read already."""
        offset = self.size - length
        for start, data in self._saved + self.pieces:
            if start <= offset and start + len(data) >= self.size:
                return data[offset - start :]
        return None

    def forget_saved(self) -> None:
        """Stop trusting the record (it did not verify)."""
        self._saved = []

    def save(self, extra: dict[str, bytes] | None = None) -> None:
        """Write what was read, plus named extras (an external TOC blob), to the record file."""
        if self.record is None:
            return
        pieces = self._saved + self.pieces
        out = bytearray()
        for start, data in pieces:
            out += start.to_bytes(8, "little") + len(data).to_bytes(8, "little") + data
        for name, data in (extra or {}).items():
            key = name.encode()
            out += (1 << 63 | len(key)).to_bytes(8, "little") + len(data).to_bytes(8, "little") + key + data
        tmp = self.record.with_suffix(".tmp")
        try:
            tmp.write_bytes(bytes(out))
            os.replace(tmp, self.record)
        except OSError as err:
            tmp.unlink(missing_ok=True)       # a full disk leaves no half-written record behind
            raise OSError(err.errno, f"writing {self.record}: {err.strerror}") from err

    def extra(self, name: str) -> bytes | None:
        """A named extra saved with the record."""
        return _load_extras(self.record).get(name) if self.record else None


def _parse_record(path: Path) -> tuple[list[tuple[int, bytes]], dict[str, bytes]]:
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return [], {}
    pieces: list[tuple[int, bytes]] = []
    extras: dict[str, bytes] = {}
    pos = 0
    while pos + 16 <= len(blob):
        head = int.from_bytes(blob[pos : pos + 8], "little")
        length = int.from_bytes(blob[pos + 8 : pos + 16], "little")
        pos += 16
        if head >> 63:
            key_len = head & ((1 << 63) - 1)
            key = blob[pos : pos + key_len].decode(errors="replace")
            pos += key_len
            extras[key] = blob[pos : pos + length]
        else:
            pieces.append((head, blob[pos : pos + length]))
        pos += length
    return pieces, extras


def _load_record(path: Path) -> list[tuple[int, bytes]]:
    return _parse_record(path)[0]


def _load_extras(path: Path) -> dict[str, bytes]:
    return _parse_record(path)[1]
