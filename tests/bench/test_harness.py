"""The lazy-start benchmark's own parts: delay proxy, shaping, access log, TOC pricing, summary, layers."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import io
import json
import socket
import socketserver
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import httpx
import pytest

from bench import ideal, images, summary
from bench.delayproxy import DelayProxy, _HttpSniffer
from bench.netshape import PROFILES, NetNamespace
from bench.sample import Phase, SampleError, run_phase
from devtools.registry import parse_access_log
from devtools.registry import summarize as summarize_log


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        n = int(self.path.strip("/"))
        body = hashlib.sha256(str(n).encode()).digest() * (n // 32 + 1)
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(body[:n])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _expected(n: int) -> bytes:
    return (hashlib.sha256(str(n).encode()).digest() * (n // 32 + 1))[:n]


def test_delay_proxy_adds_rtt_per_round_trip_and_one_for_the_handshake(origin: int) -> None:
    """The delays are at least what the link model says (a busy machine only adds to them); that they
    are not more (one RTT per kept-alive request, not per chunk) is the pipe's schedule, checked below
    on a clock of its own."""
    rtt = 0.08
    with DelayProxy("127.0.0.1", origin, rtt=rtt) as proxy, httpx.Client() as client:
        t0 = time.monotonic()
        assert client.get(f"http://127.0.0.1:{proxy.port}/10").content == _expected(10)
        first = time.monotonic() - t0
        t0 = time.monotonic()
        client.get(f"http://127.0.0.1:{proxy.port}/10")
        second = time.monotonic() - t0
        counters = proxy.counters()
    assert first >= 2 * rtt     # handshake RTT + request/response RTT
    assert second >= rtt        # request/response RTT ...
    assert counters.connections == 1   # ... on the kept-alive connection: no second handshake


class _Clock:
    """A monotonic clock the test moves (the proxy's writer 'sleeps' by moving it)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class _Sink:
    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.written: list[tuple[float, bytes]] = []

    def write(self, data: bytes) -> None:
        self.written.append((self.clock.now, data))

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def can_write_eof(self) -> bool:
        return False


def _released(monkeypatch: pytest.MonkeyPatch, delay: float, not_before: float,
              arrivals: list[float]) -> list[tuple[float, bytes]]:
    """When each chunk, arriving at the given offsets on the test clock, leaves the proxy's pipe."""
    from bench import delayproxy

    clock = _Clock()
    start = clock.now
    monkeypatch.setattr(delayproxy, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(delayproxy, "asyncio", SimpleNamespace(Event=asyncio.Event, sleep=clock.sleep))
    sink = _Sink(clock)

    async def run() -> None:
        pipe = delayproxy._Pipe(delay, start + not_before)
        for i, at in enumerate(arrivals):
            clock.now = start + at
            pipe.push(b"%d" % i)
        pipe.eof = True
        clock.now = start
        await delayproxy.DelayProxy._write(pipe, cast(asyncio.StreamWriter, sink))

    asyncio.run(run())
    return [(round(t - start, 6), data) for t, data in sink.written]


def test_delay_proxy_pipe_delays_each_chunk_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-chunk timestamps: a long body is delayed by half the RTT per direction once, so it flows at
    full speed (64 chunks of 256 KiB waiting 0.1 s each would take 6.4 s more)."""
    arrivals = [i * 0.01 for i in range(64)]
    released = _released(monkeypatch, 0.1, 0.0, arrivals)
    assert [data for _, data in released] == [b"%d" % i for i in range(64)]     # in order
    assert [t for t, _ in released] == [round(at + 0.1, 6) for at in arrivals]


def test_delay_proxy_pipe_handshake_delays_the_first_bytes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new connection's upstream pipe (not_before = 1.5 RTT): what arrives at once waits for the
    handshake, what arrives later only its half RTT."""
    rtt = 0.08
    released = _released(monkeypatch, rtt / 2, 1.5 * rtt, [0.0, 0.01, 1.0])
    assert [t for t, _ in released] == [round(1.5 * rtt, 6), round(1.5 * rtt, 6), round(1.0 + rtt / 2, 6)]


def test_delay_proxy_keeps_bytes_order_and_throughput(origin: int) -> None:
    n = 16 << 20
    with DelayProxy("127.0.0.1", origin, rtt=0.2) as proxy, httpx.Client() as client:
        t0 = time.monotonic()
        body = client.get(f"http://127.0.0.1:{proxy.port}/{n}").content
        elapsed = time.monotonic() - t0
        counters = proxy.counters()
    assert body == _expected(n)
    assert elapsed >= 0.4      # handshake + request/response (that it is no more: the pipe tests above)
    assert counters.connections == 1
    assert counters.bytes_down > n and counters.bytes_up > 0


def test_delay_proxy_records_request_lines_and_ranges(origin: int) -> None:
    with DelayProxy("127.0.0.1", origin) as proxy, httpx.Client() as client:
        client.get(f"http://127.0.0.1:{proxy.port}/100", headers={"Range": "bytes=0-9"})
        client.get(f"http://127.0.0.1:{proxy.port}/7")
        proxy.reset()
        assert proxy.counters().bytes_down == 0
    assert [(r.method, r.path, r.range) for r in proxy.requests] == [("GET", "/100", "bytes=0-9"),
                                                                      ("GET", "/7", None)]


def test_sniffer_skips_bodies_and_gives_up_on_garbage() -> None:
    s = _HttpSniffer()
    body = b"GET /fake HTTP/1.1\r\n\r\n"        # looks like a request, but is a body
    reqs = s.feed(b"PUT /up HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:5])
    reqs += s.feed(body[5:] + b"HEAD /x HTTP/1.1\r\nRange: bytes=1-2\r\n\r\n")
    assert [(r.method, r.path, r.range) for r in reqs] == [("PUT", "/up", None), ("HEAD", "/x", "bytes=1-2")]
    bad = _HttpSniffer()
    assert bad.feed(b"\x16\x03\x01 not http\r\n\r\nGET / HTTP/1.1\r\n\r\n") == []
    assert bad.dead


def test_delay_proxy_refuses_negative_rtt() -> None:
    with pytest.raises(ValueError, match="negative RTT"):
        DelayProxy("127.0.0.1", 1, rtt=-1)


def test_namespace_shaping_limits_bandwidth_and_is_removed() -> None:
    ns = NetNamespace(tag=f"t{time.monotonic_ns() % 100000}")
    try:
        ns.create()
        ns.shape(20)
        assert "tbf" in ns.qdisc_stats() and "20Mbit" in ns.qdisc_stats()
        code = ("import socket\n"
                "s = socket.socket()\n"
                f"s.bind(('{ns.ns_ip}', 0)); s.listen(1)\n"
                "print(s.getsockname()[1], flush=True)\n"
                "c, _ = s.accept(); c.sendall(b'x' * 5_000_000); c.close()")
        server = subprocess.Popen([*ns.exec_prefix(), "python3", "-c", code], stdout=subprocess.PIPE,
                                  text=True)
        assert server.stdout is not None
        port = int(server.stdout.readline())
        t0 = time.monotonic()
        got = 0
        with socket.create_connection((ns.ns_ip, port)) as sock:
            while chunk := sock.recv(1 << 16):
                got += len(chunk)
        elapsed = time.monotonic() - t0
        server.wait(10)
        assert got == 5_000_000
        assert elapsed > 5_000_000 * 8 / 20e6 * 0.8      # 2 s at 20 Mbit/s; unshaped would be ~ms
    finally:
        ns.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ns.name not in names
    links = subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    assert ns.host_if not in links


def test_profiles() -> None:
    assert PROFILES["wan"].rate_mbit == 100 and PROFILES["wan"].rtt == 0.020
    assert PROFILES["slow"].bandwidth_bytes == 60e6 / 8
    assert PROFILES["lan"].bandwidth_bytes is None


def test_access_log_parsing() -> None:
    text = (
        '10.1.2.1 - - [27/Nov/2026:19:20:00 +0000] "GET /v2/py/manifests/org HTTP/1.1" 200 1234 "" "ua"\n'
        'time="x" level=info msg="response completed"\n'
        '10.1.2.1 - - [27/Nov/2026:19:20:01 +0000] "GET /v2/py/blobs/sha256:ab HTTP/1.1" 206 500 "" "ua"\n'
        '10.1.2.1 - - [27/Nov/2026:19:20:01 +0000] "HEAD /v2/ HTTP/1.1" 200 - "" "ua"\n'
    )
    reqs = parse_access_log(text)
    assert [(r.kind, r.status, r.bytes) for r in reqs] == [("manifest", 200, 1234), ("blob", 206, 500),
                                                           ("other", 200, 0)]
    totals = summarize_log(reqs)
    assert totals["requests"] == 3 and totals["bytes"] == 1734 and totals["blob_bytes"] == 500


def test_read_layout_of_a_go_estargz_blob(vectors: Path) -> None:
    layout = ideal.read_layout(vectors / "small-prio.esgz")
    toc = json.loads((vectors / "small-prio.esgz.toc.json").read_text())
    assert layout.blob_size == 12662
    assert layout.prefetch_end == 288
    big = [c for c in layout.chunks if c.name == "bin/big"]
    assert [(c.chunk_offset, c.start) for c in big] == [(0, 500), (4096, 4624), (8192, 8748)]
    assert big[0].end == 4624 and big[1].end == 8748
    assert all(c.end <= layout.toc_offset for c in layout.chunks)
    assert layout.toc_bytes == layout.blob_size - layout.toc_offset > 51
    assert len({c.name for c in layout.chunks}) == len({e["name"] for e in toc["entries"]
                                                        if e["type"] == "reg" and e.get("offset")})
    # A range inside bin/big's second chunk prices exactly that chunk.
    hit = ideal.chunks_in_ranges(layout, ideal.parse_range("bytes=4700-4701", layout.blob_size))
    assert [(c.name, c.chunk_offset) for c in hit] == [("bin/big", 4096)]
    assert ideal.w_bytes(layout, {("bin/big", 4096)}) == 8748 - 4624
    assert ideal.w_bytes(layout, {"bin/big"}) == sum(c.size for c in big)
    assert ideal.chunks_in_ranges(layout, [(layout.toc_offset, layout.blob_size)]) == []


def test_read_layout_of_a_go_zstd_chunked_blob(vectors: Path) -> None:
    build = json.loads((vectors / "tiny.zstd.build.json").read_text())
    layout = ideal.read_layout(vectors / "tiny.zstd", build["metadata"])
    assert layout.toc_offset == 258 - 8
    assert layout.chunks and all(0 < c.start < c.end <= layout.toc_offset for c in layout.chunks)


def test_read_layout_refuses_a_plain_gzip_blob(tmp_path: Path) -> None:
    import gzip

    blob = tmp_path / "plain.gz"
    blob.write_bytes(gzip.compress(b"x" * 1000))
    with pytest.raises(ideal.TocError, match="no eStargz footer"):
        ideal.read_layout(blob)


def test_parse_range_and_t_ideal() -> None:
    assert ideal.parse_range("bytes=0-9,20-", 100) == [(0, 10), (20, 100)]
    assert ideal.parse_range(None, 100) == [(0, 100)]
    t = ideal.t_ideal(rtt=0.02, bandwidth=12.5e6, toc_bytes=500_000, w=12_000_000, t_app=0.3, k=5)
    assert t == pytest.approx(5 * 0.02 + 12.5e6 / 12.5e6 + 0.3)
    assert ideal.t_ideal(rtt=0.0, bandwidth=None, toc_bytes=1, w=1, t_app=0.25) == 0.25
    with pytest.raises(ideal.TocError):
        ideal.blob_path(Path("/x"), "sha256:../../etc")


def _tar(path: Path, entries: list[tuple[str, bytes | None, float]],
         links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mtime in entries:
            info = tarfile.TarInfo(name)
            info.mtime = int(mtime)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.LNKTYPE, target
            tar.addfile(info)
    return path


def test_diff_layer_has_changes_whiteouts_hardlink_groups_and_extras(tmp_path: Path) -> None:
    base = _tar(tmp_path / "base.tar", [("./etc", None, 1), ("./etc/keep", b"k", 1), ("./etc/gone", b"g", 1),
                                        ("./etc/old", None, 1), ("./etc/old/f", b"f", 1),
                                        ("./usr", None, 1), ("./usr/lib", None, 1), ("./usr/lib/a", b"a", 1),
                                        ("./var/log/x", b"log", 1)])
    app = _tar(tmp_path / "app.tar", [("./etc", None, 2), ("./etc/keep", b"k", 1), ("./usr", None, 1),
                                      ("./usr/lib", None, 1), ("./usr/lib/a", b"a", 1),
                                      ("./usr/bin", None, 2), ("./usr/bin/new", b"new", 2),
                                      ("./var/log/x", b"changed-log", 3)],
               links={"./usr/lib/a-link": "./usr/lib/a"})
    out = tmp_path / "diff.tar"
    images.write_diff_layer(base, app, out, {"hello.c": b"int main;"})
    with tarfile.open(out) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert "etc/keep" not in names                                    # unchanged
    assert "usr/bin/new" in names and "usr/bin" in names              # new
    assert "usr" in names                                             # unchanged parent, kept
    assert "etc/.wh.gone" in names and "etc/.wh.old" in names
    assert "etc/old/.wh.f" not in names                               # covered by the dir whiteout
    assert names["usr/lib/a-link"].islnk() and "usr/lib/a" in names   # the hardlink group, whole
    assert "var/log/x" not in names                                   # logs are not image content
    assert names["hello.c"].size == len(b"int main;")


def test_summary_percentile_aggregate_tables_and_section(tmp_path: Path) -> None:
    assert summary.percentile([5, 1, 4, 2, 3], 95) == 5
    assert summary.percentile([5, 1, 4, 2, 3], 50) == 3
    samples = []
    for i in range(5):
        for system, variant, total in (("containerd", "org", 30.0), ("lazypull-overlayfs", "org", 20.0),
                                       ("lazypull-lazy", "esgz-noopt", 2.0), ("lazypull-lazy", "esgz", 1.0)):
            samples.append({"image": "python", "profile": "wan", "system": system, "variant": variant,
                            "index": i, "ok": True, "pull": total / 2 + i * 0.01, "create": 0.0,
                            "run": total / 2, "total": total + i * 0.01, "error": None,
                            "registry": {"bytes": 1000, "requests": 4}, "proxy": {"bytes_down": 1100}})
    samples.append(dict(samples[-1], ok=False, error="boom"))
    results = {"date": "20261127T000000Z", "command": "bench/run.py", "samples": samples,
               "machine": {"cpus": 2, "cpu": "x", "memory": "1 kB", "kernel": "k", "python": "3.11",
                           "commit": "abc", "loadavg_start": [1.0, 1.0, 1.0]},
               "profiles": {"wan": {"name": "wan", "rate_mbit": 100.0, "rtt": 0.02}},
               "images": {"python": {"compressed_size": 100e6, "prioritized": ["a"],
                                     "prioritized_source": "trace",
                                     "variants": {"esgz": {"compressed_size": 110e6, "toc_bytes": 500_000,
                                                           "w_bytes": 5_000_000}}}}}
    rows = summary.aggregate(results)
    esgz = summary._find(rows, "python", "wan", "lazypull-lazy", "esgz")
    assert esgz["n"] == 5 and esgz["failed"] == 1 and esgz["errors"] == ["boom"]
    assert esgz["t_ideal"] == pytest.approx(5 * 0.02 + 5.5e6 / 12.5e6 + 10.0)
    text = summary.section(results, "r.json")
    assert text.startswith(summary.SECTION)
    assert "| lazypull eStargz (prioritized) | 5 (1 failed) |" in text
    assert "29.4x" in text and "| no |" in text    # 30.02/1.02 speed-up, but not within 1.5x of T_ideal
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Conversion\n\nkeep me\n\n## Lazy start\n\nOLD-SECTION-TEXT\n\n"
                   "## FUSE\n\nme too\n")
    summary.replace_section(doc, text)
    new = doc.read_text()
    assert "keep me" in new and "me too" in new and "OLD-SECTION-TEXT" not in new
    png = tmp_path / "chart.png"
    summary.chart(results, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_phase_until_line_and_failures() -> None:
    secs, out, proc = run_phase(Phase(["sh", "-c", "echo starting; echo ready now; sleep 30"], until="ready"))
    assert "ready now" in out and secs < 10 and proc.poll() is None
    from bench.sample import stop_process

    stop_process(proc)
    assert proc.poll() is not None
    with pytest.raises(SampleError, match="exited with 3"):
        run_phase(Phase(["sh", "-c", "echo oops; exit 3"]))
    with pytest.raises(SampleError, match="before the ready line"):
        run_phase(Phase(["sh", "-c", "echo nope"], until="ready"))
    with pytest.raises(SampleError, match="timed out"):
        run_phase(Phase(["sleep", "30"]), timeout=0.5)


def test_load_results_later_runs_replace_rows_and_other_kinds_are_skipped(tmp_path: Path) -> None:
    def sample(system: str, total: float) -> dict[str, object]:
        return {"image": "python", "profile": "wan", "system": system, "variant": "org", "index": 0,
                "ok": True, "pull": total, "create": 0.0, "run": 0.0, "total": total,
                "registry": {}, "proxy": {}}

    def run(name: str, commit: str, samples: list[dict[str, object]]) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"kind": "lazy-start", "date": name, "command": name, "samples": samples,
                                    "machine": {"commit": commit}, "images": {}, "errors": [],
                                    "profiles": {"wan": {"name": "wan", "rate_mbit": 100.0, "rtt": 0.02}}}))
        return path

    old = run("a", "c1", [sample("containerd", 30.0), sample("lazypull-overlayfs", 20.0)])
    new = run("b", "c2", [sample("containerd", 25.0)])
    other = tmp_path / "convert.json"
    other.write_text(json.dumps({"kind": "convert"}))
    merged = summary.load_results([old, other, new])
    got = sorted((s["system"], s["total"], s["commit"]) for s in merged["samples"])
    assert got == [("containerd", 25.0, "c2"), ("lazypull-overlayfs", 20.0, "c1")]
    with pytest.raises(ValueError, match="no lazy-start results"):
        summary.load_results([other])
