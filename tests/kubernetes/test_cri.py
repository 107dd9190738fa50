"""Pods through containerd's CRI plugin with lazypull as its snapshotter: an eStargz image is mounted
lazily (the registry serves a small part of it) and its container prints ``hi``; a plain image (the pause
image) is unpacked as usual; ``RemoveImage`` and containerd's GC release the mounts; a private registry's
image is lazy with no credentials on the node but those of the ``PullImage`` request, which go through
lazypull's CRI image service and are dropped by ``RemoveImage``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from lazypull.registry import StaticAuth
from lazypull.snapshot.protobuf import fields
from tests.helpers.cri import Auth, CriClient
from tests.helpers.images import TarEntrySpec
from tests.helpers.registry import AuthRegistry, RegistryServer
from tests.helpers.rootfs import busybox_specs, push_lazy_image
from tests.kubernetes.conftest import Node

PADDING = 12 << 20           # never read by the container: what lazy pulling saves


def _specs() -> list[TarEntrySpec]:
    """busybox, a script printing hi, and data the script never reads (random: gzip cannot shrink it)."""
    return [*busybox_specs(),
            TarEntrySpec("hi.sh", "file", b"#!/bin/sh\necho hi\n", 0o755),
            TarEntrySpec("usr/share/data/blob.bin", "file", os.urandom(PADDING), 0o644)]


def _blob_bytes_served(server: RegistryServer, since: int, digest: str) -> tuple[int, list[int]]:
    """Bytes of blob ``digest`` the registry sent since ``since``, and the statuses of those GETs."""
    gets = [e for e in server.access_log(since) if e.method == "GET" and e.path.endswith(f"/blobs/{digest}")]
    return sum(e.bytes for e in gets), [e.status for e in gets]


def _run_hi(cri: CriClient, node: Node, name: str, image: str) -> tuple[str, str]:
    """A host-network pod running /hi.sh from ``image``; returns (pod id, container id) once it exited 0
    with ``hi`` in its CRI log."""
    logs = node.base / "logs" / name
    logs.mkdir(parents=True)
    config = CriClient.sandbox_config(name, logs)
    pod = cri.run_pod(config)
    container = cri.create_container(pod, config, "hi", image, ["/hi.sh"], "hi.log")
    cri.start_container(container)
    status = cri.wait_exit(container)
    assert status.exit_code == 0
    deadline = time.monotonic() + 10        # the shim's log copier may finish after the exit is seen
    while not (logs / "hi.log").read_text().endswith("\n") and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = (logs / "hi.log").read_text().splitlines()     # CRI log format: time stream tag message
    assert [line.split(" ", 3)[3] for line in lines] == ["hi"]
    return pod, container


def _wait_released(node: Node, digests: list[str], timeout: float = 30) -> None:
    """containerd's GC removes the snapshots asynchronously after RemoveImage."""
    deadline = time.monotonic() + timeout
    while set(digests) & node.held_digests() and time.monotonic() < deadline:
        time.sleep(0.1)


def _ctr_content(node: Node) -> list[str]:
    import subprocess

    out = subprocess.run(["ctr", "--address", str(node.containerd.socket), "--namespace", "k8s.io",
                          "content", "ls", "-q"], capture_output=True, text=True, check=True).stdout
    return out.split()


def test_pod_starts_from_a_lazily_pulled_image(node: Node, registry: RegistryServer, tmp_path: Path) -> None:
    *base, data = _specs()
    layers = [base[:-1], base[-1:], [data]]        # busybox / the script / data nobody reads: 3 eStargz
    name, digests = push_lazy_image(tmp_path, f"{registry.host}/lazypull-test/hi:1", layers)
    total = sum(registry.blob_path(d).stat().st_size for d in digests)
    mark = registry.log_mark()
    cri = node.cri(through_lazypull=False)       # the snapshotter alone: labels, not the image service
    try:
        cri.pull(name)
        assert set(digests) <= node.held_digests(), "every eStargz layer is FUSE-mounted"
        for digest in digests:
            assert any(digest.removeprefix("sha256:")[:16] in line for line in node.mounts())
        assert not set(digests) & set(_ctr_content(node)), "containerd downloaded no lazy layer"
        pod, container = _run_hi(cri, node, "lazy", name)
        served = 0
        for digest in digests:
            size, statuses = _blob_bytes_served(registry, mark, digest)
            assert 200 not in statuses, f"no whole-blob GET of lazy layer {digest}"
            served += size
        assert 0 < served < total * 0.3, f"fetched {served} of {total} bytes"
        # The pause image is plain gzip: containerd downloaded and unpacked it (the pod runs on it).
        assert set(node.sandbox_layers) <= set(_ctr_content(node))
        assert not set(node.sandbox_layers) & node.held_digests()

        cri.remove_container(container)
        cri.remove_pod(pod)
        cri.remove_image(name)
        _wait_released(node, digests)
        assert not set(digests) & node.held_digests(), "RemoveImage + GC released the lazy layers"
        assert not any(d.removeprefix("sha256:")[:16] in line for d in digests for line in node.mounts())
        assert cri.image_status(name) is None
    finally:
        cri.close()


def test_private_image_is_lazy_with_the_pull_requests_credentials_only(
        node: Node, private_registry: AuthRegistry, tmp_path: Path) -> None:
    reg = private_registry
    host, user, password = reg.host, reg.username, reg.password
    server: RegistryServer = reg.server
    name, [digest] = push_lazy_image(tmp_path, f"{host}/private/hi:1", [_specs()],
                                     auth=StaticAuth(user, password))
    blob_size = server.blob_path(digest).stat().st_size
    cri = node.cri(through_lazypull=True)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            cri.pull(name)                       # no credentials anywhere: containerd cannot pull it
        assert "401 Unauthorized" in str(refused.value)
        mark = server.log_mark()
        image_id = cri.pull(name, Auth(username=user, password=password))
        assert digest in node.held_digests(), "mounted lazily with the PullImage credentials"
        pod, container = _run_hi(cri, node, "private", name)
        served, statuses = _blob_bytes_served(server, mark, digest)
        assert 200 not in statuses and 0 < served < blob_size * 0.3, (served, blob_size, statuses)
        cri.remove_container(container)
        cri.remove_pod(pod)
        cri.remove_image(image_id)               # by id, as the kubelet's image GC does
        _wait_released(node, [digest])
        assert digest not in node.held_digests()

        # The credentials went with the image: pulled again straight from containerd (which has them
        # from the request, the snapshotter does not), the layer is downloaded and unpacked instead.
        direct = node.cri(through_lazypull=False)
        try:
            mark = server.log_mark()
            direct.pull(name, Auth(username=user, password=password))
            assert digest not in node.held_digests()
            assert digest in _ctr_content(node)
            _, statuses = _blob_bytes_served(server, mark, digest)
            assert 200 in statuses
            direct.remove_image(name)
        finally:
            direct.close()
        assert password not in node.daemon_log.read_text(), "credentials are never logged"
    finally:
        cri.close()


def test_image_service_refuses_malformed_requests_and_is_root_only(node: Node) -> None:
    assert node.image_socket.stat().st_mode & 0o777 == 0o600
    cri = node.cri(through_lazypull=True)
    try:
        with pytest.raises(grpc.RpcError) as err:
            cri.images("PullImage", b"\x0a\xff")                  # truncated field
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "truncated" in str(err.value)
        secret = "c2VjcmV0LW5vLWNvbG9u"                               # base64 of a string without ':'
        with pytest.raises(grpc.RpcError) as err:
            cri.pull("127.0.0.1:1/x:1", Auth(auth=secret))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not base64 of user:password" in str(err.value) and secret not in str(err.value)
        # other calls pass through: containerd's ImageFsInfo (image_filesystems=1)
        assert [n for n, _, _ in fields(cri.images("ImageFsInfo", b""))][:1] == [1]
    finally:
        cri.close()
