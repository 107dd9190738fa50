"""Tables and the chart from a lazy-start results file: the "## Lazy start" section of docs/benchmarks.md
(only that section is rewritten) and a stacked pull/create/run bar chart like stargz-snapshotter's.

    .venv/bin/python -m bench.summary bench/results/lazy-start-<time>.json [more runs ...]

Statistics: median and p95 (nearest rank: with 5 samples, the slowest) of successful samples.
Hand-written analysis in bench/analysis.md is copied into the section as is.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import ideal

SECTION = "## Lazy start"
ROW_LABELS = {("containerd", "org"): "containerd (full pull)",
              ("lazypull-overlayfs", "org"): "lazypull full pull",
              ("lazypull-lazy", "esgz-noopt"): "lazypull eStargz (no prefetch)",
              ("lazypull-lazy", "esgz"): "lazypull eStargz (prioritized)",
              ("lazypull-lazy", "zstdchunked"): "lazypull zstd:chunked",
              ("lazypull-lazy-nobg", "esgz"): "lazypull eStargz (prioritized, background fetch off)",
              ("lazypull-lazy-learned", "esgz-noopt"): "lazypull eStargz (no prefetch), learned record kept",
              ("lazypull-lazy-repull", "esgz-noopt"):
                  "lazypull eStargz (no prefetch), image removed and pulled again",
              ("lazypull-lazy-repull-wait", "esgz-noopt"):
                  "lazypull eStargz (no prefetch), removed and pulled again, create waits for the prefetch",
              ("lazypull-lazy-evicted", "esgz-noopt"):
                  "lazypull eStargz (no prefetch), learned and TOC records kept",
              ("lazypull-lazy-nolearn", "esgz-noopt"):
                  "lazypull eStargz (no prefetch), learning and passwd/group fetch off",
              ("lazypull-lazy-readahead", "esgz-noopt"): "lazypull eStargz (no prefetch), read-ahead 512 KiB"}
SHORT_LABELS = {("containerd", "org"): "containerd", ("lazypull-overlayfs", "org"): "lp-full",
                ("lazypull-lazy", "esgz-noopt"): "esgz-noopt", ("lazypull-lazy", "esgz"): "esgz",
                ("lazypull-lazy", "zstdchunked"): "zstdchunked", ("lazypull-lazy-nobg", "esgz"): "esgz-nobg",
                ("lazypull-lazy-learned", "esgz-noopt"): "noopt-learned",
                ("lazypull-lazy-repull", "esgz-noopt"): "noopt-repull",
                ("lazypull-lazy-repull-wait", "esgz-noopt"): "noopt-repull-wait",
                ("lazypull-lazy-evicted", "esgz-noopt"): "noopt-evicted",
                ("lazypull-lazy-nolearn", "esgz-noopt"): "noopt-nolearn",
                ("lazypull-lazy-readahead", "esgz-noopt"): "noopt-readahead"}
ANALYSIS = Path(__file__).with_name("analysis.md")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


Column = tuple[str, Callable[[list[dict[str, Any]]], str]]


def seconds(key: str) -> Callable[[list[dict[str, Any]]], str]:
    """A table cell: the median (slowest) of ``key`` over the samples, in seconds."""
    def cell(rows: list[dict[str, Any]]) -> str:
        values = [r[key] for r in rows]
        return f"{statistics.median(values):.2f} ({max(values):.2f})"
    return cell


def megabytes(rows: list[dict[str, Any]]) -> str:
    """A table cell: the median bytes the registry sent, in MB."""
    return f"{statistics.median(r['bytes_fetched'] for r in rows) / 1e6:.1f}"


def row_table(results: dict[str, Any], columns: Sequence[Column]) -> str:
    """Markdown, one line per (image, system:variant) of a comparison benchmark's samples (bench/build.py,
    cri.py, podman.py): the given ``(header, cell)`` columns, then the sample count."""
    lines = ["| image | system | " + " | ".join(h for h, _ in columns) + " | n |",
             "|---|---|" + "---|" * len(columns) + "---|"]
    keys = sorted({(s["image"], s["system"], s["variant"]) for s in results["samples"]})
    for image, system, variant in keys:
        rows = [s for s in results["samples"]
                if (s["image"], s["system"], s["variant"]) == (image, system, variant)]
        lines.append(f"| {image} | {system}:{variant} | " + " | ".join(cell(rows) for _, cell in columns)
                     + f" | {len(rows)} |")
    return "\n".join(lines)


def aggregate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (image, profile, system, variant): medians, p95, counts, bytes, T_ideal."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for s in results["samples"]:
        groups.setdefault((s["image"], s["profile"], s["system"], s["variant"]), []).append(s)
    rows = []
    for (image, profile, system, variant), samples in groups.items():
        ok = [s for s in samples if s["ok"]]
        row: dict[str, Any] = {"image": image, "profile": profile, "system": system, "variant": variant,
                               "n": len(ok), "failed": len(samples) - len(ok),
                               "errors": sorted({(s.get("error") or "")[:200]
                                                 for s in samples if not s["ok"]})}
        if ok:
            for key in ("pull", "create", "run", "total"):
                vals = [float(s[key]) for s in ok]
                row[key] = statistics.median(vals)
                row[f"{key}_p95"] = percentile(vals, 95)
            row["bytes"] = statistics.median([s["registry"].get("bytes", 0) for s in ok])
            row["requests"] = statistics.median([s["registry"].get("requests", 0) for s in ok])
            row["proxy_bytes"] = statistics.median([s["proxy"].get("bytes_down", 0) for s in ok])
        rows.append(row)
    order = list(ROW_LABELS)
    rows.sort(key=lambda r: (r["image"], r["profile"], order.index((r["system"], r["variant"]))
                             if (r["system"], r["variant"]) in order else 99))
    _add_ideal(results, rows)
    return rows


def _find(rows: list[dict[str, Any]], image: str, profile: str, system: str, variant: str) -> dict[str, Any]:
    for r in rows:
        if (r["image"], r["profile"], r["system"], r["variant"]) == (image, profile, system, variant):
            return r
    return {}


def _add_ideal(results: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    for r in rows:
        info = results["images"].get(r["image"], {}).get("variants", {}).get(r["variant"], {})
        prof = results["profiles"].get(r["profile"])
        if not r["system"].startswith("lazypull-lazy") or "w_bytes" not in info or not prof:
            continue
        app = _find(rows, r["image"], r["profile"], "lazypull-overlayfs", "org") or \
            _find(rows, r["image"], r["profile"], "containerd", "org")
        if "run" not in app:
            continue
        bandwidth = None if prof["rate_mbit"] is None else prof["rate_mbit"] * 1e6 / 8
        r["t_app"] = app["run"]
        r["w_bytes"], r["toc_bytes"] = info["w_bytes"], info["toc_bytes"]
        r["t_ideal"] = ideal.t_ideal(rtt=prof["rtt"], bandwidth=bandwidth, toc_bytes=info["toc_bytes"],
                                     w=info["w_bytes"], t_app=app["run"])
        if "total" in r:
            r["vs_ideal"] = r["total"] / r["t_ideal"]


def _fmt(v: Any, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _mb(v: Any) -> str:
    return "—" if v is None else f"{v / 1e6:.1f}"


def tables(results: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Markdown tables, one per (image, profile)."""
    out = []
    keys = sorted({(r["image"], r["profile"]) for r in rows},
                  key=lambda k: (k[0], ["lan", "wan", "slow"].index(k[1]) if k[1] in ("lan", "wan", "slow")
                                 else 9))
    for image, profile in keys:
        info = results["images"].get(image, {})
        prof = results["profiles"][profile]
        shaping = "unshaped" if prof["rate_mbit"] is None else f"{prof['rate_mbit']:g} Mbit/s"
        commits = sorted({str(s.get("commit", "?")) for s in results["samples"]
                          if (s["image"], s["profile"]) == (image, profile)})
        out.append(f"#### {image}, `{profile}` ({shaping}, RTT {prof['rtt'] * 1000:g} ms); "
                   f"image {info.get('compressed_size', 0) / 1e6:.0f} MB compressed (gzip); lazypull "
                   f"{', '.join(f'`{c}`' for c in commits)}\n")
        out.append("| system / variant | n | pull | create | run | total (median) | total p95 "
                   "| vs containerd | MB served | requests | T_ideal | total / T_ideal |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        base = _find(rows, image, profile, "containerd", "org").get("total")
        for r in (r for r in rows if (r["image"], r["profile"]) == (image, profile)):
            label = ROW_LABELS.get((r["system"], r["variant"]), f"{r['system']} {r['variant']}")
            speed = f"{base / r['total']:.1f}x" if base and r.get("total") else "—"
            fail = f" ({r['failed']} failed)" if r["failed"] else ""
            out.append(f"| {label} | {r['n']}{fail} | {_fmt(r.get('pull'))} | {_fmt(r.get('create'))} | "
                       f"{_fmt(r.get('run'))} | {_fmt(r.get('total'))} | {_fmt(r.get('total_p95'))} | "
                       f"{speed} | "
                       f"{_mb(r.get('bytes'))} | {_fmt(r.get('requests'), 0)} | {_fmt(r.get('t_ideal'))} | "
                       f"{_fmt(r.get('vs_ideal'), 1)} |")
        out.append("")
        errs = [(r, e) for r in rows if (r["image"], r["profile"]) == (image, profile) for e in r["errors"]]
        for r, e in errs[:6]:
            out.append(f"- failure ({ROW_LABELS.get((r['system'], r['variant']), r['system'])}): `{e}`")
        if errs:
            out.append("")
    return "\n".join(out)


def targets(rows: list[dict[str, Any]]) -> str:
    """The issue's targets, checked against the medians."""
    lines = ["| target | measured | met |", "|---|---|---|"]

    def speedup(image: str, profile: str, variant: str) -> float | None:
        base = _find(rows, image, profile, "containerd", "org").get("total")
        lazy = _find(rows, image, profile, "lazypull-lazy", variant).get("total")
        return base / lazy if base and lazy else None

    for variant, goal in (("esgz-noopt", 15.0), ("esgz", 23.0)):
        s = speedup("python", "wan", variant)
        met = "—" if s is None else ("yes" if s >= goal else "no")
        lines.append(f"| python, wan: {variant} >= {goal:g}x faster than containerd | "
                     f"{'—' if s is None else f'{s:.1f}x'} | {met} |")
    r = _find(rows, "python", "wan", "lazypull-lazy", "esgz")
    v = r.get("vs_ideal")
    lines.append(f"| python, wan: esgz within 1.5x of T_ideal | {'—' if v is None else f'{v:.2f}x'} | "
                 f"{'—' if v is None else ('yes' if v <= 1.5 else 'no')} |")
    for image, profile in sorted({(r["image"], r["profile"]) for r in rows}):
        own = _find(rows, image, profile, "lazypull-overlayfs", "org").get("total")
        ctrd = _find(rows, image, profile, "containerd", "org").get("total")
        if own and ctrd:
            lines.append(f"| {image}, {profile}: lazypull's full pull no slower than containerd's "
                         f"({ctrd:.2f}s) | {own:.2f}s | {'yes' if own <= ctrd else 'no'} |")
    for r in rows:
        # What the registry served before the workload finished (TOCs included) against W, the compressed
        # bytes of the chunks the workload read.
        if r["system"] == "lazypull-lazy" and r.get("w_bytes") and r.get("bytes"):
            ratio = r["bytes"] / r["w_bytes"]
            lines.append(f"| {r['image']}, {r['profile']}: {r['variant']} fetched <= 1.5x the compressed "
                         f"bytes read ({r['w_bytes'] / 1e6:.1f} MB) | {r['bytes'] / 1e6:.1f} MB "
                         f"({ratio:.2f}x) | {'yes' if ratio <= 1.5 else 'no'} |")
    for r in rows:
        if r["system"] != "lazypull-lazy" or "total" not in r:
            continue
        fulls = (_find(rows, r["image"], r["profile"], "lazypull-overlayfs", "org"),
                 _find(rows, r["image"], r["profile"], "containerd", "org"))
        full = [x["total"] for x in fulls if "total" in x]
        if full:
            lines.append(f"| {r['image']}, {r['profile']}: {r['variant']} not slower than the full pulls "
                         f"({min(full):.2f}s) | {r['total']:.2f}s | "
                         f"{'yes' if r['total'] <= min(full) else 'no'} |")
    return "\n".join(lines)


def _memory(text: str) -> str:
    """``24683656 kB`` -> ``24.7 GB``."""
    parts = text.split()
    if len(parts) == 2 and parts[0].isdigit() and parts[1] == "kB":
        return f"{int(parts[0]) / 1e6:.1f} GB"
    return text


def section(results: dict[str, Any], results_name: str) -> str:
    """The whole "## Lazy start" section."""
    rows = aggregate(results)
    m = results["machine"]
    imgs = results["images"]
    lines = [
        SECTION, "",
        "HelloBench-style cold starts (stargz-snapshotter's `script/benchmark`): each sample wipes the "
        "store, the chunk cache and every mount and restarts the mount server (or containerd), untimed; "
        "then it times **pull** (`lazypull pull` / `ctr image pull`; a lazy pull fetches manifest, "
        "config and TOCs and mounts the layers, like `ctr-remote image rpull`), **create** (`lazypull "
        "create` / `ctr container create`: the container's rootfs; lazypull no longer waits there for "
        "the prefetch unless configured to, see the analysis) and **run** (`lazypull start` / "
        "`ctr task start` until the workload exits, or "
        "until the server prints its ready line). Within each round of an image the rows run in "
        "shuffled order.",
        "",
        f"- Command: `{results['command']}` (`make bench` runs the reduced default: python, wan, 5 samples).",
        "- Reproduce (root): `make bench`, or `.venv/bin/python bench/run.py --images python,gcc,postgres "
        "--profiles lan,wan,slow --samples 5`; then "
        "`.venv/bin/python bench/summary.py bench/results/lazy-start-*.json` renders this section. "
        "The first run builds the Debian rootfs tars, images and variants into "
        "`/var/tmp/lazypull-bench` (about 5 minutes per image); later runs reuse them.",
        f"- Machine: {m.get('cpus')} CPUs ({m.get('cpu')}), {_memory(m.get('memory', ''))} RAM, "
        f"kernel {m.get('kernel')}, Python {m.get('python')} (the lazypull commit of each table is in its "
        f"heading), load average at the start of a run up to "
        f"{', '.join(f'{x:.1f}' for x in m.get('loadavg_start', []))} "
        f"(shared machine). Date {results['date']}."
        + (f" One `lazypull --version` took {m['cli_startup_s']:.2f} s at the start (every lazypull phase "
           "pays this interpreter start-up)." if "cli_startup_s" in m else ""),
        f"- Raw results: {results_name} in `bench/results/` (not committed).",
        "- Network: the registry (Debian's docker-registry 2.8) runs in a private network namespace behind "
        "a veth pair shaped with `tc tbf` (both directions, burst 256 kb); a delay proxy "
        "(bench/delayproxy.py) on 127.0.0.1 adds RTT/2 to each direction of every chunk (and one RTT "
        "per new connection). "
        "`lan` = unshaped, no delay; `wan` = 100 Mbit/s, 20 ms; `slow` = 60 Mbit/s, 50 ms.",
        "- Images: Debian bookworm (debootstrap minbase) base layer + application layer (what the "
        "packages add): "
        + "; ".join(f"{k}: {v.get('compressed_size', 0) / 1e6:.0f} MB gzip" for k, v in imgs.items()) + ".",
        "- Variants: `org` legacy gzip; `esgz-noopt` eStargz with `.no.prefetch.landmark`; `esgz` with "
        "the files the workload read prioritized (from a traced on-demand lazy run: the byte ranges the "
        "registry served mapped onto the TOC; `zstdchunked` too when the converter accepts the list, see "
        "the notes). Converted with `lazypull image convert`, pushed with `lazypull push`.",
        "- MB served / requests: what the registry's access log recorded between the start of the sample and "
        "the moment the workload finished (background fetch still running afterwards is not counted).",
        f"- T_ideal = k·RTT + (TOC + W)/B + T_app with k = {ideal.K_ROUND_TRIPS} (connect, manifest, config, "
        "footer+TOC tail read, chunk stream), TOC = TOC+footer bytes of all layers, W = compressed bytes of "
        "the chunks the traced run read (priced in each variant's own layout), B = the shaped rate (no "
        "transfer term on `lan`), T_app = median run phase after lazypull's full pull (all data local).",
        "",
    ]
    for name, v in imgs.items():
        var = v.get("variants", {})
        detail = ", ".join(f"{t}: {x['compressed_size'] / 1e6:.0f} MB"
                           + (f" (TOC {x['toc_bytes'] / 1e3:.0f} kB, W {x['w_bytes'] / 1e6:.1f} MB)"
                              if "w_bytes" in x else "") for t, x in var.items())
        lines.append(f"- {name}: {detail}; {len(v.get('prioritized', []))} prioritized files "
                     f"({v.get('prioritized_source', '')}).")
        lines += [f"  - note: {n}" for n in v.get("notes", [])]
    lines += [f"- error: {e}" for e in results.get("errors", [])]
    lines += ["", "![lazy start: pull/create/run per image and variant](bench-lazy-start.png)", "",
              "### Results (seconds; median of n cold samples unless noted)", "", tables(results, rows),
              "### Targets", "", targets(rows), ""]
    if ANALYSIS.exists():
        lines += [ANALYSIS.read_text().strip(), ""]
    return "\n".join(lines)


def chart(results: dict[str, Any], png: Path) -> None:
    """Stacked pull/create/run medians per image and row, one panel per profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = aggregate(results)
    measured = {r["profile"] for r in rows if "total" in r}
    profiles = [p for p in ("lan", "wan", "slow", *results["profiles"]) if p in measured]
    profiles = list(dict.fromkeys(profiles)) or list(results["profiles"])[:1]
    bars = [max(3, sum(1 for r in rows if r["profile"] == p and "total" in r)) for p in profiles]
    fig, axes = plt.subplots(1, len(profiles), figsize=(max(7.0, 1.5 + 0.55 * sum(bars)), 5.4), squeeze=False,
                             gridspec_kw={"width_ratios": bars})
    colors = {"pull": "#4c72b0", "create": "#dd8452", "run": "#55a868"}
    for ax, profile in zip(axes[0], profiles, strict=True):
        sel = [r for r in rows if r["profile"] == profile and "total" in r]
        xs = list(range(len(sel)))
        bottom = [0.0] * len(sel)
        for phase in ("pull", "create", "run"):
            vals = [r[phase] for r in sel]
            ax.bar(xs, vals, bottom=bottom, color=colors[phase], label=phase, width=0.7)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        for x, r in zip(xs, sel, strict=True):
            if "t_ideal" in r:
                ax.hlines(r["t_ideal"], x - 0.35, x + 0.35, colors="black", linestyles="dashed", linewidth=1)
            ax.text(x, bottom[x], f"{r['total']:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{r['image']}\n{SHORT_LABELS.get((r['system'], r['variant']), r['variant'])}"
                            for r in sel], rotation=60, ha="right", fontsize=7)
        prof = results["profiles"][profile]
        rate = "unshaped" if prof["rate_mbit"] is None else f"{prof['rate_mbit']:g} Mbit/s"
        ax.set_title(f"{profile}: {rate}, RTT {prof['rtt'] * 1000:g} ms", fontsize=9)
        ax.set_ylabel("seconds (median)")
    handles: list[Any] = [Patch(color=c, label=phase) for phase, c in colors.items()]
    handles.append(Line2D([], [], color="black", linestyle="dashed", linewidth=1, label="T_ideal"))
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    ns = sorted({r["n"] for r in rows if r["n"]})
    count = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}" if ns else "0"
    fig.suptitle(f"lazypull lazy start: cold, median of {count} samples per bar ({results['date']})",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.93, 0.95))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def replace_section(doc: Path, text: str) -> None:
    """Put ``text`` in place of the "## Lazy start" section (up to the next "## " heading)."""
    old = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + text.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    tmp = doc.with_suffix(".tmp")
    tmp.write_text(new)
    tmp.replace(doc)


def load_results(paths: list[Path]) -> dict[str, Any]:
    """One results dict from several runs. A later run replaces an earlier one's samples of the same
    (image, profile, system, variant), so re-measuring a row never mixes code versions."""
    merged: dict[str, Any] = {}
    commands: list[str] = []
    for path in paths:
        data = json.loads(path.read_text())
        if data.get("kind") != "lazy-start":
            continue                      # another benchmark's results in the same directory
        commit = data.get("machine", {}).get("commit", "?")
        for s in data["samples"]:
            s.setdefault("commit", commit)
        commands.append(data["command"])
        if not merged:
            merged = data
            continue
        keys = {(s["image"], s["profile"], s["system"], s["variant"]) for s in data["samples"]}
        merged["samples"] = [s for s in merged["samples"]
                             if (s["image"], s["profile"], s["system"], s["variant"]) not in keys]
        merged["samples"] += data["samples"]
        merged["images"].update(data["images"])
        merged["profiles"].update(data["profiles"])
        merged["errors"] = merged.get("errors", []) + data.get("errors", [])
        merged["date"] = max(merged["date"], data["date"])
        old_load = merged["machine"].get("loadavg_start", [0, 0, 0])
        new_load = data["machine"].get("loadavg_start", [0, 0, 0])
        merged["machine"]["loadavg_start"] = [max(a, b) for a, b in zip(old_load, new_load, strict=False)]
        for key in ("cli_startup_s", "commit"):
            if key in data["machine"]:
                merged["machine"][key] = data["machine"][key]
    if not merged:
        raise ValueError(f"no lazy-start results among {', '.join(str(p) for p in paths)}")
    merged["command"] = "`; `".join(commands)
    return merged


def write_docs(results_files: list[Path], doc: Path, png: Path) -> None:
    results = load_results(results_files)
    chart(results, png)
    replace_section(doc, section(results, ", ".join(p.name for p in results_files)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+", help="results files of one or more runs")
    p.add_argument("--doc", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md")
    p.add_argument("--png", type=Path,
                   default=Path(__file__).resolve().parents[1] / "docs" / "bench-lazy-start.png")
    args = p.parse_args()
    write_docs(args.results, args.doc, args.png)


if __name__ == "__main__":
    main()
