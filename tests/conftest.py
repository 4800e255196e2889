"""Shared fixtures: a clean token/credential state per test and a controllable clock."""

from __future__ import annotations

import logging
import uuid

import pytest

from django_getpaid_auth import cache_backend, clock, credentials, service, token_store


@pytest.fixture(autouse=True)
def _clean_state(settings):
    """Every test starts with an empty cache and no process-local snapshots."""
    from django.core.cache import caches

    settings.GETPAID_AUTH = {
        **settings.GETPAID_AUTH,
        "CACHE_KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}",
    }
    credentials.clear_local_snapshots()
    service.clear_memo()
    token_store._clear_decrypted()
    cache_backend.clear_fallback()
    yield
    credentials.clear_local_snapshots()
    cache_backend.clear_fallback()
    try:
        caches["default"].clear()
    except Exception:  # Redis stopped by a test: nothing to clear
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
def canary() -> str:
    """A unique secret that must never show up anywhere."""
    return f"CANARY-{uuid.uuid4().hex}"


@pytest.fixture
def all_logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog
