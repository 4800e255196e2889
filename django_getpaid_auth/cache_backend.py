"""The shared cache (``GETPAID_AUTH["CACHE_ALIAS"]``), made safe to lose.

If the cache backend raises (Redis down, network split), calls fall back to a private
in-process cache for a short while and a warning is logged: tokens are then fetched per
process instead of shared, but no caller fails because of the cache. The shared cache is
tried again after ``RETRY_SHARED_AFTER`` seconds, so sharing resumes on its own.

Writes that other processes must see (a credential change announcement) are never lost
to an outage: ``write_shared`` keeps a failed write and replays it, in order, as soon as
the shared cache answers again (on the next call, or from a background retry).

Keys never depend on thread-local state. A cache configured with a ``KEY_FUNCTION``
(django-tenants' ``make_key`` prefixes the current thread's schema) is used through a
handle of the package's own: the same backend, location and options with Django's
default key function, so the admin in the public schema, a worker in schema ``a`` and a
background refresh thread all read and write the same keys.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.locmem import LocMemCache
from django.utils.module_loading import import_string

from .conf import getpaid_settings, on_settings_reset

logger = logging.getLogger("django_getpaid_auth.cache")

RETRY_SHARED_AFTER = 1.0

_fallback = LocMemCache("django-getpaid-auth-fallback", {"OPTIONS": {"MAX_ENTRIES": 100_000}})
_down_until = 0.0
_lock = threading.Lock()


def key(name: str) -> str:
    return f"{getpaid_settings.typed.cache_key_prefix}:{name}"


_handles = threading.local()  # like Django's caches: one backend instance per thread
_handles_version = [0]


@on_settings_reset
def _forget_handles() -> None:
    _handles_version[0] += 1


def shared() -> BaseCache:
    """The shared cache, with keys that do not depend on the calling thread."""
    alias = getpaid_settings.CACHE_ALIAS
    params = settings.CACHES.get(alias, {})
    if "KEY_FUNCTION" not in params:
        return caches[alias]
    handle: BaseCache | None = getattr(_handles, "cache", None)
    if handle is None or getattr(_handles, "version", None) != _handles_version[0]:
        handle = _own_handle(params)
        _handles.cache, _handles.version = handle, _handles_version[0]
    return handle


def _own_handle(params: dict[str, Any]) -> BaseCache:
    """``params``' backend without its KEY_FUNCTION (Django's default key function)."""
    options = {k: v for k, v in params.items() if k not in ("BACKEND", "LOCATION", "KEY_FUNCTION")}
    # Every concrete backend takes (location, params), unlike BaseCache itself.
    backend: Callable[[str, dict[str, Any]], BaseCache] = import_string(params["BACKEND"])
    return backend(params.get("LOCATION", ""), options)


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


def _run(work: Callable[[BaseCache], Any]) -> Any:
    """``work(shared cache)``; on any backend error, degrade and do it on the fallback."""
    if not is_degraded():
        if _pending:
            flush_pending()
        try:
            return work(shared())
        except Exception as exc:  # any backend error: degrade, never fail the caller
            _mark_down(exc)
    return work(_fallback)


def _call(method: str, *args: Any, **kwargs: Any) -> Any:
    return _run(lambda cache: getattr(cache, method)(*args, **kwargs))


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


def incr(name: str, delta: int, timeout: float) -> int | None:
    """Add ``delta`` to a counter every process shares (created at 0, expiring after
    ``timeout`` seconds); the new value, or None when the counter could not be kept.

    As atomic as the backend's ``incr`` (Redis, Memcached and locmem are; the database
    cache is not). A value that is not a whole number is replaced.
    """
    result: int | None = _run(lambda cache: _bump(cache, name, delta, timeout))
    return result


def _bump(cache: BaseCache, name: str, delta: int, timeout: float) -> int | None:
    for _ in range(2):
        cache.add(name, 0, timeout)  # a failure here is the cache's: it degrades
        try:
            value = cache.incr(name, delta)
        except ValueError:  # expired between add and incr: add again
            continue
        except Exception:
            # Garbage under the key (Redis, Memcached and locmem each raise their own
            # error): the cache answered, so it is not down; restart the counter rather
            # than degrade every process's token sharing.
            cache.set(name, delta, timeout)
            return delta
        return value if type(value) is int else None
    return None


# --- writes that must reach the shared cache ---------------------------------------------

_pending: list[tuple[str, tuple[Any, ...]]] = []
_pending_lock = threading.Lock()
_retry_timer: list[threading.Timer] = []
RETRY_PENDING_MAX = 30.0


def write_shared(method: str, *args: Any) -> bool:
    """Run a cache write that every process must see; True when it reached the shared cache.

    The write is applied to the private fallback at once (this process sees it even while
    degraded); if the shared cache fails, it is kept and replayed, after the writes queued
    before it, until the shared cache takes it.
    """
    getattr(_fallback, method)(*args)
    with _pending_lock:
        _pending.append((method, args))
    return flush_pending()


def flush_pending() -> bool:
    """Replay queued writes in order; False (and a retry scheduled) if the cache still fails."""
    with _pending_lock:
        while _pending:
            method, args = _pending[0]
            try:
                getattr(shared(), method)(*args)
            except Exception as exc:  # still down: keep the write, try again later
                _mark_down(exc)
                _schedule_retry(RETRY_SHARED_AFTER)
                return False
            _pending.pop(0)
    return True


def pending_writes() -> int:
    return len(_pending)


def _schedule_retry(delay: float) -> None:
    with _lock:
        if _retry_timer and _retry_timer[0].is_alive():
            return
        timer = threading.Timer(delay, _retry_pending, args=(delay,))
        timer.daemon = True
        timer.name = "getpaid-cache-replay"
        _retry_timer[:] = [timer]
    timer.start()


def _retry_pending(delay: float) -> None:
    with _lock:
        _retry_timer.clear()
    with _pending_lock:
        if not _pending:
            return
        method, args = _pending[0]
    try:
        getattr(shared(), method)(*args)
    except Exception:
        _schedule_retry(min(RETRY_PENDING_MAX, delay * 2))
        return
    with _pending_lock:
        if _pending and _pending[0] == (method, args):
            _pending.pop(0)
    if _pending:
        flush_pending()
    else:
        logger.warning(
            "Cache %r is back: queued credential announcements delivered.",
            getpaid_settings.CACHE_ALIAS,
        )


@atexit.register
def _flush_at_exit() -> None:
    if _pending:
        with contextlib.suppress(Exception):  # interpreter shutting down: nothing more
            flush_pending()


def clear_fallback() -> None:
    """Tests: forget what was cached while degraded, and any queued write."""
    global _down_until, _last_warning
    with _pending_lock:
        _pending.clear()
    _fallback.clear()
    _down_until = 0.0
    _last_warning = -WARN_EVERY
