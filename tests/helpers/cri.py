"""The CRI client now lives in :mod:`devtools.cri` (shared with bench); re-exported for the tests."""

from devtools.cri import Auth, CriClient

__all__ = ["Auth", "CriClient"]
