"""The containerd proxy-plugin endpoint: ``containerd.services.snapshots.v1.Snapshots`` over gRPC on a
unix socket, served by :class:`Snapshotter`. containerd is pointed at it with::

    [proxy_plugins.lazypull]
      type = "snapshot"
      address = "/run/containerd-lazypull-grpc/containerd-lazypull-grpc.sock"

and used with ``ctr-remote image rpull --snapshotter lazypull`` (or CRI with snapshot annotations).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from lazypull.errors import LazypullError
from lazypull.snapshot.protobuf import enc_msg
from lazypull.snapshot.proxy import wire
from lazypull.snapshot.proxy.snapshotter import SnapshotError, Snapshotter
from lazypull.snapshot.proxy.wire import Request

log = logging.getLogger(__name__)

SERVICE = "containerd.services.snapshots.v1.Snapshots"
DEFAULT_SOCKET = Path("/run/containerd-lazypull-grpc/containerd-lazypull-grpc.sock")


def _guard(func: Callable[[Snapshotter, Request], bytes], sn: Snapshotter
           ) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            return func(sn, wire.decode_request(request))
        except SnapshotError as err:
            context.abort(getattr(grpc.StatusCode, err.code), str(err))
        except LazypullError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except Exception as err:
            log.exception("snapshot request failed")
            context.abort(grpc.StatusCode.INTERNAL, f"lazypull snapshotter: {err}")
        raise AssertionError("unreachable")   # context.abort raises

    return handler


def _s(req: Request, number: int) -> str:
    return req["strings"].get(number, "")


def _prepare(sn: Snapshotter, req: Request) -> bytes:
    return wire.enc_mounts(sn.prepare(_s(req, 2), _s(req, 3), req["labels"]))


def _view(sn: Snapshotter, req: Request) -> bytes:
    return wire.enc_mounts(sn.view(_s(req, 2), _s(req, 3), req["labels"]))


def _mounts(sn: Snapshotter, req: Request) -> bytes:
    return wire.enc_mounts(sn.mounts(_s(req, 2)))


def _commit(sn: Snapshotter, req: Request) -> bytes:
    sn.commit(_s(req, 2), _s(req, 3), req["labels"])
    return b""


def _remove(sn: Snapshotter, req: Request) -> bytes:
    sn.remove(_s(req, 2))
    return b""


def _stat(sn: Snapshotter, req: Request) -> bytes:
    return enc_msg(1, wire.enc_info(sn.stat(_s(req, 2))))


def _update(sn: Snapshotter, req: Request) -> bytes:
    raw_info = req["messages"].get(2)
    if raw_info is None:
        raise SnapshotError("INVALID_ARGUMENT", "update without info")
    mask = req["messages"].get(3)
    paths = wire.decode_field_mask(mask) if mask else []
    return enc_msg(1, wire.enc_info(sn.update(wire.decode_info(raw_info), paths)))


def _usage(sn: Snapshotter, req: Request) -> bytes:
    return wire.enc_usage(*sn.usage(_s(req, 2)))


def _cleanup(sn: Snapshotter, req: Request) -> bytes:
    return b""


def _list(sn: Snapshotter) -> Callable[[bytes, grpc.ServicerContext], Iterator[bytes]]:
    def handler(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        infos = sn.list_snapshots()
        for start in range(0, len(infos), 100):
            yield b"".join(enc_msg(1, wire.enc_info(i)) for i in infos[start : start + 100])

    return handler


class SnapshotService:
    """The gRPC server; ``start()`` listens on ``socket``, ``stop()`` closes it."""

    def __init__(self, snapshotter: Snapshotter, socket: Path) -> None:
        self.snapshotter = snapshotter
        self.socket = socket
        self._server: grpc.Server | None = None

    def start(self) -> None:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()
        handlers = {name: grpc.unary_unary_rpc_method_handler(_guard(func, self.snapshotter))
                    for name, func in (("Prepare", _prepare), ("View", _view), ("Mounts", _mounts),
                                       ("Commit", _commit), ("Remove", _remove), ("Stat", _stat),
                                       ("Update", _update), ("Usage", _usage), ("Cleanup", _cleanup))}
        handlers["List"] = grpc.unary_stream_rpc_method_handler(_list(self.snapshotter))
        server = grpc.server(ThreadPoolExecutor(max_workers=8, thread_name_prefix="snapshots-grpc"))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self._server = server
        log.info("containerd snapshotter API on %s", self.socket)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=1).wait(5)
            self._server = None
