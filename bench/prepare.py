"""Getting each benchmark image into the registry in every variant, and tracing what its workload reads.

Variants, as in stargz-snapshotter's benchmark: ``org`` (legacy gzip, pushed from the cached OCI
layout with skopeo), ``esgz-noopt`` (eStargz, ``.no.prefetch.landmark``), ``esgz`` (eStargz with the
workload's files prioritized) and ``zstdchunked`` (zstd:chunked, same prioritized files). The
converted ones are made by ``lazypull image convert`` and pushed by ``lazypull push``.

The trace: one lazy run of ``esgz-noopt`` with prefetch, background fetch and range merging off,
through the delay proxy (which records each request's Range header). The ranges, mapped onto the
layer TOCs, give the chunks the workload read, in first-read order: the prioritized file list and W.
Registry storage persists under the cache dir, so all of this happens once per image build.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from bench import ideal, images
from bench.delayproxy import DelayProxy
from bench.netshape import NetNamespace
from bench.sample import Phase, run_phase, stop_process
from bench.systems import LAZYPULL, stop_lazypull
from bench.workloads import Workload
from devtools.registry import RegistryServer, bench_registry

VARIANTS = ("org", "esgz-noopt", "esgz", "zstdchunked")
TRACE_CONFIG = "prefetch = false\nbackground_fetch = false\nmerge_gap = 0\n"


class PrepareError(RuntimeError):
    """An image variant could not be built, converted, pushed or traced (the message says which)."""


@dataclass
class Prepared:
    """What the benchmark knows about one image, for the results and for T_ideal."""

    workload: str
    layout: str
    compressed_size: int
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)   # tag -> manifest, layers, toc, W
    prioritized: list[str] = field(default_factory=list)
    prioritized_source: str = ""
    trace_chunks: list[list[Any]] = field(default_factory=list)          # [name, chunk_offset] read
    notes: list[str] = field(default_factory=list)


def _lp(root: Path, *args: str, timeout: float = 1800) -> str:
    cmd = [*LAZYPULL, "--root", str(root), "--insecure-registry", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise PrepareError(f"{' '.join(cmd[2:])} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout)[-1500:]}")
    return proc.stdout


def get_manifest(registry: str, repo: str, tag: str) -> tuple[str, dict[str, Any]]:
    """Digest and JSON of an image manifest (plain HTTP, direct to the registry)."""
    r = httpx.get(f"http://{registry}/v2/{repo}/manifests/{tag}",
                  headers={"Accept": images.MANIFEST_ACCEPT}, timeout=60)
    if r.status_code != 200:
        raise PrepareError(f"manifest {registry}/{repo}:{tag}: HTTP {r.status_code}")
    return r.headers.get("docker-content-digest", ""), r.json()


def convert_and_push(setup_root: Path, direct: str, workload: Workload, tag: str,
                     record: Path | None) -> str | None:
    """``lazypull image convert`` org -> tag, then ``lazypull push`` (to the registry, directly).

    Returns a note when the record could not be used."""
    src, dst = f"{direct}/{workload.name}:org", f"{direct}/{workload.name}:{tag}"
    fmt = ["--estargz"] if tag.startswith("esgz") else ["--zstdchunked"]
    flag = "--estargz-record-in" if tag.startswith("esgz") else "--zstdchunked-record-in"
    rec = [flag, str(record)] if record is not None else []
    note = None
    try:
        _lp(setup_root, "image", "convert", "--oci", *fmt, *rec, src, dst)
    except PrepareError as err:
        if not rec or "needs --estargz" not in str(err):
            raise
        note = (f"{tag}: converted without prioritized files (`lazypull image convert` refused the "
                f"record: {str(err).rsplit(':', 1)[-1].strip()})")
        _lp(setup_root, "image", "convert", "--oci", *fmt, src, dst)
    _lp(setup_root, "push", dst)
    return note


def write_record(path: Path, files: list[str]) -> Path:
    """The prioritized-file list in the ``ctr-remote optimize --record-out`` form: JSON lines of
    ``{"path": "usr/bin/python3.11"}``, which ``--estargz-record-in`` reads."""
    path.write_text("".join(json.dumps({"path": f}) + "\n" for f in files))
    return path


def trace(workload: Workload, direct_layers: list[dict[str, Any]], storage: Path, proxy: DelayProxy,
          ref_host: str, workdir: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """One lazy run of esgz-noopt with everything but on-demand reads off; returns (files in first-read
    order, (file, chunk offset) pairs read)."""
    root = workdir / "trace-root"
    stop_lazypull(root)
    root.mkdir(parents=True)
    (root / "config.toml").write_text(TRACE_CONFIG)
    ref = f"{ref_host}/{workload.name}:esgz-noopt"
    proxy.set_rtt(0.0)
    proxy.close_connections()
    first = len(proxy.requests)
    running = None
    try:
        run_phase(Phase([*LAZYPULL, "--root", str(root), "--insecure-registry", "pull",
                         "--snapshotter=stargz", ref]))
        _, output, running = run_phase(Phase(
            [*LAZYPULL, "--root", str(root), "--insecure-registry", "run", "--rm", "--snapshotter=stargz",
             ref, *workload.command], until=workload.ready))
        if workload.expect not in output:
            raise PrepareError(f"trace run of {workload.name} did not print {workload.expect!r}: "
                               f"{output[-800:]}")
        time.sleep(0.2)
        reqs = proxy.requests[first:]
    finally:
        if running is not None:
            stop_process(running)
        stop_lazypull(root)
    files: dict[str, None] = {}
    pairs: dict[tuple[str, int], None] = {}
    layouts = {ly["digest"]: ideal.read_layout(ideal.blob_path(storage, ly["digest"]), ly.get("annotations"))
               for ly in direct_layers}
    for req in reqs:
        if req.method != "GET" or "/blobs/sha256:" not in req.path:
            continue
        digest = req.path.rsplit("/", 1)[-1].split("?")[0]
        layout = layouts.get(digest)
        if layout is None:
            continue
        for c in ideal.chunks_in_ranges(layout, ideal.parse_range(req.range, layout.blob_size)):
            files.setdefault(c.name)
            pairs.setdefault((c.name, c.chunk_offset))
    return list(files), list(pairs)


def variant_info(direct: str, storage: Path, workload: Workload, tag: str,
                 pairs: set[tuple[str, int]]) -> dict[str, Any]:
    """Manifest digest, layer sizes, and for lazy variants the TOC bytes and W (bytes of the traced
    chunks in this variant's own layout)."""
    digest, manifest = get_manifest(direct, workload.name, tag)
    layers = manifest.get("layers", [])
    info: dict[str, Any] = {"manifest": digest, "compressed_size": sum(int(ly["size"]) for ly in layers),
                            "layers": [{"digest": ly["digest"], "size": ly["size"],
                                        "mediaType": ly.get("mediaType")} for ly in layers]}
    if tag != "org":
        toc = w = prefetch = 0
        for ly in layers:
            layout = ideal.read_layout(ideal.blob_path(storage, ly["digest"]), ly.get("annotations"))
            toc += layout.toc_bytes
            w += ideal.w_bytes(layout, pairs)
            prefetch += layout.prefetch_end or 0
        info.update(toc_bytes=toc, w_bytes=w, prefetch_bytes=prefetch)
    return info


class Served(NamedTuple):
    """The benchmark's registry in its own network namespace, and the delay proxy in front of it."""

    ns: NetNamespace
    registry: RegistryServer
    proxy: DelayProxy
    ref_host: str  # what image references name: the proxy, so every pull crosses the shaped link


def serve(stack: contextlib.ExitStack[Any], workdir: Path, cache_dir: Path) -> Served:
    """Start the namespace, the registry (storage kept under ``cache_dir``) and the proxy; ``stack``
    stops them, and removes ``workdir`` last. The link is shaped later, after the images are pushed."""
    stack.callback(lambda: subprocess.run(["rm", "-rf", str(workdir)], check=False))
    ns = NetNamespace()
    stack.callback(ns.close)
    ns.create()
    registry = bench_registry(workdir, cache_dir / "registry", listen_host=ns.ns_ip,
                              exec_prefix=ns.exec_prefix())
    stack.callback(registry.stop)
    registry.start()
    proxy = DelayProxy(ns.ns_ip, registry.port)
    stack.callback(proxy.stop)
    proxy.start()
    return Served(ns, registry, proxy, f"127.0.0.1:{proxy.port}")


def prepare(workload: Workload, *, cache_dir: Path, registry: RegistryServer, proxy: DelayProxy,
            ref_host: str, workdir: Path, variants: tuple[str, ...] = VARIANTS,
            log: Any = print) -> Prepared:
    """Build, push, convert and trace one image (each step skipped when its result is cached)."""
    direct, storage = registry.host, registry.storage_dir
    layout = images.build_layout(workload, cache_dir)
    info = images.layout_info(layout)
    prep = Prepared(workload.name, str(layout), int(str(info["compressed_size"])))
    if not images.manifest_exists(direct, workload.name, "org") or \
            get_manifest(direct, workload.name, "org")[0] != info["manifest"]:
        log(f"  pushing {workload.name}:org ({prep.compressed_size / 1e6:.0f} MB)")
        images.push_layout(layout, direct, workload.name, "org")
    setup_root = workdir / "setup-root"
    state_file = cache_dir / "prepared" / f"{workload.name}-{str(info['manifest'])[7:19]}.json"
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() else {}
    try:
        if "esgz-noopt" in variants or "esgz" in variants or "zstdchunked" in variants:
            if not images.manifest_exists(direct, workload.name, "esgz-noopt") or "noopt" not in state:
                log(f"  converting {workload.name}:esgz-noopt")
                convert_and_push(setup_root, direct, workload, "esgz-noopt", None)
                state["noopt"] = get_manifest(direct, workload.name, "esgz-noopt")[0]
            if "trace" not in state:
                log(f"  tracing what {workload.name} reads (lazy run, on-demand only)")
                _, noopt = get_manifest(direct, workload.name, "esgz-noopt")
                files, pairs = trace(workload, noopt["layers"], storage, proxy, ref_host, workdir)
                state["trace"] = {"files": files, "pairs": pairs}
            files = state["trace"]["files"]
            prep.prioritized, prep.prioritized_source = files, "trace of an on-demand lazy run"
            if not files:
                prep.prioritized, prep.prioritized_source = list(workload.prioritized_hint), "hand list"
            prep.trace_chunks = [list(p) for p in state["trace"]["pairs"]]
            record = write_record(workdir / f"{workload.name}.record.json", prep.prioritized)
            for tag in ("esgz", "zstdchunked"):
                if tag in variants and (not images.manifest_exists(direct, workload.name, tag)
                                        or tag not in state):
                    log(f"  converting {workload.name}:{tag} ({len(prep.prioritized)} prioritized files)")
                    state[f"{tag}-note"] = convert_and_push(setup_root, direct, workload, tag, record)
                    state[tag] = get_manifest(direct, workload.name, tag)[0]
                if state.get(f"{tag}-note"):
                    prep.notes.append(state[f"{tag}-note"])
        traced = {(str(a), int(b)) for a, b in prep.trace_chunks}
        for tag in variants:
            prep.variants[tag] = variant_info(direct, storage, workload, tag, traced)
    finally:
        stop_lazypull(setup_root)
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state))
    return prep


def clear_cache(cache_dir: Path) -> None:
    """Forget pushed variants and traces (the rootfs tars and layouts stay)."""
    shutil.rmtree(cache_dir / "prepared", ignore_errors=True)
    shutil.rmtree(cache_dir / "registry", ignore_errors=True)
