"""The Go interoperability oracle (tests/oracle/main.go) as a Python wrapper (tests and bench).

The oracle is Debian's stargz-snapshotter estargz library (v0.12) behind a tiny command-line program:
what it accepts and how it lists a layer is what containerd's snapshotter would see. The tests'
session fixture (tests/helpers/oracle.py) builds it once (tests/oracle/build.sh, a few seconds; a
no-op when up to date).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "tests" / "oracle" / "build.sh"


class OracleError(Exception):
    """The oracle refused a blob or failed; the message carries its stderr."""


@dataclass(frozen=True)
class OracleBuild:
    """What the Go `estargz.Build` reported for one blob."""

    blob_digest: str
    blob_size: int
    toc_digest: str
    diff_id: str
    uncompressed_size: int
    missed: list[str]
    annotations: dict[str, str]


@dataclass(frozen=True)
class Oracle:
    """Runs the built oracle binary; every call is one short process."""

    binary: Path

    def _run(self, args: Sequence[str], timeout: float = 300) -> Any:
        env = dict(os.environ, GOMAXPROCS="1")
        proc = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=env, timeout=timeout
        )
        if proc.returncode != 0:
            raise OracleError(f"oracle {' '.join(args)}: {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def verify(self, blob: Path, toc_digest: str | None = None) -> dict[str, Any]:
        """Opens `blob` with the Go reader, verifies the TOC (when a digest is given) and every chunk.

        Returns {"tocDigest", "tocVerified", "entries": [...]} with one entry per path of the tree.
        """
        args = ["verify", str(blob)]
        if toc_digest is not None:
            args += ["--toc-digest", toc_digest]
        result: dict[str, Any] = self._run(args)
        return result

    def tree(self, blob: Path, toc_digest: str | None = None) -> dict[str, dict[str, Any]]:
        """`verify`, keyed by path ("" is the root)."""
        return {e["name"]: e for e in self.verify(blob, toc_digest)["entries"]}

    def build(
        self,
        tar: Path,
        out: Path,
        *,
        chunk_size: int = 0,
        level: int | None = None,
        prioritized: Sequence[str] | None = None,
        zstdchunked: bool = False,
        procs: int = 1,
    ) -> OracleBuild:
        """Converts `tar` with Go `estargz.Build` (allow-prioritize-not-found).

        `procs` is GOMAXPROCS during Build, which cuts the tar into that many parts written by separate
        writers (the TOC's userName/groupName dedupe restarts per part); 1 makes the output reproducible.
        """
        args = ["build", str(tar), str(out), "--chunk-size", str(chunk_size), "--procs", str(procs)]
        if level is not None:
            args += ["--level", str(level)]
        if prioritized:
            if any("," in p for p in prioritized):
                raise ValueError(f"prioritized names cannot contain commas: {list(prioritized)}")
            args += ["--prioritized", ",".join(prioritized)]
        if zstdchunked:
            args.append("--zstdchunked")
        r = self._run(args)
        return OracleBuild(
            blob_digest=r["blobDigest"],
            blob_size=r["blobSize"],
            toc_digest=r["tocDigest"],
            diff_id=r["diffID"],
            uncompressed_size=r["uncompressedSize"],
            missed=list(r["missed"]),
            annotations=dict(r["annotations"]),
        )


def build_oracle() -> Path:
    """Runs tests/oracle/build.sh (idempotent) and returns the binary's path."""
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise OracleError(f"building the Go oracle failed:\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])
