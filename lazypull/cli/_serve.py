"""The mount server's process, without click: ``lazypull daemon [--root R] [--debug] [--insecure-registry]``.

That is how every server the CLI starts is run (``selfexec``); parsing it with click cost the server
~20 ms of CPU before its first request (issue 14). ``lazypull.__main__`` hands argv here first; any
other form of ``daemon`` (``--help``, ``--store``, a subcommand ...) goes to click (``cli.daemon``),
whose command calls :func:`serve` too.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lazypull.snapshot.manager import LayerManager
    from lazypull.snapshot.server import StoreService

#: The flags parsed here, and the option of ``cli._options`` each stands for.
_FLAGS = {"--debug": "debug", "--insecure-registry": "insecure"}


def parse_plain(argv: Sequence[str]) -> tuple[Path, bool, bool] | None:
    """``(root, debug, insecure)`` of a plain ``daemon`` argv (what follows ``daemon``, ``--root``
    given: the default root is the CLI's to say), else None."""
    root: Path | None = None
    seen = {"debug": False, "insecure": False}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in _FLAGS:
            seen[_FLAGS[arg]] = True
        elif arg == "--root" and args and args[0] and not args[0].startswith("-"):
            root = Path(args.pop(0))
        elif arg.startswith("--root=") and arg != "--root=":
            root = Path(arg.removeprefix("--root="))
        else:
            return None
    return (root, seen["debug"], seen["insecure"]) if root is not None else None


def main_plain(argv: Sequence[str]) -> None:
    """Run the server for a plain ``daemon`` argv and exit; return (to let click parse it) otherwise."""
    parsed = parse_plain(argv)
    if parsed is None:
        return
    root, debug, insecure = parsed
    try:
        serve(root, debug=debug, insecure=insecure)
    except KeyboardInterrupt:
        sys.stderr.write("lazypull: interrupted\n")
        sys.exit(130)
    except Exception as err:
        from lazypull.cli.main import _is_reported, error_line  # click only on the way out

        if not _is_reported(err):
            raise
        if debug:
            logging.getLogger("lazypull").exception("failed")
        sys.stderr.write(f"lazypull: error: {error_line(err)}\n")
        sys.exit(1)
    sys.exit(0)


def serve(root: Path, *, debug: bool = False, insecure: bool = False, config_file: Path | None = None,
          containerd_socket: Path | None = None, cri: tuple[Path, Path] | None = None,
          metrics_address: str | None = None, stores: Sequence[str] = ()) -> None:
    """Run the mount server of ``root`` in the foreground (``lazypull daemon``; its flags' meanings
    are in ``cli.daemon``)."""
    _start_keeper_early(root)
    from lazypull.fs import load_config
    from lazypull.image.rootdir import prepare_root
    from lazypull.snapshot.server import run_daemon

    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not debug:   # one line per range request is too much for the log
        logging.getLogger("httpx").setLevel(logging.WARNING)
    prepare_root(root)     # 0700 from the start (the server narrows an older store again)
    config = load_config(root, config_file)
    store_requests: list[dict[str, Any]] = []
    if stores:
        from lazypull.store.auth import auth_files

        files = [str(f) for f in auth_files()]
        store_requests = [{"mountpoint": os.path.abspath(d), "insecure": insecure,
                           "auth_files": files} for d in stores]
    run_daemon(root.resolve(), config, containerd_socket=containerd_socket, insecure_registries=insecure,
               cri_image_service=cri, metrics_address=metrics_address, stores=store_requests,
               store_service=_stores)


def _start_keeper_early(root: Path) -> None:
    """Have the root's FUSE connection keeper start (if it does not run) while this process imports
    the server: a keeper started only when the server needs it (the first mount's connection, kept
    once the keeper is up) comes ~80 ms later (issue 14). Only when the CLI started us (its
    ``run/`` exists); a keeper that answers late is started by the server as before. Nothing waits
    for this start: the server's own ``KeeperClient.connect`` waits for a start under way (its
    per-root locks), so it never starts a second keeper (545baac)."""
    import contextlib
    import threading

    # Imported here, not in the thread: two threads importing modules that import each other can
    # fail one of them (the import system's deadlock detection), and this one imports the server next.
    import lazypull.selfexec  # noqa: F401 - what KeeperClient.connect imports when it starts one
    from lazypull.snapshot.keeper import KeeperClient
    from lazypull.snapshot.paths import RunPaths

    paths = RunPaths(root.resolve())
    if not paths.run_dir.is_dir():
        return

    def connect() -> None:
        with contextlib.suppress(Exception):    # the server's own attempt reports what fails
            KeeperClient.connect(paths).close()

    threading.Thread(target=connect, name="keeper-start", daemon=True).start()


def _stores(manager: LayerManager) -> StoreService:
    """The server's additional layer stores, wired here (the one place importing both snapshot and
    store), and imported only once a store is served."""
    from lazypull.store.service import Stores

    return Stores(manager)
