"""A CRI client of our own (``runtime.v1``) for tests against containerd's CRI plugin: the few messages a
pod's life needs, on lazypull's protobuf wire codec (``lazypull.snapshot.protobuf``), field numbers
from the public ``api.proto``. There is no kubelet or crictl on Debian; this plays the kubelet.

Pods are host-network (no CNI). ``image_socket`` is where image calls go: containerd's own socket, or
lazypull's CRI image service in front of it (the kubelet's ``--image-service-endpoint``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from lazypull.snapshot.cri import messages
from lazypull.snapshot.protobuf import enc_int, enc_map, enc_msg, enc_str, fields, text

RUNTIME = "runtime.v1.RuntimeService"
IMAGES = "runtime.v1.ImageService"
NODE = 2                                   # NamespaceMode.NODE
CONTAINER_RUNNING, CONTAINER_EXITED = 1, 2


def _first_string(raw: bytes, number: int = 1) -> str:
    return next((text(v) for n, _, v in fields(raw) if n == number and isinstance(v, bytes)), "")


@dataclass(frozen=True)
class Auth:
    """AuthConfig as the kubelet sends a pull secret: username=1, password=2 (or auth=3)."""

    username: str = ""
    password: str = ""
    auth: str = ""

    def encode(self) -> bytes:
        return enc_str(1, self.username) + enc_str(2, self.password) + enc_str(3, self.auth)


@dataclass(frozen=True)
class Status:
    """ContainerStatus: state=3, exit_code=7, log_path=15 (of ContainerStatusResponse.status=1)."""

    state: int
    exit_code: int
    log_path: str


class CriClient:
    def __init__(self, runtime_socket: Path, image_socket: Path | None = None) -> None:
        self._runtime = grpc.insecure_channel(f"unix:{runtime_socket}")
        self._images = grpc.insecure_channel(f"unix:{image_socket or runtime_socket}")

    def close(self) -> None:
        self._runtime.close()
        self._images.close()

    def _call(self, channel: grpc.Channel, service: str, method: str, request: bytes,
              timeout: float = 300) -> bytes:
        response: bytes = channel.unary_unary(f"/{service}/{method}")(request, timeout=timeout)
        return response

    def runtime(self, method: str, request: bytes, timeout: float = 300) -> bytes:
        return self._call(self._runtime, RUNTIME, method, request, timeout)

    def images(self, method: str, request: bytes, timeout: float = 300) -> bytes:
        return self._call(self._images, IMAGES, method, request, timeout)

    # -- pods and containers --

    @staticmethod
    def sandbox_config(name: str, log_dir: Path) -> bytes:
        """PodSandboxConfig: metadata=1 (name=1, uid=2, namespace=3), log_directory=3, linux=8
        (LinuxPodSandboxConfig.security_context=2 -> namespace_options=1 -> network=1: NODE)."""
        metadata = enc_str(1, name) + enc_str(2, f"uid-{name}") + enc_str(3, "lazypull-test")
        namespaces = enc_int(1, NODE)
        linux = enc_msg(2, enc_msg(1, namespaces))
        return enc_msg(1, metadata) + enc_str(3, str(log_dir)) + enc_msg(8, linux)

    def run_pod(self, config: bytes) -> str:
        """RunPodSandboxRequest: config=1 -> RunPodSandboxResponse.pod_sandbox_id=1."""
        return _first_string(self.runtime("RunPodSandbox", enc_msg(1, config)))

    def create_container(self, pod: str, pod_config: bytes, name: str, image: str, command: list[str],
                         log_path: str) -> str:
        """CreateContainerRequest: pod_sandbox_id=1, config=2 (ContainerConfig: metadata=1 (name=1),
        image=2 (ImageSpec.image=1), command=3, log_path=11, linux=15 -> security_context=2 ->
        namespace_options=3 -> network=1: NODE), sandbox_config=3."""
        linux = enc_msg(2, enc_msg(3, enc_int(1, NODE)))
        config = (enc_msg(1, enc_str(1, name)) + enc_msg(2, enc_str(1, image))
                  + b"".join(enc_str(3, arg) for arg in command) + enc_str(11, log_path) + enc_msg(15, linux))
        request = enc_str(1, pod) + enc_msg(2, config) + enc_msg(3, pod_config)
        return _first_string(self.runtime("CreateContainer", request))

    def start_container(self, container: str) -> None:
        self.runtime("StartContainer", enc_str(1, container))

    def container_status(self, container: str) -> Status:
        raw = next((v for n, _, v in fields(self.runtime("ContainerStatus", enc_str(1, container)))
                    if n == 1 and isinstance(v, bytes)), b"")
        state = exit_code = 0
        log_path = ""
        for number, _, value in fields(raw):
            if number == 3 and isinstance(value, int):
                state = value
            elif number == 7 and isinstance(value, int):
                exit_code = value - (1 << 64) if value >= 1 << 63 else value
            elif number == 15 and isinstance(value, bytes):
                log_path = text(value)
        return Status(state, exit_code, log_path)

    def wait_exit(self, container: str, timeout: float = 120) -> Status:
        deadline = time.monotonic() + timeout
        while True:
            status = self.container_status(container)
            if status.state == CONTAINER_EXITED:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"container {container} still in state {status.state}")
            time.sleep(0.1)

    def remove_container(self, container: str) -> None:
        self.runtime("StopContainer", enc_str(1, container) + enc_int(2, 0))
        self.runtime("RemoveContainer", enc_str(1, container))

    def list_pods(self) -> list[str]:
        """ListPodSandboxResponse: items=1 (PodSandbox.id=1)."""
        raw = self.runtime("ListPodSandbox", b"")
        return [_first_string(v) for n, _, v in fields(raw) if n == 1 and isinstance(v, bytes)]

    def remove_pod(self, pod: str) -> None:
        self.runtime("StopPodSandbox", enc_str(1, pod))
        self.runtime("RemovePodSandbox", enc_str(1, pod))

    # -- images --

    def pull(self, image: str, auth: Auth | None = None, *, annotations: dict[str, str] | None = None
             ) -> str:
        """PullImageRequest: image=1 (ImageSpec: image=1, annotations=2), auth=2 -> image_ref=1."""
        spec = enc_str(1, image) + enc_map(2, annotations or {})
        request = enc_msg(1, spec) + (enc_msg(2, auth.encode()) if auth is not None else b"")
        return messages.decode_pull_response(self.images("PullImage", request))

    def remove_image(self, image: str) -> None:
        self.images("RemoveImage", messages.enc_image_request(image))

    def image_status(self, image: str) -> messages.ImageNames | None:
        return messages.decode_image_status_response(
            self.images("ImageStatus", messages.enc_image_request(image)))

    def list_image_ids(self) -> list[str]:
        """ListImagesResponse: images=1 (Image.id=1)."""
        raw = self.images("ListImages", b"")
        return [_first_string(v) for n, _, v in fields(raw) if n == 1 and isinstance(v, bytes)]
