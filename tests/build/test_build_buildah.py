"""The same Dockerfile built by ``lazypull build`` and Debian's ``buildah bud``: the same tree and config.

buildah runs with a private storage (graphroot under the test's directory, devtools/podman.py's
configuration); the trees are compared by names, types, modes, owners, contents, symlink targets
and extended attributes (times are not compared: each builder stamps its own).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.podman import remove_engine_dirs, write_engine_config
from lazypull.image import Store
from lazypull.runtime.layers import lower_dirs
from lazypull.runtime.overlay import mount_overlay, unmount
from tests.build.conftest import lazypull
from tests.helpers.registry import RegistryServer

DOCKERFILE = """\
FROM {base}
ARG VERSION=1.0
ENV A=b C="d e" VERSION=$VERSION
WORKDIR /app
COPY files/ ./
COPY --chown=1234:2345 --chmod=0640 one.txt /app/owned.txt
COPY one.txt two.txt /app/many/
RUN echo run > /app/run.txt && rm /srv/old && rm -r /srv/dir && mkdir -p /srv/dir/new \\
    && ln -s ../../app/run.txt /srv/dir/new/link && ln /app/run.txt /app/hard && chmod 4755 /app/run.txt
USER alice
WORKDIR /home/alice/work
COPY one.txt ./
RUN id -un > /tmp/who
LABEL org.example.a="x y" b=c
EXPOSE 80 53/udp
VOLUME /data
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/sh"]
CMD ["-c", "true"]
"""
MULTI_STAGE = """\
FROM {base} AS builder
WORKDIR /src
ADD pkg.tar.gz /src/
COPY *.txt ./texts/
RUN mkdir -p /out/bin && cp -a /src/pkg /out/ && echo built > /out/bin/artifact && chmod 0750 /out/bin

FROM {base}
ENV DEST=/opt/app
COPY --from=builder /out/ $DEST/
COPY --from=builder /src/texts/one.txt /etc/one.txt
WORKDIR rel
WORKDIR sub
RUN pwd > here
CMD echo shell form
"""
CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes",
                 "StopSignal")
# buildah 1.28 commits the mountpoints its RUN made into the image; BuildKit and lazypull leave them out.
BUILDAH_STUBS = {"proc", "sys", "dev", "run", "etc/hosts", "etc/resolv.conf", "etc/hostname"}


def _tree(top: Path) -> dict[str, tuple[object, ...]]:
    result: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(top))
            st = os.lstat(path)
            xattrs = {}
            for key in os.listxattr(path, follow_symlinks=False):
                if not key.startswith(("trusted.overlay.", "security.selinux")):
                    xattrs[key] = os.getxattr(path, key, follow_symlinks=False)
            detail: object = None
            if stat.S_ISREG(st.st_mode):
                detail = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            result[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, detail,
                           tuple(sorted(xattrs.items())))
    return result


@pytest.fixture
def buildah_env(tmp_path: Path, registry: RegistryServer) -> Iterator[dict[str, str]]:
    if shutil.which("buildah") is None:
        pytest.fail("buildah is not installed (scripts/install-deps.sh installs it)")
    work = tmp_path / "engine"
    env = write_engine_config(work, registry.host, None)
    try:
        yield env
    finally:
        subprocess.run(["buildah", "rm", "--all"], env=env, capture_output=True, check=False)
        subprocess.run(["buildah", "rmi", "--all", "--force"], env=env, capture_output=True, check=False)
        remove_engine_dirs(work)


def _buildah(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(["buildah", *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"buildah {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, MULTI_STAGE], ids=["instructions", "multi-stage"])
def test_same_tree_and_config_as_buildah(tmp_path: Path, busybox_base: str, buildah_env: dict[str, str],
                                         dockerfile: str) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "files" / "sub").mkdir(parents=True)
    (ctx / "files" / "top.txt").write_text("top\n")
    (ctx / "files" / "sub" / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(ctx / "files" / "sub" / "exec.sh", 0o755)
    os.symlink("top.txt", ctx / "files" / "alias")
    (ctx / "one.txt").write_text("one\n")
    os.setxattr(ctx / "files" / "top.txt", "user.origin", b"context")
    (ctx / "two.txt").write_text("two\n")
    (ctx / "Dockerfile").write_text(dockerfile.format(base=busybox_base))
    with tarfile.open(ctx / "pkg.tar.gz", "w:gz") as tar:
        for name, data in (("pkg/lib/a.so", b"elf"), ("pkg/README", b"readme\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o640, 7, 8, 1_600_000_000
            tar.addfile(info, io.BytesIO(data))

    root = tmp_path / "root"
    built = lazypull(root, "--insecure-registry", "build", "-q", "-t", "localhost/cmp:1", str(ctx))
    assert built.returncode == 0, built.stderr.decode()
    _buildah(buildah_env, "bud", "--tls-verify=false", "--network", "host", "--ulimit", "nofile=1024:1024",
             "--ulimit", "nproc=1024:1024", "--layers", "-t", "localhost/cmp:1", str(ctx))

    inspected = _buildah(buildah_env, "inspect", "--type", "image", "localhost/cmp:1")
    theirs_config = json.loads(inspected)["OCIv1"]
    store = Store(root)
    image = store.resolve("localhost/cmp:1")
    ours_config = image.config
    theirs_config["config"]["Labels"].pop("io.buildah.version")      # buildah signs its images so
    for key in CONFIG_FIELDS:
        assert (ours_config["config"].get(key) or None) == (theirs_config["config"].get(key) or None), key

    container = _buildah(buildah_env, "from", "localhost/cmp:1").strip()
    theirs = Path(_buildah(buildah_env, "mount", container).strip())
    merged = tmp_path / "ours"
    lowers = lower_dirs(root, store, image, None)
    mount_overlay(lowers, tmp_path / "upper", tmp_path / "work", merged, tmp_path / "l")
    try:
        ours_tree, theirs_tree = _tree(merged), _tree(theirs)
    finally:
        unmount(merged)
    assert set(theirs_tree) - set(ours_tree) <= BUILDAH_STUBS
    assert set(ours_tree) <= set(theirs_tree)
    different = {name: (ours_tree[name], theirs_tree[name]) for name in ours_tree
                 if ours_tree[name] != theirs_tree[name]}
    assert different == {}
    if dockerfile is DOCKERFILE:
        assert ours_tree["app/hard"] == ours_tree["app/run.txt"]
        assert ours_tree["app/owned.txt"][1:4] == (0o640, 1234, 2345)
        assert ours_tree["tmp/who"][2:4] == (1234, 2345)               # RUN as USER alice
        assert ours_tree["app/top.txt"][5] == (("user.origin", b"context"),)   # xattrs kept
        assert ours_tree["home/alice/work"][2:4] == (0, 0)             # WORKDIR made as root (as buildah)
    else:
        assert ours_tree["opt/app/pkg/README"][1:4] == (0o640, 7, 8)     # ADD keeps the tar's owners
        assert "rel/sub/here" in ours_tree
