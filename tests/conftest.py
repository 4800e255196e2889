"""Shared fixtures: a clean token/credential state per test and a controllable clock."""

from __future__ import annotations

import logging
import uuid

import pytest

from django_getpaid_auth import clock, service


@pytest.fixture(autouse=True)
def _clean_state(settings):
    """Every test gets its own cache key prefix and no process-local state."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "CACHE_KEY_PREFIX": prefix}
    service.reset()
    yield
    service.reset()
    _delete_keys(prefix)
    _close_offloaded_connections()


def _close_offloaded_connections() -> None:
    """Async tests offload ORM calls to asgiref's thread; close that thread's connection,
    or the test database cannot be dropped at the end of the run (PostgreSQL, MariaDB)."""
    import asyncio

    from asgiref.sync import SyncToAsync, sync_to_async
    from django.db import connections

    if getattr(SyncToAsync, "single_thread_executor", None) is None:
        return
    asyncio.run(sync_to_async(connections.close_all, thread_sensitive=True)())


def _delete_keys(prefix: str) -> None:
    """Delete this test's keys only: a shared Redis may serve another run at the same time."""
    from django.core.cache import caches
    from django.core.cache.backends.locmem import LocMemCache

    cache = caches["default"]
    try:
        if isinstance(cache, LocMemCache):
            cache.clear()
        elif hasattr(cache, "_cache") and hasattr(cache._cache, "get_client"):
            client = cache._cache.get_client(write=True)
            keys = list(client.scan_iter(match=f"*:{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
    except Exception:  # a test stopped the cache server: nothing to clean
        pass


class FakeClock:
    """Moves only when told to; replaces django_getpaid_auth.clock.now."""

    def __init__(self, start: float) -> None:
        self.current = start

    def __call__(self) -> float:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += seconds


@pytest.fixture
def fake_clock(monkeypatch):
    fake = FakeClock(clock.now())
    monkeypatch.setattr(clock, "now", fake)
    return fake


@pytest.fixture
def rsps():
    """``responses`` for this test: requests to unregistered URLs fail, unused routes do not."""
    import responses

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def endpoint(rsps):
    """A scripted token endpoint (``django_getpaid_auth.testing.TokenEndpoint``) on ``rsps``."""
    from django_getpaid_auth.testing import TokenEndpoint

    return TokenEndpoint(rsps)


@pytest.fixture
def canary() -> str:
    """A unique secret that must never show up anywhere."""
    return f"CANARY-{uuid.uuid4().hex}"


@pytest.fixture
def all_logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog
