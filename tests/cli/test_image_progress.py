"""Progress: rich bars per layer on a terminal (checked through a real pty), nothing when not a terminal."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from lazypull.cli._image_progress import QuietProgress, RichProgress, make_progress
from tests.helpers.images import make_oci_layout, sample_layers


def test_rich_progress_shows_items_bytes_and_status() -> None:
    out = io.StringIO()
    with RichProgress(Console(file=out, force_terminal=True, width=200)) as progress:
        progress.start("a", "layer-sha256:aaaa", 2048)
        progress.advance("a", 1024)
        progress.advance("a", 1024)
        progress.finish("a", "done")
        progress.start("b", "layer-sha256:bbbb", 10)
        progress.finish("b", "exists")
    text = out.getvalue()
    assert "layer-sha256:aaaa" in text and "done" in text
    assert "layer-sha256:bbbb" in text and "exists" in text
    assert "2.0/2.0 KiB" in text


def test_not_a_terminal_means_quiet() -> None:
    assert isinstance(make_progress(), QuietProgress)  # pytest captures stderr


def test_convert_on_a_terminal_draws_bars_and_keeps_stdout_clean(tmp_path: Path) -> None:
    built = make_oci_layout(tmp_path / "layout", sample_layers(), tag="v1")
    primary, secondary = os.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lazypull", "--root", str(tmp_path / "root"), "image", "convert",
             "--estargz", "--oci", built.ref, "example.com/p:1"],
            stdout=subprocess.PIPE, stderr=secondary, timeout=120, cwd=Path(__file__).parents[2],
            env={**os.environ, "COLUMNS": "200"})
        os.close(secondary)
        secondary = -1
        chunks = []
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if secondary >= 0:
            os.close(secondary)
        os.close(primary)
    assert proc.returncode == 0
    assert proc.stdout.decode().strip().startswith("sha256:")  # stdout: just the digest
    tty = b"".join(chunks).decode(errors="replace")
    for digest in built.image.layer_digests:
        assert f"layer-{digest}"[:30] in tty
    assert "done" in tty
