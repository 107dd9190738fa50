"""``lazypull daemon``: the mount server process. Serves the JSON-lines API on ``run/lazypull.sock``.

On start it takes the pidfile lock (one server per root) and starts listening; then, while a ping
is already answered, it takes back the live connections the keeper holds, detaches lazypull FUSE
mounts a dead predecessor left under the root (they answer ENOTCONN) and mounts again what
``run/state.json`` lists; every other request waits for that. SIGTERM/SIGINT unmount everything and
exit; the state file stays, so the next server restores the mounts.

The additional layer stores (``lazypull.store``) run here too, but this package does not import them:
whoever starts the server hands it a :data:`StoreServiceFactory` (``lazypull.cli.daemon`` does).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import logging
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lazypull.errors import LazypullError, MountError
from lazypull.fdlimit import raise_fd_limit
from lazypull.fs import FsConfig, clean_stale_mounts, load_config
from lazypull.image.partials import clean_all_partials
from lazypull.image.rootdir import prepare_root, private_dir
from lazypull.layerdir import snapshots_dir
from lazypull.snapshot.manager import LayerManager
from lazypull.snapshot.paths import RunPaths
from lazypull.snapshot.protocol import MAX_LINE, decode, encode, error_reply

if TYPE_CHECKING:
    from lazypull.image.store import Store

log = logging.getLogger(__name__)

RESTORE_WAIT = 120.0
LOCK_WAIT = 2.0          # s a starting server retries the pidfile lock (probes hold it for a moment)
STORE_OPS = ("serve_store", "stop_store", "list_stores")
ANSWER_GRACE = 0.5       # s a server that cannot start keeps answering why before it stops
#: s after listening a server that got no request (but ping and status) warms up anyway
WARM_UP_DELAY = 1.0


class StoreService(Protocol):
    """The additional layer stores this server serves (``lazypull.store.service.Stores``)."""

    def request(self, op: str, args: dict[str, Any]) -> Any:
        """A client's request, one of :data:`STORE_OPS`; its result."""

    def restore(self) -> None:
        """Serve again what the previous server served (``run/stores.json``)."""

    def ensure(self, request: Any) -> Any:
        """Serve the store ``request`` (wire form) unless it is served already."""

    def close(self) -> None:
        """Unmount every store (the server stops)."""


#: Makes the stores of a server's layer manager, on their first use (a server without stores never
#: imports them: ~50 ms of a first start).
StoreServiceFactory = Callable[[LayerManager], StoreService]


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        while True:
            try:
                line = self.rfile.readline(MAX_LINE + 1)
            except OSError:
                return
            if not line:
                return
            request: dict[str, Any] | None = None
            try:
                request = decode(line)
                reply = self.server.daemon.dispatch(request)
            except Exception as err:
                if not isinstance(err, LazypullError):
                    log.exception("request failed")
                reply = error_reply(err)
            try:
                self.wfile.write(encode(reply))
                self.wfile.flush()
            except OSError:
                if request is not None and reply.get("ok"):
                    self.server.daemon.abandoned(request)
                return


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: str, daemon: MountDaemon) -> None:
        self.daemon = daemon
        super().__init__(path, _Handler)


class MountDaemon:
    """One running server: the pidfile lock, the manager and the socket."""

    def __init__(self, root: Path, config: FsConfig | None = None, *, containerd_socket: Path | None = None,
                 insecure_registries: bool = False, cri_image_service: tuple[Path, Path] | None = None,
                 metrics_address: str | None = None, stores: Sequence[dict[str, Any]] = (),
                 store_service: StoreServiceFactory | None = None,
                 **manager_args: Any) -> None:
        self.root = root
        self.store_requests = list(stores)      # additional layer stores to serve (``daemon --store``)
        self._store_service = store_service
        self.containerd_socket = containerd_socket
        self.insecure_registries = insecure_registries
        self.cri_image_service = cri_image_service        # (our socket, containerd's CRI socket)
        self._snapshot_service: Any = None
        self._cri_service: Any = None
        self.paths = RunPaths(root)
        self.config = config or load_config(root)
        self.manager = LayerManager(root, self.config, **manager_args)
        self.restored = threading.Event()
        self._requested = threading.Event()    # a request that waits for the restore came ...
        self._answered = threading.Event()     # ... and was answered: the warm-up may run
        self._warmed = threading.Event()       # the warm-up is done (once: its thread or a ping asking)
        self._warm_lock = threading.Lock()
        self._start_error: str | None = None      # why the clean-up before the restore failed
        self._server: _Server | None = None
        self._pidfile: Any = None
        self._unmount_on_exit = True
        self.metrics_address = metrics_address      # HOST:PORT of the Prometheus endpoint, if any
        self._metrics: Any = None
        self._stores: StoreService | None = None    # made on first use
        self._stores_lock = threading.Lock()

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        args = request.get("args")
        args = {} if args is None else args
        if not isinstance(args, dict):
            raise MountError("request args must be an object")
        if op == "ping":
            warm = args.get("warm", False)
            if not isinstance(warm, bool):
                raise MountError(f"ping: warm must be true or false, not {warm!r}")
            if warm:        # answered once warm, as a server started long before is (bench's reset)
                self._warm()
            metrics = self._metrics
            return {"ok": True, "result": {
                "pid": os.getpid(), "root": str(self.root), "restored": self.restored.is_set(),
                "warm": self._warmed.is_set(),
                "uptime": self.manager.uptime(),
                "metrics": f"{metrics.host}:{metrics.port}" if metrics is not None else None}}
        if op == "status":       # lazypull daemon status: no waiting for the restore
            status = dict(self.dispatch({"op": "ping"})["result"])
            status.update(cache_bytes=self.manager.cache_bytes(), cache_dir=str(self.manager.cache.dir),
                          totals=self.manager.totals())
            return {"ok": True, "result": status}
        if op == "shutdown":
            self._unmount_on_exit = bool(args.get("unmount", True))
            threading.Thread(target=self.stop, daemon=True).start()
            return {"ok": True, "result": None}
        self._requested.set()
        self.restored.wait(RESTORE_WAIT)
        try:
            return self._dispatch_restored(op, args)
        finally:
            self._answered.set()

    def _dispatch_restored(self, op: object, args: dict[str, Any]) -> dict[str, Any]:
        """The requests that wait for the restore."""
        if self._start_error is not None:
            raise MountError(self._start_error)
        m = self.manager
        result: Any
        if op == "pull_image":
            result = self._pull_image(args)
        elif op == "mount_image":
            holder = _opt_str(args, "holder")
            program = args.get("program")       # checked before anything is mounted
            if program is not None and not isinstance(program, dict):
                raise MountError("mount_image: program must be an object")
            hint = (_str(program, "argv0"), _opt_str(program, "path"), _opt_str(program, "cwd") or "/") \
                if program is not None else None
            layers = m.mount_image(_str(args, "image"), insecure=bool(args.get("insecure")), holder=holder)
            if hint is not None:
                m.expect_program(layers, *hint)
            wait = args.get("wait_prefetch")
            if wait if wait is not None else holder is not None:
                m.wait_prefetch([lm.digest for lm in layers if lm.lazy], self.config.prefetch_timeout)
            result = [lm.to_json() for lm in layers]
        elif op == "release_image":
            m.release_image(_str(args, "image"), holder=_opt_str(args, "holder"))
            result = None
        elif op == "wait_prefetch":
            digests = args.get("digests")
            if not isinstance(digests, list):
                raise MountError("wait_prefetch: digests must be a list")
            timeout = args.get("timeout")
            if timeout is None:
                timeout = self.config.prefetch_timeout
            if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
                raise MountError(f"wait_prefetch: bad timeout {timeout!r}")
            result = m.wait_prefetch([str(d) for d in digests], float(timeout))
        elif op == "unmount_unused":
            result = m.unmount_unused()
        elif op == "list_mounts":
            result = [mi.to_json() for mi in m.list_mounts()]
        elif op == "stats":
            result = m.stats()
            result["pid"] = os.getpid()
        elif op in STORE_OPS:
            result = self.stores().request(op, args)
        else:
            raise MountError(f"unknown request {op!r}")
        return {"ok": True, "result": result}

    def abandoned(self, request: dict[str, Any]) -> None:
        """The client went away before the reply (a ``run`` killed while its layers were mounted): a
        hold it took is dropped, as nobody knows of it (its own release may have come first). A pull's
        hold is found by its holder (the image's stored name is in the reply only)."""
        args = request.get("args")
        if request.get("op") not in ("mount_image", "pull_image") or not isinstance(args, dict):
            return
        holder, image = args.get("holder"), args.get("image", args.get("ref"))
        if isinstance(holder, str) and isinstance(image, str):
            with contextlib.suppress(LazypullError):
                self.manager.release_image(image, holder=holder)
                log.info("released the hold of %s on %s: its client left before the reply", holder, image)

    def _pull_image(self, args: dict[str, Any]) -> dict[str, Any]:
        """A lazy pull done here rather than in the CLI process: manifests and config into the store
        with the server's warm registry client (its connection then serves the TOC reads), then the
        image's layers mounted, held by ``holder`` (a container ``run`` creates) or else by the image
        itself. Returns the stored name, the manifest digest and the layer mounts."""
        from lazypull.image.platform import parse_platform
        from lazypull.image.pull import pull_image

        ref = _str(args, "ref")
        holder = _opt_str(args, "holder")
        insecure = bool(args.get("insecure"))
        names = args.get("platforms")
        if names is not None and (not isinstance(names, list)
                                  or not all(isinstance(n, str) and n for n in names)):
            raise MountError("pull_image: platforms must be a list of non-empty strings")
        all_platforms = bool(args.get("all_platforms"))
        platforms = [parse_platform(n) for n in names] if names else None
        run = args.get("run")       # a container's run flags (runtime.spec.run_request): its program
        if run is not None and not isinstance(run, dict):
            raise MountError("pull_image: run must be an object")
        began = time.monotonic()
        # The layers' TOC reads start as soon as the manifest is known, beside the config's fetch.
        premounted, manifest = self.manager.premount(ref, insecure=insecure,
                                                     platform=names[0] if names else None)
        resolved = time.monotonic()
        store = self.manager.store()
        previous = _named(store, ref)       # before the pull names it: the client may have to put it back
        try:
            record = pull_image(store, self.manager.registry_client(insecure), ref,
                                platforms=platforms, all_platforms=all_platforms, fetch_layers=False,
                                manifest=manifest)
        except BaseException:
            self.manager.unmount_unused(only=premounted())
            raise
        metadata = time.monotonic()
        try:
            layers = self.manager.mount_image(record.name, insecure=insecure, holder=holder,
                                              platform=names[0] if names else None)
        except BaseException:       # refused (a DiffID the config contradicts ...): no early mount stays
            self.manager.unmount_unused(only=premounted())
            raise
        hint = self._run_program(record.name, names[0] if names else None, run) if run is not None else None
        if hint is not None:
            self.manager.expect_program(layers, hint["argv0"], hint["path"], hint["cwd"])
        listed = None
        if not all_platforms:       # the client's ``fetching`` lines, so that it need not read the store
            with contextlib.suppress(LazypullError):    # (it then reads it, and says what is wrong)
                listed = store.metadata_of(store.resolve(record.name, names[0] if names else None))
        now = time.monotonic()
        log.info("pulled %s lazily in %.3fs (manifest after %.3fs, stored after %.3fs, %d layers mounted "
                 "after %.3fs more)", ref, now - began, resolved - began, metadata - began,
                 sum(lm.lazy for lm in layers), now - metadata)
        return {"name": record.name, "digest": record.target.digest,
                "layers": [lm.to_json() for lm in layers], "previous": previous,
                "metadata": [list(m) for m in listed] if listed is not None else None}

    def _run_program(self, name: str, platform: str | None, run: dict[str, Any]) -> dict[str, str] | None:
        """What the container ``run`` describes will execute, to fetch ahead in the pull's own request
        (as ``mount_image``'s ``program``); None if there is none or it cannot be told (a head start
        only: the client checks the config itself)."""
        from lazypull.runtime.spec import requested_program

        try:
            return requested_program(self.manager.store().resolve(name, platform).config, name, run)
        except LazypullError as err:
            log.debug("no program fetched ahead for %s: %s", name, err)
            return None

    def stores(self) -> StoreService:
        """The additional layer stores served here (``lazypull store``, docs/podman.md)."""
        with self._stores_lock:
            if self._stores is None:
                if self._store_service is None:
                    raise MountError("this mount server was started without additional layer stores")
                self._stores = self._store_service(self.manager)
            return self._stores

    def _lock_pidfile(self) -> None:
        self.paths.run_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.paths.pidfile, "a+")  # noqa: SIM115 - held for the server's lifetime
        # The lock is never released by hand: the kernel drops it when this process is gone, so no
        # second server starts while a stopping one still has threads (issue 10 item 4). Tried for a
        # moment: a probe (``daemon status``, a client deciding whether to start one) holds it shared.
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as err:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                fh.seek(0)
                other = fh.read().strip()
                fh.close()
                raise MountError(f"another mount server (pid {other or '?'}) runs for {self.root}") from err
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._pidfile = fh

    def start(self) -> None:
        """Lock, listen, then clean up, warm up and restore in the background; returns once listening.

        The clean-up (a running keeper's connections taken back; with none running, nothing is to take
        back and the keeper is started beside the first mounts: ~80 ms; stale mounts detached, partial
        layers removed) runs after listening, before the restore: every
        request but ``ping``, ``status`` and ``shutdown`` waits for the restore (issue 14: a first
        request is served sooner). Not with the containerd services, which use the layers without
        waiting: then it runs first, as it did."""
        prepare_root(self.root)     # before the first mount: layers are served only under 0700 dirs
        private_dir(self.config.chunk_dir(self.root))
        self._lock_pidfile()
        serves_containerd = self.containerd_socket is not None
        if serves_containerd:
            self._clean_up()
        if self.metrics_address is not None:     # before listening: a bad address fails the start
            from lazypull.snapshot.metrics import MetricsServer

            self._metrics = MetricsServer(self.manager, self.metrics_address).start()
            log.info("metrics on http://%s:%d/metrics", self._metrics.host, self._metrics.port)
        sock_path = self.paths.socket
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        old_umask = os.umask(0o077)
        try:
            self._server = _Server(str(sock_path), self)
        finally:
            os.umask(old_umask)
        # After listening (issue 14: a first request is answered ~0.1 s sooner); a request that needs
        # what it imports meanwhile waits on the same import locks, never imports twice.
        threading.Thread(target=self._warm_up, name="warm-up", daemon=True).start()
        threading.Thread(target=self._restore, args=(not serves_containerd,), name="restore",
                         daemon=True).start()
        log.info("mount server %d listening on %s, %.3fs after the process started", os.getpid(), sock_path,
                 _process_age())
        if self.containerd_socket is not None:
            from lazypull.snapshot.proxy.service import SnapshotService
            from lazypull.snapshot.proxy.snapshotter import Snapshotter

            keychain = None
            if self.cri_image_service is not None:
                from lazypull.snapshot.cri.keychain import Keychain
                from lazypull.snapshot.cri.service import ImageServiceProxy

                keychain = Keychain(self.manager.new_client)
                self._cri_service = ImageServiceProxy(keychain, *self.cri_image_service)
            snapshotter = Snapshotter(self.root, self.manager, insecure=self.insecure_registries,
                                      keychain=keychain)
            self._snapshot_service = SnapshotService(snapshotter, self.containerd_socket)
            self._snapshot_service.start()
            if self._cri_service is not None:
                self._cri_service.start()

    def _warm_up(self) -> None:
        """After the first request (or ``WARM_UP_DELAY`` without one): beside it, the warm-up's CPU
        (httpx, the image and pull modules, two TLS set-ups: ~0.1 s) delayed a first mount that needs
        none of it (its TOC recorded on disk; issue 14), and a first pull imports what it needs itself."""
        if self._requested.wait(WARM_UP_DELAY):
            self._answered.wait(RESTORE_WAIT)
        self._warm()

    def _warm(self) -> None:
        """The warm-up, once: by its thread, or first by a ``ping`` that asked to be answered warm."""
        with self._warm_lock:
            if self._warmed.is_set():
                return
            try:
                self.manager.warm_up()
            except Exception:       # only a head start: the first pull imports and connects itself
                log.exception("warming up failed")
            finally:
                self._warmed.set()

    def _clean_up(self) -> None:
        """What a previous server left: its live connections (from the keeper) taken back, its other
        mounts detached, the layers a killed full pull was extracting removed (issue 10 item 7)."""
        # Mounts whose connection the keeper held through a restart are served again, not detached.
        live = self.manager.adopt_kept()
        for point in clean_stale_mounts(snapshots_dir(self.root), live):
            log.warning("detached stale mount %s left by a previous server", point)
        clean_all_partials(self.root)

    def _restore(self, clean_up: bool) -> None:
        try:
            self._restore_mounts(clean_up)
        finally:
            # ``lazypull.__main__`` starts the server with the collector off: its imports (~150k objects)
            # set off full collections, ~5 ms before the first mount (issue 14); the restore's mounts
            # froze what is alive by now (``gc.freeze``), so the next collections do not rescan it.
            gc.enable()
            self.restored.set()

    def _restore_mounts(self, clean_up: bool) -> None:
        began = time.monotonic()
        try:
            if clean_up:
                self._clean_up()
        except Exception as err:    # as when it failed the start: no request is served, the server stops
            log.exception("cleaning up after the previous server failed")
            self._start_error = f"the mount server could not start: {err}"
            # the requests that waited for the restore are answered (with that) before it stops
            threading.Timer(ANSWER_GRACE, self.stop).start()
            return
        cleaned = time.monotonic()
        try:                # the additional layer stores first: podman commands wait on them
            if self.store_requests or _stores_listed(self.paths.stores):
                stores = self.stores()
                stores.restore()
                for request in self.store_requests:
                    stores.ensure(request)
        except Exception:
            log.exception("serving the additional layer stores failed")
        stored = time.monotonic()
        try:
            self.manager.restore()
        except Exception:
            log.exception("restoring mounts failed")
        try:
            self.manager.drop_unclaimed()
        except Exception:
            log.exception("letting go of unclaimed live mounts failed")
        # Where a first request's wait went (issue 14): the process's age says what came before.
        log.info("serving %.3fs after the process started: previous server's leftovers %.3fs, stores "
                 "%.3fs, mounts restored %.3fs", _process_age(), cleaned - began, stored - cleaned,
                 time.monotonic() - stored)

    def serve_forever(self) -> None:
        assert self._server is not None
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop listening, unmount (unless asked not to), release the pidfile."""
        notify_systemd("STOPPING=1")
        if self._server is not None:
            self._server.shutdown()

    def cleanup(self) -> None:
        if self._metrics is not None:
            self._metrics.stop()
        if self._cri_service is not None:
            self._cri_service.stop()
        if self._snapshot_service is not None:
            self._snapshot_service.stop()
        if self._server is not None:
            self._server.server_close()
            with contextlib.suppress(FileNotFoundError):
                self.paths.socket.unlink()
        if self._stores is not None:        # always: a dead store mount fails every podman command
            self._stores.close()
        if self._unmount_on_exit:
            self.manager.close()
        else:       # the mounts stay: their connections must reach the keeper before the process ends
            from lazypull.snapshot.keeper import REPLY_WAIT, START_WAIT

            if not self.manager.wait_keeping(2 * START_WAIT + REPLY_WAIT):
                log.error("stopping before the FUSE connection keeper took layers %s: their mounts end "
                          "with this server", ", ".join(self.manager.unkept()) or "(none)")
        if self._pidfile is not None:
            # Emptied (no pid to find) but kept open and locked until the process ends: see _lock_pidfile.
            with contextlib.suppress(OSError):
                self._pidfile.truncate(0)
                self._pidfile.flush()


def _stores_listed(path: Path) -> bool:
    """Whether ``run/stores.json`` lists a store to serve again: the one a server without stores leaves
    (``[]``) does not, and the store code (~50 ms to import) is not loaded for it. What cannot be read
    goes to the stores' restore, which says what is wrong with it."""
    try:
        return bool(json.loads(path.read_bytes()) != [])
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True


def _named(store: Store, ref: str) -> dict[str, Any] | None:
    """What ``ref`` names in ``store`` now, in a pull reply's wire form; None if nothing or not a valid
    name (the pull itself says so)."""
    try:
        record = store.find_image(ref)
    except LazypullError:
        return None
    return None if record is None else {"name": record.name, "record": record.to_json()}


def run_daemon(root: Path, config: FsConfig | None = None, *, containerd_socket: Path | None = None,
               insecure_registries: bool = False, cri_image_service: tuple[Path, Path] | None = None,
               metrics_address: str | None = None, stores: Sequence[dict[str, Any]] = (),
               store_service: StoreServiceFactory | None = None) -> None:
    """Run the server in the foreground until SIGTERM/SIGINT or a shutdown request.

    ``containerd_socket``: also serve containerd's snapshots API there (proxy plugin).
    ``cri_image_service``: (socket, containerd's CRI socket): also serve the CRI image service there,
    forwarding to containerd and keeping pull credentials for the snapshotter (needs containerd_socket).
    ``metrics_address``: HOST:PORT where Prometheus metrics are served (lazypull.snapshot.metrics).
    ``stores``: additional layer stores to serve (``StoreSpec`` wire forms; docs/podman.md), by
    ``store_service`` (without it, store requests are refused).
    """
    if cri_image_service is not None and containerd_socket is None:
        raise MountError("the CRI image service serves the containerd snapshotter: "
                         "it needs containerd_socket")
    root = root.resolve()
    os.chdir("/")              # do not keep the caller's working directory busy
    raise_fd_limit()
    daemon = MountDaemon(root, config, containerd_socket=containerd_socket,
                         insecure_registries=insecure_registries, cri_image_service=cri_image_service,
                         metrics_address=metrics_address, stores=stores, store_service=store_service)
    daemon.start()
    notify_systemd(f"READY=1\nMAINPID={os.getpid()}")

    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if stopping:                  # a second signal: the operator does not want to wait
            log.warning("signal %d again: exiting now", signum)
            os._exit(128 + signum)
        stopping.append(signum)
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=daemon.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 1
    try:
        daemon.serve_forever()
        code = 0
    except Exception:
        log.exception("mount server failed")
    finally:
        daemon.cleanup()
        log.info("mount server %d stopped", os.getpid())
        # Unmounted and no longer listening: nothing left to wait for. Threads still in network I/O (a
        # fetch retrying until its read deadline, pool threads the interpreter would join) must not
        # keep a stopped server alive for 30 s and more, holding the lock (issue 10 item 4).
        logging.shutdown()
        os._exit(code)


def notify_systemd(state: str) -> None:
    """Tell systemd the server's state (a ``Type=notify`` unit: contrib/systemd/lazypull.service), when
    it started us; the variable is then dropped, so that nothing we start speaks for us."""
    address = os.environ.pop("NOTIFY_SOCKET", None) if state.startswith("READY") else \
        _NOTIFY.get("address")
    if not address:
        return
    _NOTIFY["address"] = address
    target = "\0" + address[1:] if address.startswith("@") else address
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(target)
        sock.sendall(state.encode())


_NOTIFY: dict[str, str] = {}


def _process_age() -> float:
    """Seconds since this process started (to the kernel's clock tick, 10 ms), -1 if unknown."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


def _str(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise MountError(f"request needs a non-empty string {key!r}")
    return value


def _opt_str(args: dict[str, Any], key: str) -> str | None:
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise MountError(f"{key!r} must be a non-empty string")
    return value


__all__ = ["STORE_OPS", "MountDaemon", "StoreService", "StoreServiceFactory", "run_daemon"]
