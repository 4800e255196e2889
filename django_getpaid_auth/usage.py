"""Token usage per credential, kept in the shared cache so every process adds to it.

* the quota and rate-limit figures of the last token answer, and when it came
  (:class:`~django_getpaid_auth.quota.QuotaReport`);
* token requests sent in the current clock hour (UTC), counted with the cache's atomic
  ``incr``, so 4 processes count right (on Redis, Memcached or locmem; the database cache's
  ``incr`` is not atomic);
* when the credential was last used, written at most once a minute for all processes
  together (each process tries at most once a minute; a one-minute ``cache.add`` marker
  lets one of them write), and never on the warm path otherwise, so idle credentials can
  be told apart (``getpaid_refresh``).

A bucket under ``quota.LOW_FRACTION`` of its quota logs one WARNING per credential and
bucket window (a ``cache.add`` marker that lives until the bucket resets): when a quota
runs out, every tenant behind that Auth0 client stops at once.

Values read back from the cache are validated; garbage reads as "nothing known".
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import cache_backend, clock
from .conf import getpaid_settings, on_settings_reset
from .credentials import CredentialSnapshot
from .quota import QuotaReport

logger = logging.getLogger("django_getpaid_auth.usage")

HOUR = 3600
COUNT_TIMEOUT = 2 * HOUR + 60  # the current hour's counter outlives the hour
QUOTA_TIMEOUT = 2 * 24 * HOUR  # the last figures seen, kept two days
USED_TIMEOUT = 35 * 24 * HOUR  # "last used" is forgotten after five weeks of silence
USED_WRITE_EVERY = 60.0  # seconds between two "last used" writes of one process
MAX_COUNT = 10**9


@dataclass(frozen=True)
class Usage:
    """What is known of one credential's token usage (any field may be unknown)."""

    quota: QuotaReport | None = None
    requests_this_hour: int | None = None
    last_used: float | None = None  # epoch seconds


def usage_id(snapshot: CredentialSnapshot) -> str:
    """Per credential and Auth0 client: a new client_id starts a new record."""
    identity = "\x1f".join([str(snapshot.pk), snapshot.client_id, getpaid_settings.typed.token_url])
    return hashlib.sha256(identity.encode()).hexdigest()[:24]


def hour_of(now: float) -> int:
    return int(now // HOUR)


def quota_key(snapshot: CredentialSnapshot) -> str:
    return cache_backend.key(f"quota:{usage_id(snapshot)}")


def count_key(snapshot: CredentialSnapshot, now: float) -> str:
    return cache_backend.key(f"requests:{usage_id(snapshot)}:{hour_of(now)}")


def used_key(snapshot: CredentialSnapshot) -> str:
    return cache_backend.key(f"used:{usage_id(snapshot)}")


def used_marker_key(snapshot: CredentialSnapshot) -> str:
    return cache_backend.key(f"used-marker:{usage_id(snapshot)}")


def warned_key(snapshot: CredentialSnapshot, bucket: str) -> str:
    return cache_backend.key(f"quota-warned:{usage_id(snapshot)}:{bucket}")


# --- after each token request ---------------------------------------------------------------


def record_requests(snapshot: CredentialSnapshot, answers: list[QuotaReport | None]) -> Usage:
    """Count the requests one ``request_token`` call sent (``answers``: one item per
    attempt, the figures its answer carried or None) and keep the last figures seen."""
    now = time.time()
    count = None
    if answers:
        count = cache_backend.incr(count_key(snapshot, now), len(answers), COUNT_TIMEOUT)
    report = next((answer for answer in reversed(answers) if answer is not None), None)
    if report is not None:
        cache_backend.set(quota_key(snapshot), report.to_dict(), QUOTA_TIMEOUT)
        _warn_if_low(snapshot, report)
    return Usage(quota=report, requests_this_hour=_count(count))


def _warn_if_low(snapshot: CredentialSnapshot, report: QuotaReport) -> None:
    for bucket in report.low_buckets():
        window = max(1.0, bucket.resets_at - report.seen_at)
        if cache_backend.add(warned_key(snapshot, bucket.name), report.seen_at, window):
            logger.warning(
                "getpaid token quota is low for tenant=%s environment=%s: bucket %s has "
                "%s (resets in %.0fs). When it runs out, every tenant using this client "
                "gets no token until it resets.",
                snapshot.tenant_label,
                snapshot.environment,
                bucket.name,
                bucket.describe(),
                window,
            )


# --- last use -------------------------------------------------------------------------------

_used_written: dict[int, float] = {}
_used_lock = threading.Lock()


@on_settings_reset
def forget_used_writes() -> None:
    with _used_lock:
        _used_written.clear()


def used_write_due(snapshot: CredentialSnapshot) -> bool:
    """True (and marked as done) when this process has not written "last used" for the
    credential in the last USED_WRITE_EVERY seconds. No I/O: safe on the event loop."""
    key = snapshot.pk  # no hashing: this runs on the warm path
    now = time.monotonic()
    last = _used_written.get(key)
    if last is not None and now - last < USED_WRITE_EVERY:
        return False
    with _used_lock:
        last = _used_written.get(key)
        if last is not None and now - last < USED_WRITE_EVERY:
            return False
        _used_written[key] = now
    return True


def used_write_failed(snapshot: CredentialSnapshot) -> None:
    """The due write could not be scheduled: let the next call try again."""
    with _used_lock:
        _used_written.pop(snapshot.pk, None)


def write_used(snapshot: CredentialSnapshot) -> None:
    """Record in the shared cache that the credential was used now: at most once a minute
    for all processes together (a one-minute marker taken with ``cache.add`` decides)."""
    now = time.time()
    if cache_backend.add(used_marker_key(snapshot), now, USED_WRITE_EVERY):
        cache_backend.set(used_key(snapshot), now, USED_TIMEOUT)


def note_used(snapshot: CredentialSnapshot) -> None:
    """``write_used`` when due (sync callers; coroutines offload ``write_used``)."""
    if used_write_due(snapshot):
        write_used(snapshot)


# --- reading it back --------------------------------------------------------------------------


def keys_of(snapshot: CredentialSnapshot, now: float) -> dict[str, str]:
    """The cache keys ``from_values`` needs, by field: for one ``get_many`` with others."""
    return {
        "quota": quota_key(snapshot),
        "count": count_key(snapshot, now),
        "used": used_key(snapshot),
    }


def from_values(keys: Mapping[str, str], values: Mapping[str, Any]) -> Usage:
    """The Usage in ``values`` (a ``get_many`` answer) under ``keys`` (from ``keys_of``)."""
    quota = QuotaReport.from_dict(values.get(keys["quota"]))
    return Usage(
        quota=quota,
        requests_this_hour=_count(values.get(keys["count"])),
        last_used=clock.plausible_epoch(values.get(keys["used"])),
    )


def read(snapshot: CredentialSnapshot) -> Usage:
    keys = keys_of(snapshot, time.time())
    return from_values(keys, cache_backend.get_many(keys.values()))


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value <= MAX_COUNT else None
