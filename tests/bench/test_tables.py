"""What bench/build.py, cri.py and podman.py share: the shuffled sample loop and the results table."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from bench.compare import sample_shuffled
from bench.summary import megabytes, row_table, seconds
from bench.workloads import Workload, parse_names


def test_row_table_medians_slowest_and_counts_per_image_and_row() -> None:
    samples = [{"image": "python", "system": "a", "variant": "org", "total": t, "bytes_fetched": b}
               for t, b in ((3.0, 5e6), (5.0, 7e6), (4.5, 9e6))]
    samples.append({"image": "gcc", "system": "b", "variant": "esgz", "total": 1.0, "bytes_fetched": 1e6})
    text = row_table({"samples": samples}, [("run s", seconds("total")), ("MB fetched", megabytes)])
    assert text.splitlines() == [
        "| image | system | run s | MB fetched | n |",
        "|---|---|---|---|---|",
        "| gcc | b:esgz | 1.00 (1.00) | 1.0 | 1 |",
        "| python | a:org | 4.50 (5.00) | 7.0 | 3 |",
    ]


def test_sample_shuffled_takes_every_row_records_errors_and_rewrites_the_file(tmp_path: Path) -> None:
    workloads = parse_names("python,gcc")
    rows = [("a", "org"), ("b", "esgz")]
    taken: list[tuple[int, str, str, str]] = []

    def take(i: int, w: Workload, system: str, variant: str) -> dict[str, Any]:
        taken.append((i, w.name, system, variant))
        if (w.name, system) == ("gcc", "b"):
            raise RuntimeError("boom")
        return {"total": float(i)}

    results: dict[str, Any] = {"samples": [], "errors": []}
    out = tmp_path / "r.json"
    sample_shuffled(workloads, rows, 2, random.Random(1), take, lambda r: f"{r['total']}", results, out)
    assert [t[0] for t in taken] == list(range(8))
    assert sorted(t[1:] for t in taken) == sorted([(w, s, v) for w in ("python", "gcc") for s, v in rows] * 2)
    assert results["errors"] == ["gcc b:esgz: boom"] * 2
    assert len(results["samples"]) == 6
    assert json.loads(out.read_text()) == results
