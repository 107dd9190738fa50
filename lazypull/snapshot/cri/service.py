"""The CRI credential path: a ``runtime.v1.ImageService`` (and ``v1alpha2``) on a unix socket that forwards
every call to containerd's CRI plugin and, on the way, records the credentials of each ``PullImage`` in
the :class:`~lazypull.snapshot.cri.keychain.Keychain` for the lazy reads of that image (what
stargz-snapshotter calls its CRI keychain). The kubelet is pointed at it with
``--image-service-endpoint unix:///run/lazypull/cri.sock``; its runtime endpoint stays containerd's.

Calls pass through as bytes (request, response, metadata, deadline, status); only ``PullImage`` and
``RemoveImage`` are decoded. Credentials are recorded before the pull is forwarded (containerd prepares
the snapshots during the pull) and restored to what they were if it fails; ``RemoveImage`` drops them
for every name of the image once containerd removed it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from lazypull.errors import LazypullError
from lazypull.snapshot.cri import messages
from lazypull.snapshot.cri.keychain import Keychain, normalise

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/lazypull/cri.sock")
DEFAULT_UPSTREAM = Path("/run/containerd/containerd.sock")
MAX_MESSAGE = 16 << 20          # the kubelet's own limit for CRI messages
_ID_NAMES_MAX = 4096            # image ids remembered with the names they were pulled as

Handler = Callable[[bytes, grpc.ServicerContext], bytes]


class ImageServiceProxy:
    """The gRPC server; ``start()`` listens on ``socket`` (mode 0600), ``stop()`` closes it."""

    def __init__(self, keychain: Keychain, socket: Path, upstream: Path) -> None:
        self.keychain = keychain
        self.socket = socket
        self.upstream = upstream
        self._server: grpc.Server | None = None
        self._channel: grpc.Channel | None = None
        self._lock = threading.Lock()
        self._id_names: dict[str, set[str]] = {}      # image id -> references pulled as it

    # -- forwarding --

    def _call(self, path: str, request: bytes, context: grpc.ServicerContext | None) -> bytes:
        """One unary call to containerd with the caller's metadata and deadline; raises grpc.RpcError."""
        assert self._channel is not None
        call = self._channel.unary_unary(path)
        metadata: Sequence[tuple[str, str | bytes]] | None = None
        timeout = None
        if context is not None:
            metadata = tuple((m.key, m.value) for m in context.invocation_metadata()
                             if not m.key.startswith((":", "grpc-"))
                             and m.key not in ("user-agent", "content-type", "te"))
            timeout = context.time_remaining()
        response: bytes = call(request, timeout=timeout, metadata=metadata)
        return response

    def _forward(self, service: str, method: str) -> Handler:
        path = f"/{service}/{method}"
        special = {"PullImage": self._pull, "RemoveImage": self._remove}.get(method)

        def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                if special is not None:
                    return special(service, request, context)
                return self._call(path, request, context)
            except grpc.RpcError as err:
                code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
                details = err.details() if isinstance(err, grpc.Call) else str(err)
                context.abort(code, details or "")
            except LazypullError as err:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"lazypull image service: {err}")
            except Exception as err:
                log.exception("CRI %s failed", method)
                context.abort(grpc.StatusCode.INTERNAL, f"lazypull image service: {err}")
            raise AssertionError("unreachable")     # context.abort raises

        return handler

    def _pull(self, service: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        pull = messages.decode_pull_request(request)
        creds = pull.auth.credentials() if pull.auth is not None else None
        key = normalise(pull.image)
        previous = self.keychain.get(pull.image, exact=True)
        recorded = creds is not None and key is not None and self.keychain.add(pull.image, creds)
        log.info("CRI PullImage %s (%s)", key or "(not a reference)",
                 "with credentials" if recorded else "node credentials")
        try:
            response = self._call(f"/{service}/PullImage", request, context)
        except BaseException:
            if recorded:        # a failed pull leaves what an earlier one recorded
                if previous is not None:
                    self.keychain.add(pull.image, previous)
                else:
                    self.keychain.forget(pull.image)
            raise
        image_id = messages.decode_pull_response(response)
        if key is not None and image_id:
            with self._lock:
                if image_id not in self._id_names and len(self._id_names) >= _ID_NAMES_MAX:
                    self._id_names.pop(next(iter(self._id_names)))
                self._id_names.setdefault(image_id, set()).add(key)
        return response

    def _remove(self, service: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        image = messages.spec_of(request)
        names = {image}
        try:        # the kubelet removes by image id: learn the names before they are gone
            status = messages.decode_image_status_response(
                self._call(f"/{service}/ImageStatus", messages.enc_image_request(image), context))
        except grpc.RpcError:
            status = None
        ids = {image}
        if status is not None:
            names.update(status.repo_tags, status.repo_digests)
            ids.add(status.id)
        response = self._call(f"/{service}/RemoveImage", request, context)
        with self._lock:
            for image_id in ids:
                names.update(self._id_names.pop(image_id, ()))
        dropped = [name for name in names if self.keychain.forget(name)]
        if dropped:
            log.info("CRI RemoveImage %s: credentials dropped for %d reference(s)", image, len(dropped))
        return response

    # -- server --

    def start(self) -> None:
        self.socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.socket.exists() or self.socket.is_symlink():
            self.socket.unlink()
        options = [("grpc.max_receive_message_length", MAX_MESSAGE),
                   ("grpc.max_send_message_length", MAX_MESSAGE)]
        self._channel = grpc.insecure_channel(f"unix:{self.upstream}", options=options)
        handlers = [grpc.method_handlers_generic_handler(
            service, {m: grpc.unary_unary_rpc_method_handler(self._forward(service, m))
                      for m in messages.METHODS}) for service in messages.SERVICES]
        server = grpc.server(ThreadPoolExecutor(max_workers=8, thread_name_prefix="cri-images"),
                             options=options)
        server.add_generic_rpc_handlers(handlers)
        old_umask = os.umask(0o077)         # the socket hands out pulls with anyone's credentials
        try:
            server.add_insecure_port(f"unix:{self.socket}")
            server.start()
        finally:
            os.umask(old_umask)
        os.chmod(self.socket, 0o600)
        self._server = server
        log.info("CRI image service on %s, forwarding to %s", self.socket, self.upstream)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=1).wait(5)
            self._server = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
