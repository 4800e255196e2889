"""The one clock every expiry decision reads; tests replace ``now`` to move time."""

from __future__ import annotations

import time


def now() -> float:
    """Seconds since the epoch (``time.time``)."""
    return time.time()
