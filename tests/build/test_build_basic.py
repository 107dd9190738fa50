"""``lazypull build`` end to end on a busybox base: instructions, layers, config, history, cache."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from lazypull.errors import LazypullError
from lazypull.image import Store
from lazypull.runtime.overlay import mountpoints
from tests.build.conftest import lazypull

DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG BASE
FROM ${BASE} AS base
ARG GREETING=hello
ENV APP=/app \\
    MODE="two words"
WORKDIR $APP
COPY hello.txt ./
COPY --chmod=0700 --chown=alice:staff sub/ /opt/sub/
RUN echo "$GREETING $MODE" > /app/greeting && rm /srv/old && rm -r /srv/dir && mkdir /srv/dir \\
    # a comment inside a continuation
    && echo new > /srv/dir/b && ln /app/greeting /app/hardlink
LABEL org.example.k="v 1" other=2
EXPOSE 8080 53/udp
VOLUME ["/data"]
USER alice
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --retries=3 CMD ["true"]
ONBUILD RUN echo triggered
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /app/greeting"]
"""


def _context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "sub" / "deep").mkdir(parents=True)
    (ctx / "hello.txt").write_text("hi there\n")
    (ctx / "sub" / "deep" / "f").write_text("deep\n")
    (ctx / "sub" / "ignored.log").write_text("no\n")
    (ctx / ".dockerignore").write_text("# comment\n**/*.log\n")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return ctx


def _layer_members(store: Store, digest: str) -> dict[str, tarfile.TarInfo]:
    path = store.blob_path(digest)
    assert path is not None
    with tarfile.open(path, "r:*") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_build_instructions_layers_config_and_cache(tmp_path: Path, busybox_base: str) -> None:
    ctx = _context(tmp_path)
    root = tmp_path / "root"
    result = lazypull(root, "--insecure-registry", "build", "-t", "example.com/app:1", "--build-arg",
                      f"BASE={busybox_base}", str(ctx))
    err = result.stderr.decode()
    assert result.returncode == 0, err
    # BuildKit's plain progress: numbered vertices with stage positions, the RUN's output, DONE
    assert "[base 1/5] FROM" not in err            # one stage: no stage label
    assert "#1 [1/5] FROM " in err
    assert "[4/5] COPY --chmod=0700 --chown=alice:staff sub/ /opt/sub/" in err
    assert "[5/5] RUN echo" in err and "DONE" in err

    store = Store(root)
    image = store.resolve("example.com/app:1")
    cfg = image.config["config"]
    assert cfg["Env"] == ["PATH=/bin", "BASE=1", "APP=/app", "MODE=two words"]
    assert cfg["WorkingDir"] == "/app"
    assert cfg["User"] == "alice"
    assert cfg["Labels"] == {"org.example.k": "v 1", "other": "2"}
    assert cfg["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert cfg["Volumes"] == {"/data": {}}
    assert cfg["StopSignal"] == "SIGTERM"
    assert cfg["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 30_000_000_000, "Retries": 3}
    assert cfg["OnBuild"] == ["RUN echo triggered"]
    assert cfg["Entrypoint"] == ["/bin/sh", "-c"] and cfg["Cmd"] == ["cat /app/greeting"]
    # base layer + WORKDIR + 2 COPY + RUN
    assert len(image.layers) == 5
    assert image.config["rootfs"]["diff_ids"][0] == image.diff_ids[0]
    history = image.config["history"]
    assert [h.get("empty_layer", False) for h in history].count(False) == len(image.layers)
    assert any(h["created_by"].startswith("RUN /bin/sh -c echo") for h in history)

    workdir_layer = _layer_members(store, image.layers[1].digest)
    assert list(workdir_layer) == ["app"]
    copy1 = _layer_members(store, image.layers[2].digest)
    assert copy1["app/hello.txt"].uid == 0 and copy1["app/hello.txt"].mode == 0o644
    copy2 = _layer_members(store, image.layers[3].digest)
    assert "opt/sub/ignored.log" not in copy2                      # .dockerignore
    deep = copy2["opt/sub/deep/f"]
    assert (deep.uid, deep.gid, deep.mode) == (1234, 50, 0o700)
    assert copy2["opt/sub/deep"].mode == 0o700
    run = _layer_members(store, image.layers[4].digest)
    assert "srv/.wh.old" in run                                    # deleted file: OCI whiteout
    assert "srv/dir/.wh..wh..opq" in run                           # replaced directory: opaque
    assert run["app/hardlink"].islnk() and run["app/hardlink"].linkname == "app/greeting"
    assert not any(name.split("/")[0] in ("proc", "sys", "dev") for name in run)   # runc's stubs
    assert not any(m.startswith(str(root) + "/") and "/build/" in m for m in mountpoints())

    # the image runs
    ran = lazypull(root, "run", "--rm", "example.com/app:1")
    assert ran.returncode == 0, ran.stderr.decode()
    assert ran.stdout == b"hello two words\n"

    # a second build reuses every step, and mounts nothing (no mount server is even started)
    from lazypull.snapshot import MountClient

    MountClient(root, autostart=False).shutdown()
    again = lazypull(root, "--insecure-registry", "build", "-t", "example.com/app:2", "--build-arg",
                     f"BASE={busybox_base}", str(ctx))
    assert again.returncode == 0, again.stderr.decode()
    assert again.stderr.decode().count("CACHED") == 4
    with pytest.raises(LazypullError):
        MountClient(root, autostart=False).ping()
    assert store.resolve("example.com/app:2").layers == image.layers
    # a changed source file invalidates its step and the ones after it
    (ctx / "sub" / "deep" / "f").write_text("changed\n")
    third = lazypull(root, "--insecure-registry", "build", "-q", "-t", "example.com/app:3", "--build-arg",
                     f"BASE={busybox_base}", str(ctx))
    assert third.returncode == 0, third.stderr.decode()
    assert third.stderr == b""
    assert third.stdout.decode().strip() == store.resolve("example.com/app:3").manifest_digest
    layers3 = store.resolve("example.com/app:3").layers
    assert layers3[:3] == image.layers[:3] and layers3[3] != image.layers[3]
    # --no-cache runs everything again
    fresh = lazypull(root, "--insecure-registry", "build", "--no-cache", "--build-arg",
                     f"BASE={busybox_base}", str(ctx))
    assert fresh.returncode == 0 and b"CACHED" not in fresh.stderr
    assert json.loads(json.dumps(cfg))  # config is plain JSON
