"""Landmark files and the prioritised order of entries (format.md 1.9).

``.prefetch.landmark`` follows the prioritised entries, so a reader prefetches blob bytes
``[0, landmark offset)``; ``.no.prefetch.landmark`` as the first entry says "nothing to prefetch".
Both hold the single byte ``0x0f``.
"""

from __future__ import annotations

PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENTS = b"\x0f"
LANDMARKS = frozenset({PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
