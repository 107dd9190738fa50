"""A container's own output is not lazypull's word (issue 9 follow-up).

``run -d`` once decided whether the container started by looking for ``lazypull: error:`` lines in
the container's log, which holds the container's own output: an image printing such a line made
``run -d`` report a container that ran as one that did not start. The supervisor now says so on a
pipe of its own (``start --notify-fd``), which the container cannot write to.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runtime.test_cli_run import busybox_image, lazypull  # noqa: F401 (fixture)

BASE = ["--snapshotter=overlayfs", "--insecure-registry"]
FAKE = "echo 'lazypull: error: fake' >&2; echo 'lazypull: error: fake'"


@pytest.mark.parametrize("then", ["sleep 300", "exit 1"], ids=["keeps-running", "exits-at-once"])
def test_container_output_is_not_taken_for_an_error(tmp_path: Path, busybox_image: str,  # noqa: F811
                                                    then: str) -> None:
    run = lazypull(tmp_path, *BASE, "run", "-d", "--name", "liar", busybox_image,
                   "sh", "-c", f"{FAKE}; {then}")
    try:
        assert run.returncode == 0, run.stderr.decode()
        assert len(run.stdout.strip()) == 64 and b"did not start" not in run.stderr, run.stderr.decode()
        logs = lazypull(tmp_path, "logs", "liar")
        assert logs.stdout.count(b"lazypull: error: fake\n") == 2, logs.stdout   # its own lines, kept
    finally:
        assert lazypull(tmp_path, "rm", "-f", "liar").returncode == 0
