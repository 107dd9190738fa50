"""Bad input: each a one-line error naming the Dockerfile line or the path; nothing half-made left."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from lazypull.image import Store
from lazypull.runtime.overlay import mountpoints
from tests.build.conftest import lazypull
from tests.helpers.registry import RegistryServer


def _build(tmp_path: Path, dockerfile: str, *extra: str, files: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(text)
    root = tmp_path / "root"
    result = lazypull(root, "--insecure-registry", "build", "-t", "localhost/bad:1", *extra, str(ctx))
    return root, ctx, result


def _nothing_left(root: Path) -> None:
    assert Store(root).find_image("localhost/bad:1") is None
    assert [m for m in mountpoints() if m.startswith(str(root))] == []
    for directory in (root / "containers", root / "build"):     # no container, no build work dir
        assert [p.name for p in directory.glob("*") if p.name != ".lock"] == []


def test_unknown_instruction_names_file_and_line(tmp_path: Path, busybox_base: str) -> None:
    root, ctx, result = _build(tmp_path, f"FROM {busybox_base}\n# fine\nRUN true \\\n  && true\nFOOBAR x\n")
    assert result.returncode == 1
    expected = f"lazypull: error: {ctx}/Dockerfile:5: unknown instruction: FOOBAR"
    assert result.stderr.decode().strip() == expected
    _nothing_left(root)


def test_failing_run_shows_output_and_exit_code(tmp_path: Path, busybox_base: str) -> None:
    root, ctx, result = _build(tmp_path, f"FROM {busybox_base}\nRUN echo ok > /a\n"
                                         "RUN echo about to fail; exit 3\nRUN echo never\n")
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "about to fail" in err
    assert "exit code 3" in err
    assert f"{ctx}/Dockerfile:3: RUN echo about to fail; exit 3: exit code 3" in err
    assert "never" not in err.replace("RUN echo never", "")
    _nothing_left(root)
    # quiet: the failing step's output is still shown
    quiet = lazypull(root, "--insecure-registry", "build", "-q", str(ctx))
    assert quiet.returncode == 1 and b"about to fail" in quiet.stderr


@pytest.mark.parametrize(("dockerfile", "setup", "message"), [
    ("COPY ../secret /x\n", None, "../secret: the path leaves the build context"),
    ("COPY link /x\n", ("link", "/etc/passwd"), "symlink link -> /etc/passwd leaves the build context"),
    ("COPY sub/up/passwd /x\n", ("sub/up", "../.."), "a symlink on the way leaves the build context"),
    ("COPY missing /x\n", None, "missing: not found in the build context"),
    ("COPY a.txt b.txt /dest\n", None, "the destination must be a directory and end with a /"),
    ("ADD https://example.com/x /x\n", None, "ADD of a URL (https://example.com/x) is not supported"),
    ("COPY --frm=x a.txt /x\n", None, "unknown flag --frm"),
    ("FROM scratch\nSHELL /bin/bash\n", None, "SHELL must be given in JSON form"),
], ids=["dotdot", "abs-symlink", "rel-symlink", "missing", "multi-dest", "add-url", "bad-flag", "shell"])
def test_bad_sources_and_instructions(tmp_path: Path, busybox_base: str, dockerfile: str,
                                      setup: tuple[str, str] | None, message: str) -> None:
    (tmp_path / "secret").write_text("outside\n")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    if setup is not None:
        link = ctx / setup[0]
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(setup[1], link)
    root, ctx, result = _build(tmp_path, f"FROM {busybox_base}\n{dockerfile}",
                               files={"a.txt": "a", "b.txt": "b"})
    err = result.stderr.decode()
    assert result.returncode == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"lazypull: error: {ctx}/Dockerfile:"), err
    assert message in line, err
    _nothing_left(root)


def test_terminated_build_leaves_nothing(tmp_path: Path, lazy_base: tuple[str, list[str]]) -> None:
    import sys

    from tests.build.conftest import REPO_ROOT

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {lazy_base[0]}\nRUN echo started; sleep 60\n")
    root = tmp_path / "root"
    env = dict(os.environ, LAZYPULL_ROOT=str(root), PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "lazypull", "--insecure-registry", "build", "-t",
                             "localhost/bad:1", str(ctx)], stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT)
    assert proc.stderr is not None
    try:
        _terminate_during_run(proc, root)
    finally:
        if proc.poll() is None:     # the test failed before its signal: no build may outlive it
            proc.kill()
            proc.wait()
    _nothing_left(root)


def _terminate_during_run(proc: subprocess.Popen[bytes], root: Path) -> None:
    import signal
    import time

    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + 120
    output = re.compile(rb"^#\d+ \d+\.\d+ started$", re.MULTILINE)      # the RUN's output, not its title
    while not output.search(seen) and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    assert output.search(seen), seen.decode()
    assert [m for m in mountpoints() if m.startswith(str(root))] != []     # the base, lazily mounted
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode != 0, (seen + rest).decode()


def test_deep_tree_and_endless_line_from_run(tmp_path: Path, busybox_base: str) -> None:
    """A step leaving a tree deeper than Python's recursion limit, printing a line with no end."""
    root, _ctx, result = _build(tmp_path, f"FROM {busybox_base}\n"
                               "RUN i=0; while [ $i -lt 1200 ]; do mkdir d; cd d; i=$((i+1)); done; "
                               "echo -n start; i=0; while [ $i -lt 2000 ]; do echo -n 0123456789abcdef"
                               "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef; "
                               "i=$((i+1)); done\n"
                               "RUN test -d /d/d/d/d\n")
    try:
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        assert max(len(line) for line in result.stderr.splitlines()) < 70 << 10
        image = Store(root).resolve("localhost/bad:1")
        blob = Store(root).blob_path(image.layers[1].digest)
        assert blob is not None
        import tarfile

        with tarfile.open(blob, "r:*") as tar:
            depth = max(m.name.count("/") for m in tar.getmembers())
        assert depth == 1199
    finally:    # pytest's rm_rf (shutil.rmtree) recurses: take the deep trees away
        from lazypull.removetree import remove_tree

        remove_tree(root / "snapshots")


@pytest.mark.parametrize(("config", "message"), [
    ({"config": {"Env": "PATH=/bin"}}, "Env"),
    ({"config": {"Labels": ["a"]}}, "config.Labels is not an object"),
    ({"config": {"OnBuild": [1]}}, "config.OnBuild holds a non-string"),
    ({"config": {"Cmd": ["sh"]}, "history": "x"}, "history is not a list of objects"),
], ids=["env", "labels", "onbuild", "history"])
def test_hostile_base_config(tmp_path: Path, registry: RegistryServer, config: dict[str, object],
                             message: str) -> None:
    from tests.helpers.rootfs import busybox_specs, push_image_layers

    name = f"{registry.host}/lazypull-build/hostile:{tmp_path.name[-12:].strip('_') or 'x'}"
    push_image_layers(tmp_path / "image", name, [busybox_specs()], config=config)
    root, ctx, result = _build(tmp_path, f"FROM {name}\nLABEL a=b\n")
    err = result.stderr.decode()
    assert result.returncode == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"lazypull: error: {ctx}/Dockerfile:1: FROM: ") and message in line, err
    _nothing_left(root)


def test_destination_links_resolve_inside_the_image(tmp_path: Path, busybox_base: str) -> None:
    """An absolute link in the image is the image's own path: COPY through it never writes on the host."""
    marker = f"lazypull-build-test-{os.getpid()}"
    host_target = Path("/tmp") / marker
    assert not host_target.exists()
    root, _ctx, result = _build(tmp_path, f"FROM {busybox_base}\n"
                                "RUN ln -s /tmp /hostile && ln -s ../../../../../tmp /tmp/up\n"
                                f"COPY a.txt /hostile/{marker}\n"
                                f"COPY b.txt /tmp/up/up/{marker}.b\n", files={"a.txt": "a", "b.txt": "b"})
    assert result.returncode == 0, result.stderr.decode()
    assert not host_target.exists() and not Path(f"/tmp/{marker}.b").exists()
    ran = lazypull(root, "run", "--rm", "localhost/bad:1", "/bin/sh", "-c",
                   f"cat /tmp/{marker} /tmp/{marker}.b")
    assert ran.stdout == b"ab", ran.stderr.decode()


def test_add_of_a_hostile_tar_is_refused(tmp_path: Path, busybox_base: str) -> None:
    import io
    import tarfile

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    with tarfile.open(ctx / "evil.tar", "w") as tar:
        info = tarfile.TarInfo("../../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    root, ctx, result = _build(tmp_path, f"FROM {busybox_base}\nADD evil.tar /opt/\n")
    err = result.stderr.decode()
    assert result.returncode == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"lazypull: error: {ctx}/Dockerfile:2: ADD: ADD evil.tar"), err
    assert "escape" in line
    assert not (tmp_path / "escape").exists()
    _nothing_left(root)
