"""One cold sample: pull, create and run timed separately, as stargz-snapshotter's hello-bench does.

A :class:`System` says how to reset to cold (wipe store and caches, restart daemons) and which
commands make up each phase. :func:`measure` runs them: ``pull`` to exit, ``create`` to exit (mount
and prefetch wait; zero when the system has no separate create step), ``run`` until the workload
exits or, for servers, until the ready line appears on its output. Registry requests and the delay
proxy's byte counters are captured at the moment the workload finished, before cleanup.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from bench.workloads import Workload

PHASE_TIMEOUT = 900.0


class SampleError(RuntimeError):
    """A phase failed: the message names the system, the phase, the command and its output tail."""


@dataclass
class Phase:
    """The command of one phase. ``until`` None: to exit; else to the first line containing it."""

    argv: list[str]
    until: str | None = None
    env: dict[str, str] | None = None


class System(Protocol):
    """A way to start a container: lazypull with a snapshotter, or containerd."""

    name: str

    def reset_cold(self) -> None: ...
    def pull(self, ref: str) -> Phase | None: ...
    def create(self, ref: str, cid: str, workload: Workload) -> Phase | None: ...
    def run(self, ref: str, cid: str, workload: Workload) -> Phase: ...
    def cleanup(self, cid: str) -> None: ...
    def stats(self) -> dict[str, Any] | None: ...
    def quiesce(self) -> None: ...


@dataclass
class Sample:
    """What one cold start measured (seconds, bytes)."""

    image: str
    variant: str
    system: str
    profile: str
    index: int
    pull: float = 0.0
    create: float = 0.0
    run: float = 0.0
    ok: bool = False
    error: str | None = None
    registry: dict[str, int] = field(default_factory=dict)
    proxy: dict[str, int] = field(default_factory=dict)
    lazypull_stats: dict[str, Any] | None = None
    output_tail: str = ""
    started: str = ""

    @property
    def total(self) -> float:
        return self.pull + self.create + self.run

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["total"] = self.total
        return out


def run_phase(phase: Phase, *, timeout: float = PHASE_TIMEOUT) -> tuple[float, str, subprocess.Popen[bytes]]:
    """Run one phase; returns (seconds, output, process). A ``until`` phase returns with the process
    still running (the caller stops it); otherwise the process has exited with status 0."""
    env = dict(os.environ, **(phase.env or {}))
    t0 = time.monotonic()
    proc = subprocess.Popen(phase.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    needle = phase.until.encode() if phase.until else None
    try:
        while True:
            left = t0 + timeout - time.monotonic()
            if left <= 0:
                raise SampleError(f"{phase.argv!r} timed out after {timeout:.0f}s: {_tail(buf)}")
            if not sel.select(min(left, 1.0)):
                continue
            chunk = proc.stdout.read(65536)
            if chunk:
                buf += chunk
                if needle is not None and needle in buf:
                    return time.monotonic() - t0, buf.decode(errors="replace"), proc
                continue
            if chunk is None:
                continue
            # EOF: the process closed its output; wait for its exit.
            proc.wait(timeout=max(1.0, t0 + timeout - time.monotonic()))
            elapsed = time.monotonic() - t0
            if proc.returncode != 0 or needle is not None:
                raise SampleError(f"{phase.argv!r} exited with {proc.returncode}"
                                  f"{' before the ready line' if needle is not None else ''}: {_tail(buf)}")
            return elapsed, buf.decode(errors="replace"), proc
    except BaseException:
        stop_process(proc)
        raise
    finally:
        sel.close()


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the phase's process group (it runs in its own session), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(buf: bytes, n: int = 1500) -> str:
    return buf.decode(errors="replace")[-n:]


def measure(system: System, ref: str, workload: Workload, sample: Sample, *,
            before: Callable[[], None], after: Callable[[Sample], None]) -> Sample:
    """One cold sample of ``workload`` from ``ref`` on ``system``; ``before`` runs once the system is
    cold (reset counters), ``after`` right when the workload finished (read counters)."""
    cid = f"lpb-{workload.name}-{sample.index}-{os.getpid()}"
    sample.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    system.reset_cold()
    before()
    running: subprocess.Popen[bytes] | None = None
    output = ""
    try:
        pull = system.pull(ref)
        if pull is not None:        # None: the run phase pulls (``lazypull run`` as one command)
            sample.pull, _, _ = run_phase(pull)
        create = system.create(ref, cid, workload)
        if create is not None:
            sample.create, _, _ = run_phase(create)
        sample.run, output, running = run_phase(system.run(ref, cid, workload))
        after(sample)
        sample.lazypull_stats = system.stats()
        if workload.expect not in output:
            raise SampleError(f"{system.name}: {workload.name} did not print {workload.expect!r}: "
                              f"{output[-1500:]}")
        sample.ok = True
    except SampleError as err:
        sample.error = str(err)
    finally:
        sample.output_tail = output[-500:]
        if running is not None:
            stop_process(running)
        system.cleanup(cid)
    return sample
