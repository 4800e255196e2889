"""Pytest fixtures for the fake getpaid server (registered as a ``pytest11`` entry point).

Kept import-cheap and Django-free at import time: pytest loads it in every
project that installs the package, configured for Django or not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from django_getpaid_auth.testing.fake_getpaid import FakeGetpaid


@pytest.fixture
def fake_getpaid() -> Iterator[FakeGetpaid]:
    """A running :class:`FakeGetpaid` on a free loopback port, stopped after the test."""
    with FakeGetpaid() as fake:
        yield fake


@pytest.fixture
def fake_getpaid_settings(fake_getpaid: FakeGetpaid, settings: Any) -> Iterator[FakeGetpaid]:
    """Point ``settings.GETPAID_AUTH`` at ``fake_getpaid`` (needs pytest-django's ``settings``).

    The existing dict is copied, never mutated, and reassigned so Django's
    ``setting_changed`` signal fires; per-environment keys other than AUDIENCE and
    API_URL (e.g. credentials) are kept. pytest-django restores it afterwards.
    """
    current = dict(getattr(settings, "GETPAID_AUTH", None) or {})
    fragment = fake_getpaid.getpaid_auth_settings()
    environments = {
        name: dict(value) if isinstance(value, dict) else value
        for name, value in (current.get("ENVIRONMENTS") or {}).items()
    }
    for name, values in fragment["ENVIRONMENTS"].items():
        merged = dict(environments.get(name) or {})
        merged.update(values)
        environments[name] = merged
    current["TOKEN_URL"] = fragment["TOKEN_URL"]
    current["ENVIRONMENTS"] = environments
    settings.GETPAID_AUTH = current
    yield fake_getpaid
