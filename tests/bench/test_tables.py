"""bench.summary.row_table: the table of bench/build.py, cri.py and podman.py (one line per row, medians)."""

from __future__ import annotations

from bench.summary import megabytes, row_table, seconds


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
