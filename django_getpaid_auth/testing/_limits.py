"""Auth0's token quota and rate limit, as the fake token endpoint applies them.

Why a module of its own: counting issued tokens per client in hour and day buckets,
counting requests in a rate-limit window, and writing the headers Auth0 sends about
both (``Auth0-Client-Quota-Limit``, ``x-ratelimit-*``) are rules of Auth0's billing,
independent of OAuth and of HTTP serving.

Windows are fixed and aligned to the clock as Auth0's are: the ``per_hour`` bucket
restarts at the top of each UTC hour, ``per_day`` at UTC midnight, and a rate-limit
window of N seconds at multiples of N seconds since the epoch. The quota header's ``t``
and ``x-ratelimit-reset`` count down to those instants.

Standard library only.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "QUOTA_BUCKETS",
    "QUOTA_HEADER",
    "LimitVerdict",
    "TokenLimits",
    "validate_headers",
    "validate_quota",
    "validate_rate_limit",
]

#: Quota buckets Auth0 knows, with the length of their window in seconds.
QUOTA_BUCKETS: dict[str, int] = {"per_hour": 3600, "per_day": 86400}
#: The header Auth0 sends the client's quota figures in.
QUOTA_HEADER = "Auth0-Client-Quota-Limit"

HeaderPairs = tuple[tuple[str, str], ...]
# RFC 9110 field-name token; values may be anything latin-1 without line breaks or NUL
# (a CR or LF would end the header and break the fake's own HTTP framing).
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE_CHARS = re.compile(r"[\r\n\x00]")


@dataclass(frozen=True)
class LimitVerdict:
    """What a quota or rate-limit check decided: headers to send, and a wait when refused."""

    headers: dict[str, str]
    #: Seconds for ``Retry-After`` when the request must be answered 429, else ``None``.
    retry_after: int | None = None


def _count(value: object, what: str, minimum: int) -> int:
    # bool is an int subclass; True as a quota is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


def validate_quota(quota: Mapping[str, int]) -> dict[str, int]:
    """A copy of ``quota`` ({bucket: tokens per window}) or a clear ``TypeError``/``ValueError``.

    An empty mapping is valid: it means "no quota" (e.g. to exempt one client).
    """
    if not isinstance(quota, Mapping):
        raise TypeError(
            f"token quota must be a mapping like {{'per_hour': 10}}, not {type(quota).__name__}"
        )
    checked: dict[str, int] = {}
    for bucket, tokens in quota.items():
        if bucket not in QUOTA_BUCKETS:
            raise ValueError(
                f"unknown token quota bucket {bucket!r}; expected one of {tuple(QUOTA_BUCKETS)}"
            )
        checked[bucket] = _count(tokens, f"token quota {bucket!r}", 0)
    return checked


def validate_rate_limit(limit: int, window: int) -> tuple[int, int]:
    """``(limit, window)`` checked: requests allowed (>= 0) per window of seconds (>= 1)."""
    return _count(limit, "token rate limit", 0), _count(window, "token rate limit window", 1)


def validate_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> HeaderPairs:
    """Extra headers as ``(name, value)`` pairs; pairs may repeat a name (duplicate headers).

    Values are sent verbatim, malformed or not; only what would break HTTP framing
    (CR, LF, NUL, non latin-1) or is not a header name is refused.
    """
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    checked: list[tuple[str, str]] = []
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"token response headers must be (name, value) pairs, got {pair!r}")
        name, value = pair
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise ValueError(f"invalid header name {name!r}")
        if not isinstance(value, str):
            raise TypeError(f"header {name!r}: value must be a str, not {type(value).__name__}")
        if _BAD_VALUE_CHARS.search(value):
            raise ValueError(f"header {name!r}: value must not contain CR, LF or NUL")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"header {name!r}: value must be latin-1 encodable") from None
        checked.append((name, value))
    return tuple(checked)


def _window(now: float, length: int) -> tuple[int, int]:
    """(start, seconds left) of the fixed window of ``length`` seconds holding ``now``."""
    start = int(now // length) * length
    return start, max(1, math.ceil(start + length - now))


class TokenLimits:
    """Per-client token quota and endpoint-wide rate limit of the fake token endpoint.

    Thread-safe: a check and its count happen under one lock, so concurrent requests
    (from any number of client processes) never overshoot a quota. Issued tokens are
    counted per client whether a quota is set or not, as Auth0 counts them.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        #: Time source for windows, ``t`` and resets; tests may swap in a fixed clock.
        self.clock = clock
        #: Answer 429 once a quota or the rate limit is used up (else only report it).
        self.enforce = True
        self._lock = threading.Lock()
        self._default_quota: dict[str, int] = {}
        self._client_quotas: dict[str, dict[str, int]] = {}
        self._issued: dict[tuple[str, str], tuple[int, int]] = {}  # (client, bucket): start, n
        self._rate: tuple[int, int] | None = None  # limit, window
        self._requests: tuple[int, int] = (0, 0)  # window start, requests counted

    # ------------------------------------------------------------------ quota
    def set_quota(self, quota: Mapping[str, int], client_id: str | None = None) -> None:
        """Quota for one client, or the default for clients without their own (``None``)."""
        checked = validate_quota(quota)
        with self._lock:
            if client_id is None:
                self._default_quota = checked
            else:
                self._client_quotas[client_id] = checked

    def clear_quota(self, client_id: str | None = None) -> None:
        """Drop one client's own quota (it falls back to the default), or every quota."""
        with self._lock:
            if client_id is None:
                self._default_quota = {}
                self._client_quotas.clear()
            else:
                self._client_quotas.pop(client_id, None)

    def quota_for(self, client_id: str) -> dict[str, int]:
        """The quota that applies to ``client_id`` (empty when none)."""
        with self._lock:
            return dict(self._client_quotas.get(client_id, self._default_quota))

    def reset_quota(self, client_id: str | None = None) -> None:
        """Forget issued-token counts (one client's or all), as if every window had restarted."""
        with self._lock:
            if client_id is None:
                self._issued.clear()
            else:
                for key in [k for k in self._issued if k[0] == client_id]:
                    del self._issued[key]

    def quota_usage(self, client_id: str) -> dict[str, int]:
        """Tokens issued to ``client_id`` in the current window of each bucket."""
        now = self.clock()
        with self._lock:
            return {
                bucket: self._used(client_id, bucket, _window(now, length)[0])
                for bucket, length in QUOTA_BUCKETS.items()
            }

    def admit_token(self, client_id: str) -> LimitVerdict:
        """Count a token about to be issued, or refuse it when a bucket is used up.

        The quota header (when a quota applies) shows the figures after this token;
        on a refusal it shows ``r=0`` for the exhausted bucket and the verdict's
        ``retry_after`` is that bucket's ``t`` (the longest, if several are exhausted).
        """
        now = self.clock()
        with self._lock:
            quota = self._client_quotas.get(client_id, self._default_quota)
            windows = {bucket: _window(now, length) for bucket, length in QUOTA_BUCKETS.items()}
            used = {b: self._used(client_id, b, windows[b][0]) for b in QUOTA_BUCKETS}
            exhausted = [b for b, q in quota.items() if used[b] >= q]
            refused = bool(exhausted) and self.enforce
            if not refused:
                for bucket in QUOTA_BUCKETS:
                    used[bucket] += 1
                    self._issued[(client_id, bucket)] = (windows[bucket][0], used[bucket])
        if not quota:
            return LimitVerdict({})
        parts = [
            f"b={bucket};q={q};r={max(0, q - used[bucket])};t={windows[bucket][1]}"
            for bucket, q in sorted(quota.items(), key=lambda item: QUOTA_BUCKETS[item[0]])
        ]
        headers = {QUOTA_HEADER: ",".join(parts)}
        if refused:
            return LimitVerdict(headers, max(windows[b][1] for b in exhausted))
        return LimitVerdict(headers)

    def _used(self, client_id: str, bucket: str, start: int) -> int:
        stored_start, count = self._issued.get((client_id, bucket), (start, 0))
        return count if stored_start == start else 0

    # ------------------------------------------------------------------ rate limit
    def set_rate_limit(self, limit: int, window: int = 60) -> None:
        """Allow ``limit`` token requests per ``window`` seconds, across all clients."""
        checked = validate_rate_limit(limit, window)
        with self._lock:
            self._rate = checked

    def clear_rate_limit(self) -> None:
        """No rate limit and no ``x-ratelimit-*`` headers any more."""
        with self._lock:
            self._rate = None

    def reset_rate_limit(self) -> None:
        """Forget the requests counted in the current rate-limit window."""
        with self._lock:
            self._requests = (0, 0)

    def rate_limit_usage(self) -> int:
        """Token requests counted in the current rate-limit window (0 without a limit)."""
        now = self.clock()
        with self._lock:
            if self._rate is None:
                return 0
            start, count = self._requests
            return count if start == _window(now, self._rate[1])[0] else 0

    def admit_request(self) -> LimitVerdict:
        """Count one token request against the rate limit; refuse it when over the limit."""
        now = self.clock()
        with self._lock:
            if self._rate is None:
                return LimitVerdict({})
            limit, length = self._rate
            start, left = _window(now, length)
            counted = self._requests[1] if self._requests[0] == start else 0
            refused = counted >= limit and self.enforce
            if not refused:
                counted += 1
            self._requests = (start, counted)
        headers = {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(0, limit - counted)),
            "x-ratelimit-reset": str(start + length),
        }
        return LimitVerdict(headers, left if refused else None)
