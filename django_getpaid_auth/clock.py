"""The one clock every expiry decision reads; tests replace ``now`` to move time."""

from __future__ import annotations

import time
from datetime import datetime, timezone


def now() -> float:
    """Seconds since the epoch (``time.time``)."""
    return time.time()


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC, to the second (None stays None): the one format
    of every time in ``getpaid_check --json``, ``getpaid_refresh --json`` and the task."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")
