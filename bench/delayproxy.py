"""A TCP proxy that adds round-trip latency without capping throughput, and counts what it carried.

Every chunk read from one side is stamped with ``now + rtt/2`` and written to the other side once
that time has come, in order, by a separate writer task, so a long transfer is delayed by half the
RTT per direction but still flows at full speed (the pipe holds one RTT of data, as a real long
link does). A new connection also pays one RTT before its first bytes go upstream, like a TCP
handshake over the modelled link. Bandwidth is shaped elsewhere (tc, see :mod:`bench.netshape`).

Runs in a background thread of the harness (:class:`DelayProxy`), or standalone:
``python bench/delayproxy.py --listen 127.0.0.1:0 --upstream 10.0.0.2:5000 --rtt-ms 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass

READ_SIZE = 256 * 1024
MAX_BUFFERED = 64 << 20      # per direction; the reader pauses beyond this (back-pressure)


@dataclass(frozen=True)
class HttpRequest:
    """A request line and its Range header, as seen in the client -> upstream stream."""

    time: float              # time.monotonic() when its head was read
    method: str
    path: str
    range: str | None


class _HttpSniffer:
    """Finds request heads in one connection's upstream bytes (skipping Content-Length bodies).

    Gives up on a connection that sends a chunked body or garbage: it only serves the records.
    """

    MAX_HEAD = 64 << 10

    def __init__(self) -> None:
        self.buf = b""
        self.skip = 0
        self.dead = False

    def feed(self, data: bytes) -> list[HttpRequest]:
        if self.dead:
            return []
        out = []
        if self.skip:
            take = min(self.skip, len(data))
            self.skip -= take
            data = data[take:]
        self.buf += data
        while not self.skip and self.buf:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > self.MAX_HEAD:
                    self.dead = True
                break
            head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
            lines = head.split("\r\n")
            parts = lines[0].split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                self.dead = True
                break
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.dead = True
            out.append(HttpRequest(time.monotonic(), parts[0], parts[1], headers.get("range")))
            length = int(headers.get("content-length", "0") or 0)
            take = min(length, len(self.buf))
            self.buf = self.buf[take:]
            self.skip = length - take
        return out


@dataclass
class Counters:
    """Bytes and connections the proxy carried since the last reset."""

    connections: int = 0
    bytes_up: int = 0          # client -> upstream (requests)
    bytes_down: int = 0        # upstream -> client (responses)

    def copy(self) -> Counters:
        return Counters(self.connections, self.bytes_up, self.bytes_down)


class _Pipe:
    """One direction of one connection: timestamped chunks released in order after ``delay``."""

    def __init__(self, delay: float, not_before: float) -> None:
        self.delay = delay
        self.not_before = not_before
        self.queue: deque[tuple[float, bytes]] = deque()
        self.buffered = 0
        self.has_data = asyncio.Event()
        self.has_room = asyncio.Event()
        self.has_room.set()
        self.eof = False

    def push(self, data: bytes) -> None:
        due = max(time.monotonic() + self.delay, self.not_before)
        self.queue.append((due, data))
        self.buffered += len(data)
        if self.buffered >= MAX_BUFFERED:
            self.has_room.clear()
        self.has_data.set()


class DelayProxy:
    """Listens on ``listen_host:listen_port`` (0: pick a free port) and forwards to the upstream."""

    def __init__(self, upstream_host: str, upstream_port: int, *, rtt: float = 0.0,
                 listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        if rtt < 0:
            raise ValueError(f"negative RTT {rtt!r}")
        self.upstream = (upstream_host, upstream_port)
        self.rtt = rtt
        self.listen_host = listen_host
        self.port = listen_port
        self._counters = Counters()
        self.requests: list[HttpRequest] = []    # every request head seen (append-only)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task[object]] = set()

    # -- public, thread-safe -------------------------------------------------------------------
    def start(self) -> DelayProxy:
        """Start the event loop thread; returns once the port is listening."""
        self._thread = threading.Thread(target=self._run, name="delayproxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"delay proxy could not listen on {self.listen_host}") from self._error
        if not self._ready.is_set():
            raise RuntimeError("delay proxy did not start within 10 s")
        return self

    def set_rtt(self, rtt: float) -> None:
        """Change the RTT for connections accepted from now on."""
        if rtt < 0:
            raise ValueError(f"negative RTT {rtt!r}")
        self.rtt = rtt

    def counters(self) -> Counters:
        with self._lock:
            return self._counters.copy()

    def reset(self) -> Counters:
        """Return the counters and zero them."""
        with self._lock:
            old, self._counters = self._counters, Counters()
            return old

    def close_connections(self) -> None:
        """Drop every open connection (between samples, so no keep-alive survives)."""
        loop = self._loop
        if loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._cancel_all(), loop)
        with contextlib.suppress(Exception):
            fut.result(10)

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- event loop side ---------------------------------------------------------------------
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.listen_host, self.port, backlog=256))
            self.port = self._server.sockets[0].getsockname()[1]
        except OSError as err:
            self._error = err
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cancel_all()
        asyncio.get_running_loop().call_soon(asyncio.get_running_loop().stop)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        accepted = time.monotonic()
        rtt = self.rtt
        with self._lock:
            self._counters.connections += 1
        u_writer: asyncio.StreamWriter | None = None
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
            # The handshake over the modelled link: the request leaves after one RTT and
            # arrives half an RTT later.
            up = _Pipe(rtt / 2, accepted + 1.5 * rtt)
            down = _Pipe(rtt / 2, 0.0)
            parts = [asyncio.ensure_future(coro) for coro in (
                self._read(c_reader, up, "up"), self._write(up, u_writer),
                self._read(u_reader, down, "down"), self._write(down, c_writer))]
            try:
                # A failing side (reset, broken pipe) ends the wait: the whole connection is dropped.
                await asyncio.wait(parts, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for part in parts:
                    part.cancel()
                await asyncio.gather(*parts, return_exceptions=True)
        except OSError:
            pass
        finally:
            for writer in (c_writer, u_writer):
                if writer is not None:
                    writer.close()
            self._tasks.discard(task)

    async def _read(self, reader: asyncio.StreamReader, pipe: _Pipe, direction: str) -> None:
        sniffer = _HttpSniffer() if direction == "up" else None
        try:
            while True:
                await pipe.has_room.wait()
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                with self._lock:
                    if sniffer is not None:
                        self.requests.extend(sniffer.feed(data))
                    if direction == "up":
                        self._counters.bytes_up += len(data)
                    else:
                        self._counters.bytes_down += len(data)
                pipe.push(data)
        except OSError:
            pass
        finally:
            pipe.eof = True
            pipe.has_data.set()

    @staticmethod
    async def _write(pipe: _Pipe, writer: asyncio.StreamWriter) -> None:
        """Release chunks when due; an OSError propagates and drops the connection."""
        while True:
            if not pipe.queue:
                if pipe.eof:
                    break
                pipe.has_data.clear()
                await pipe.has_data.wait()
                continue
            due, data = pipe.queue[0]
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            pipe.queue.popleft()
            pipe.buffered -= len(data)
            if pipe.buffered < MAX_BUFFERED:
                pipe.has_room.set()
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


def _parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_parse_addr, default=("127.0.0.1", 0))
    parser.add_argument("--upstream", type=_parse_addr, required=True)
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    args = parser.parse_args()
    proxy = DelayProxy(*args.upstream, rtt=args.rtt_ms / 1000, listen_host=args.listen[0],
                       listen_port=args.listen[1]).start()
    print(f"listening on {proxy.listen_host}:{proxy.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        print(proxy.counters(), flush=True)
        proxy.stop()


if __name__ == "__main__":
    main()
