"""SIGTERM and SIGHUP end a container command the way Ctrl-C does: with an exception.

Their default action kills the process at once, leaving what it had set up: the layer hold in the
mount server, the container's rootfs mount, a ``--rm`` container (issue 10 item 10). Raised as
``SystemExit(128 + N)``, they unwind through the ``except``/``finally`` blocks that undo those, as
docker's ``--rm`` removes the container when the client goes. While a container runs, the runtime
forwards these signals to it instead, and holds them while its clean-up must finish
(``lazypull.runtime.runc``: ``signals_held``).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class _Exit(SystemExit):
    """The command was told to stop by a signal."""


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """Within: SIGTERM/SIGHUP raise ``SystemExit(128 + N)``, once (later ones are ignored, so the
    clean-up they started is not cut short)."""
    raised: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if raised:
            return
        raised.append(signum)
        raise _Exit(128 + signum)

    try:
        previous = {sig: signal.signal(sig, handler) for sig in _SIGNALS}
    except ValueError:      # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
