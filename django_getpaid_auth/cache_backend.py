"""The shared cache (``GETPAID_AUTH["CACHE_ALIAS"]``), made safe to lose.

If the cache backend raises (Redis down, network split), calls fall back to a private
in-process cache for a short while and a warning is logged: tokens are then fetched per
process instead of shared, but no caller fails because of the cache. The shared cache is
tried again after ``RETRY_SHARED_AFTER`` seconds, so sharing resumes on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.locmem import LocMemCache

from .conf import getpaid_settings

logger = logging.getLogger("django_getpaid_auth.cache")

RETRY_SHARED_AFTER = 1.0

_fallback = LocMemCache("django-getpaid-auth-fallback", {"OPTIONS": {"MAX_ENTRIES": 100_000}})
_down_until = 0.0
_lock = threading.Lock()


def key(name: str) -> str:
    return f"{getpaid_settings.CACHE_KEY_PREFIX}:{name}"


def shared() -> BaseCache:
    return caches[getpaid_settings.CACHE_ALIAS]


def is_degraded() -> bool:
    return time.monotonic() < _down_until


WARN_EVERY = 60.0
_last_warning = -WARN_EVERY


def _mark_down(exc: Exception) -> None:
    global _down_until, _last_warning
    with _lock:
        now = time.monotonic()
        _down_until = now + RETRY_SHARED_AFTER
        warn = now - _last_warning >= WARN_EVERY  # once a minute, not once per retry
        if warn:
            _last_warning = now
    if warn:
        logger.warning(
            "Cache %r failed (%s: %s); fetching getpaid tokens per process until it is back.",
            getpaid_settings.CACHE_ALIAS,
            type(exc).__name__,
            str(exc)[:200],
        )


def _call(method: str, *args: Any, **kwargs: Any) -> Any:
    if not is_degraded():
        try:
            return getattr(shared(), method)(*args, **kwargs)
        except Exception as exc:  # any backend error: degrade, never fail the caller
            _mark_down(exc)
    return getattr(_fallback, method)(*args, **kwargs)


def get(name: str, default: Any = None) -> Any:
    return _call("get", name, default)


def get_many(names: Iterable[str]) -> dict[str, Any]:
    return _call("get_many", list(names))


def set(name: str, value: Any, timeout: float | None) -> None:
    _call("set", name, value, timeout)


def add(name: str, value: Any, timeout: float | None) -> bool:
    return bool(_call("add", name, value, timeout))


def delete(name: str) -> None:
    _call("delete", name)


def delete_many(names: Iterable[str]) -> None:
    _call("delete_many", list(names))


def incr(name: str) -> int | None:
    """Increment, or ``None`` when the key does not exist."""

    def _incr(cache: BaseCache) -> int | None:
        try:
            return cache.incr(name)
        except ValueError:  # Django's "key not found"
            return None

    if not is_degraded():
        try:
            return _incr(shared())
        except Exception as exc:
            _mark_down(exc)
    return _incr(_fallback)


def clear_fallback() -> None:
    """Tests: forget what was cached while degraded."""
    global _down_until, _last_warning
    _fallback.clear()
    _down_until = 0.0
    _last_warning = -WARN_EVERY
