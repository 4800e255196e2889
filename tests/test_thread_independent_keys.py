"""The package's cache keys never depend on thread-local state.

django-tenants' documented cache setup sets ``KEY_FUNCTION`` to a function that prefixes
every key with the current thread's schema. Here a key function of the same kind (a
thread-local "schema") stands in for it, so this runs without PostgreSQL; the real
django-tenants project is tested in tests/test_django_tenants.py.
"""

from __future__ import annotations

import threading

import pytest

from django_getpaid_auth import cache_backend, credentials, get_token, service
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db

_schema = threading.local()


def schema_key(key: str, key_prefix: str, version: int) -> str:
    """Like django_tenants.cache.make_key: the calling thread's schema comes first."""
    return f"{getattr(_schema, 'name', 'public')}:{key_prefix}:{version}:{key}"


@pytest.fixture
def schema_keyed_cache(settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "schema-keyed",
            "KEY_FUNCTION": "tests.test_thread_independent_keys.schema_key",
        }
    }
    _schema.name = "public"
    yield
    _schema.name = "public"


def in_schema(name: str, function, *args):
    """Run ``function`` in another thread whose schema is ``name``; return its result."""
    result: list = []

    def run() -> None:
        _schema.name = name
        result.append(function(*args))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    return result[0]


def test_one_token_for_a_credential_used_from_two_schemas(schema_keyed_cache, endpoint):
    tenant = make_tenant()
    make_credential(tenant)
    credentials.resolve(tenant)  # SQLite in memory: load before other threads ask
    first = get_token(tenant)
    service.clear_memo()
    second = in_schema("a", get_token, tenant)
    assert endpoint.count == 1 and second.value == first.value


def test_a_change_announced_from_public_reaches_schema_a(
    schema_keyed_cache, endpoint, django_capture_on_commit_callbacks
):
    tenant = make_tenant()
    make_credential(tenant)
    before = in_schema("a", credentials.read_generation)
    with django_capture_on_commit_callbacks(execute=True):
        credentials.bump_generation()  # as the admin (public schema) does after a save
    assert in_schema("a", credentials.read_generation) not in (None, before)


def test_keys_are_written_without_the_thread_prefix(schema_keyed_cache):
    _schema.name = "b"
    cache_backend.set(cache_backend.key("probe"), "value", timeout=60)
    raw = cache_backend.shared()
    assert raw.make_key(cache_backend.key("probe")).startswith(":1:")
    assert in_schema("c", cache_backend.get, cache_backend.key("probe")) == "value"
