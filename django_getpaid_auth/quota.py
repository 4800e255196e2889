"""Auth0's quota and rate-limit headers, read from token answers, without I/O.

getpaid's token server is Auth0, which limits machine-to-machine tokens per client:

* quotas, per bucket (``per_hour``, ``per_day``), sent on successful answers as well as on
  a 429: ``Auth0-Client-Quota-Limit: b=per_hour;q=10;r=7;t=3540,b=per_day;q=100;r=97;t=86340``
  (``q`` the quota, ``r`` what remains, ``t`` seconds until the bucket resets);
* rate limits: ``x-ratelimit-limit``, ``x-ratelimit-remaining`` and ``x-ratelimit-reset``
  (epoch seconds).

:func:`from_headers` turns them into a :class:`QuotaReport`. The headers come from a
server and are untrusted: a value that is too long, has too many buckets, a number that
is not plain ASCII digits or a remaining count above its quota is ignored (logged at
DEBUG), never an error. :meth:`QuotaReport.to_dict` and :meth:`QuotaReport.from_dict`
carry a report through the shared cache, validating again on the way back.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from . import clock

logger = logging.getLogger("django_getpaid_auth.quota")

QUOTA_HEADERS = ("Auth0-Client-Quota-Limit", "Auth0-Quota-Limit")
#: A bucket whose remaining share falls under this fraction of its quota is "low".
LOW_FRACTION = 0.2
#: Longer header values, more buckets or larger numbers are not believed.
MAX_HEADER_LENGTH = 1024
MAX_BUCKETS = 8
MAX_NUMBER = 10**12
MAX_RESET_SECONDS = 400 * 24 * 3600

_BUCKET_NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")
_DIGITS = re.compile(r"[0-9]{1,13}")
_PERIODS = {"per_hour": "this hour", "per_day": "today", "per_minute": "this minute"}


@dataclass(frozen=True)
class QuotaBucket:
    """One Auth0 quota bucket as last seen: ``remaining`` of ``limit`` until it resets."""

    name: str
    limit: int
    remaining: int
    resets_at: float  # epoch seconds

    @property
    def is_low(self) -> bool:
        """Under LOW_FRACTION of the quota left: time to alert someone."""
        return self.remaining < LOW_FRACTION * self.limit

    def describe(self) -> str:
        """``"7 of 10 left this hour"``."""
        period = _PERIODS.get(self.name, f"({self.name})")
        return f"{self.remaining} of {self.limit} left {period}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.name,
            "limit": self.limit,
            "remaining": self.remaining,
            "resets_at": self.resets_at,
        }


@dataclass(frozen=True)
class RateLimit:
    """Auth0's rate limit as last seen: ``remaining`` of ``limit`` requests until ``resets_at``."""

    limit: int
    remaining: int
    resets_at: float | None  # epoch seconds, None when not sent

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "remaining": self.remaining, "resets_at": self.resets_at}


@dataclass(frozen=True)
class QuotaReport:
    """The quota and rate-limit figures of one token answer, and when it came."""

    seen_at: float  # epoch seconds
    status: int  # the answer's HTTP status (200, 429, ...)
    buckets: tuple[QuotaBucket, ...] = ()
    rate_limit: RateLimit | None = None

    def bucket(self, name: str) -> QuotaBucket | None:
        return next((b for b in self.buckets if b.name == name), None)

    def current_buckets(self, now: float) -> tuple[QuotaBucket, ...]:
        """Buckets whose window has not reset since they were seen (their figures still hold)."""
        return tuple(b for b in self.buckets if b.resets_at > now)

    def low_buckets(self) -> tuple[QuotaBucket, ...]:
        return tuple(b for b in self.buckets if b.is_low)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as kept in the shared cache (epoch seconds)."""
        return {
            "seen_at": self.seen_at,
            "status": self.status,
            "buckets": [b.to_dict() for b in self.buckets],
            "rate_limit": self.rate_limit.to_dict() if self.rate_limit else None,
        }

    @classmethod
    def from_dict(cls, data: Any) -> QuotaReport | None:
        """A report read back from the cache, or None when it is not one we wrote."""
        try:
            seen_at = clock.plausible_epoch(data["seen_at"])
            status = data["status"]
            raw_buckets = data["buckets"]
            raw_limit = data["rate_limit"]
            if (
                seen_at is None
                or type(status) is not int
                or not 100 <= status <= 599
                or not isinstance(raw_buckets, list)
                or len(raw_buckets) > MAX_BUCKETS
            ):
                return None
            buckets = []
            for item in raw_buckets:
                bucket = _checked_bucket(
                    item["bucket"],
                    item["limit"],
                    item["remaining"],
                    clock.plausible_epoch(item["resets_at"]),
                )
                if bucket is None:
                    return None
                buckets.append(bucket)
            rate_limit = None
            if raw_limit is not None:
                resets = raw_limit["resets_at"]
                rate_limit = _checked_rate_limit(
                    raw_limit["limit"],
                    raw_limit["remaining"],
                    None if resets is None else clock.plausible_epoch(resets),
                )
                if rate_limit is None or (resets is not None and rate_limit.resets_at is None):
                    return None
        except (KeyError, TypeError):
            return None
        return cls(seen_at=seen_at, status=status, buckets=tuple(buckets), rate_limit=rate_limit)


def from_headers(headers: Any, *, status: int, now: float) -> QuotaReport | None:
    """The figures in a token answer's headers, or None when it sent none we understand.

    ``headers``: requests', urllib3's or httpx's headers (case-insensitive ``get``).
    ``now``: epoch seconds, for ``t=`` (seconds from now) and ``seen_at``.
    """
    buckets: tuple[QuotaBucket, ...] = ()
    for name in QUOTA_HEADERS:
        value = _header(headers, name)
        if value is not None:
            buckets = parse_quota_header(value, now)
            break
    rate_limit = parse_rate_limit(headers, now)
    if not buckets and rate_limit is None:
        return None
    return QuotaReport(seen_at=now, status=status, buckets=buckets, rate_limit=rate_limit)


def parse_quota_header(value: str, now: float) -> tuple[QuotaBucket, ...]:
    """Every bucket of an ``Auth0-Client-Quota-Limit`` value; () when it is malformed."""
    if len(value) > MAX_HEADER_LENGTH or not value.isascii():
        return _no_buckets("too long or not ASCII")
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    if len(entries) > MAX_BUCKETS:
        return _no_buckets(f"more than {MAX_BUCKETS} buckets")
    buckets: list[QuotaBucket] = []
    for entry in entries:
        fields: dict[str, str] = {}
        for part in entry.split(";"):
            key, sep, number = part.partition("=")
            if not sep or key.strip() in fields:
                return _no_buckets("a part is not key=value, or repeats")
            fields[key.strip()] = number.strip()
        try:
            name, limit, remaining, reset = fields["b"], fields["q"], fields["r"], fields["t"]
        except KeyError:
            return _no_buckets("a bucket lacks b, q, r or t")
        if not all(_DIGITS.fullmatch(n) for n in (limit, remaining, reset)):
            return _no_buckets("q, r and t must be whole numbers")
        # A reset further away than MAX_RESET_SECONDS is believed as that far.
        resets_in = min(int(reset), MAX_RESET_SECONDS)
        bucket = _checked_bucket(name, int(limit), int(remaining), now + resets_in)
        if bucket is None or any(b.name == bucket.name for b in buckets):
            return _no_buckets("bad bucket name, r above q, or a repeated bucket")
        buckets.append(bucket)
    return tuple(buckets)


def parse_rate_limit(headers: Any, now: float) -> RateLimit | None:
    """``x-ratelimit-*`` as a RateLimit; None when limit or remaining is missing or bad."""
    limit = _header(headers, "x-ratelimit-limit")
    remaining = _header(headers, "x-ratelimit-remaining")
    if limit is None and remaining is None:
        return None
    if (
        limit is None
        or remaining is None
        or not _DIGITS.fullmatch(limit)
        or not _DIGITS.fullmatch(remaining)
    ):
        return _no_rate_limit("limit and remaining must be whole numbers")
    reset = _header(headers, "x-ratelimit-reset")
    resets_at: float | None = None
    if reset is not None:
        if not _DIGITS.fullmatch(reset):
            return _no_rate_limit("reset must be a whole number")
        resets_at = now + min(reset_in(int(reset), now), MAX_RESET_SECONDS)  # at most that far
    checked = _checked_rate_limit(int(limit), int(remaining), resets_at)
    if checked is None:
        return _no_rate_limit("remaining above limit")
    return checked


def reset_in(value: int, now: float) -> float:
    """Seconds from ``now`` until an ``x-ratelimit-reset`` value: epoch seconds (Auth0)
    or, from some servers, seconds from now (any value up to 10**9)."""
    return value - now if value > 10**9 else float(value)


def _header(headers: Any, name: str) -> str | None:
    value = headers.get(name) if hasattr(headers, "get") else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value.strip() if isinstance(value, str) else None


def _checked_bucket(name: Any, limit: Any, remaining: Any, resets_at: Any) -> QuotaBucket | None:
    if (
        not isinstance(name, str)
        or not _BUCKET_NAME.fullmatch(name)
        or not _count(limit)
        or not _count(remaining)
        or remaining > limit
        or not isinstance(resets_at, float)
    ):
        return None
    return QuotaBucket(name=name, limit=limit, remaining=remaining, resets_at=resets_at)


def _checked_rate_limit(limit: Any, remaining: Any, resets_at: Any) -> RateLimit | None:
    if not _count(limit) or not _count(remaining) or remaining > limit:
        return None
    if resets_at is not None and not isinstance(resets_at, float):
        return None
    return RateLimit(limit=limit, remaining=remaining, resets_at=resets_at)


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_NUMBER


def _no_buckets(why: str) -> tuple[QuotaBucket, ...]:
    logger.debug("ignored Auth0's quota header from the token server: %s", why)
    return ()


def _no_rate_limit(why: str) -> RateLimit | None:
    logger.debug("ignored the rate-limit headers from the token server: %s", why)
    return None
