"""The one clock every expiry decision reads; tests replace ``now`` to move time."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

#: Epoch seconds a stored time may hold: later than 2001, earlier than 2500. Anything else
#: read back from the cache is garbage (or an attack).
MIN_EPOCH, MAX_EPOCH = 1e9, 1.7e10


def now() -> float:
    """Seconds since the epoch (``time.time``)."""
    return time.time()


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC, to the second (None stays None): the one format
    of every time in ``getpaid_check --json``, ``getpaid_refresh --json`` and the task."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")


def number_within(value: Any, low: float, high: float) -> float | None:
    """``value`` as a float if it is a plain int or float in [low, high], else None.

    Never raises: bools and other types are refused, NaN fails the comparison, and a huge
    int is compared as an int before float() could overflow.
    """
    if type(value) not in (int, float):
        return None
    if type(value) is int and not low <= value <= high:
        return None
    number = float(value)
    return number if low <= number <= high else None


def plausible_epoch(value: Any) -> float | None:
    """``value`` as epoch seconds if it is a plausible one (MIN_EPOCH..MAX_EPOCH), else None."""
    return number_within(value, MIN_EPOCH, MAX_EPOCH)
