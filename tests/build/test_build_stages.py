"""Multi-stage builds, scratch, --target, ADD of a local tar, heredocs, ONBUILD triggers, stdin."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from lazypull.image import Store
from tests.build.conftest import lazypull


def _tar(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        data = b"from the tar\n"
        info = tarfile.TarInfo("pkg/readme")
        info.size, info.mode, info.uid = len(data), 0o640, 7
        tar.addfile(info, io.BytesIO(data))


def test_multi_stage_scratch_add_heredoc(tmp_path: Path, busybox_base: str) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    _tar(ctx / "pkg.tar.gz")
    (ctx / "Dockerfile").write_text(f"""\
ARG BASE={busybox_base}
FROM $BASE AS builder
ADD pkg.tar.gz /opt/
RUN <<EOF
echo built > /opt/artifact
ln -s artifact /opt/link
EOF
RUN cat <<EOT > /opt/second
line one
EOT
ARG TARGETARCH
RUN echo "$TARGETARCH $UNDECLARED" > /opt/arch
ARG GREETING=hey
COPY <<EOF /opt/conf
$GREETING ${{GREETING}} \\$GREETING
EOF
COPY <<"RAW" /opt/raw
$GREETING
RAW

FROM builder AS unused
RUN exit 1

FROM scratch AS final
COPY --from=builder /opt/ /
COPY --from=0 /bin/busybox /bin/sh
CMD ["/bin/sh", "-c", "cat /artifact /pkg/readme"]

FROM final AS child
""")
    root = tmp_path / "root"
    result = lazypull(root, "--insecure-registry", "build", "--target", "final", "-t", "localhost/multi:1",
                      str(ctx))
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "[builder 2/7] ADD pkg.tar.gz /opt/" in err
    assert "unused" not in err                              # stages the target does not need are skipped
    store = Store(root)
    image = store.resolve("localhost/multi:1")
    assert len(image.layers) == 2                           # scratch: only the two COPY layers
    blob = store.blob_path(image.layers[0].digest)
    assert blob is not None
    with tarfile.open(blob, "r:*") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["pkg/readme"].mode == 0o640 and members["pkg/readme"].uid == 7   # --from keeps owners
    assert members["link"].issym() and members["link"].linkname == "artifact"
    ran = lazypull(root, "run", "--rm", "localhost/multi:1")
    assert ran.returncode == 0, ran.stderr.decode()
    assert ran.stdout == b"built\nfrom the tar\n"
    second = lazypull(root, "run", "--rm", "localhost/multi:1", "/bin/sh", "-c", "cat /second")
    assert second.stdout == b"line one\n"
    from lazypull.registry import default_platform

    arch = lazypull(root, "run", "--rm", "localhost/multi:1", "/bin/sh", "-c", "cat /arch")
    assert arch.stdout == f"{default_platform().architecture} \n".encode()      # predefined platform ARG
    docs = lazypull(root, "run", "--rm", "localhost/multi:1", "/bin/sh", "-c", "cat /conf /raw")
    assert docs.stdout == b"hey hey $GREETING\n$GREETING\n", docs.stderr.decode()   # COPY heredocs


def test_onbuild_trigger_runs_in_child_and_stdin_dockerfile(tmp_path: Path, busybox_base: str) -> None:
    root = tmp_path / "root"
    parent = lazypull(root, "--insecure-registry", "build", "-t", "localhost/parent:1", "-",
                      stdin=f"FROM {busybox_base}\nONBUILD RUN echo triggered > /trig\n".encode())
    assert parent.returncode == 0, parent.stderr.decode()
    onbuild = Store(root).resolve("localhost/parent:1").config["config"]["OnBuild"]
    assert onbuild == ["RUN echo triggered > /trig"]
    child = lazypull(root, "build", "-t", "localhost/child:1", "-", stdin=b"FROM localhost/parent:1\n")
    assert child.returncode == 0, child.stderr.decode()
    image = Store(root).resolve("localhost/child:1")
    assert "OnBuild" not in image.config["config"]
    ran = lazypull(root, "run", "--rm", "localhost/child:1", "cat", "/trig")
    assert ran.stdout == b"triggered\n", ran.stderr.decode()
    no_context = lazypull(root, "build", "-", stdin=b"FROM localhost/parent:1\nCOPY x /x\n")
    assert no_context.returncode == 1
    assert b"Dockerfile:2: COPY: COPY from the context, but the build has no context" in no_context.stderr
