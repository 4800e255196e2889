"""Announcements queued during a real cache outage: the background replay and the exit flush.

The outage is a real one: ``CACHE_ALIAS`` points at a Redis cache on a port where nothing
listens (connection refused), and "the cache is back" means pointing it at the test cache
again. The replay worker and the exit hook are the functions the timer and ``atexit`` run.
"""

from __future__ import annotations

import pytest

from django_getpaid_auth import cache_backend

DOWN = {
    "BACKEND": "django.core.cache.backends.redis.RedisCache",
    "LOCATION": "redis://127.0.0.1:1/0",
}


@pytest.fixture
def outage(settings):
    """Returns (go_down, come_back): switch the package's cache alias to a dead server and back."""
    settings.CACHES = {**settings.CACHES, "down": DOWN}

    def go_down() -> None:
        settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "CACHE_ALIAS": "down"}

    def come_back() -> None:
        settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "CACHE_ALIAS": "default"}

    yield go_down, come_back
    cache_backend.clear_fallback()  # no queued write may outlive the test


def test_replay_while_still_down_keeps_the_write_and_tries_again(outage, all_logs):
    go_down, come_back = outage
    go_down()
    key = cache_backend.key("announcement")
    assert cache_backend.write_shared("set", key, "v1", None) is False
    cache_backend._retry_pending(0.5)  # the timer fires while the cache is still down
    assert cache_backend.pending_writes() == 1
    assert cache_backend._retry_timer  # another attempt is scheduled
    come_back()
    cache_backend._retry_pending(0.5)  # the next firing: delivered
    assert cache_backend.pending_writes() == 0
    assert cache_backend.shared().get(key) == "v1"
    assert "queued credential announcements delivered" in all_logs.text


def test_replay_delivers_every_queued_write_in_order(outage, all_logs):
    go_down, come_back = outage
    go_down()
    key = cache_backend.key("announcement")
    other = cache_backend.key("other")
    cache_backend.write_shared("set", key, "first", None)
    cache_backend.write_shared("set", other, "x", None)
    cache_backend.write_shared("set", key, "second", None)
    assert cache_backend.pending_writes() == 3
    come_back()
    cache_backend._retry_pending(0.5)
    assert cache_backend.pending_writes() == 0
    assert cache_backend.shared().get_many([key, other]) == {key: "second", other: "x"}
    # Delivered by the flush that followed the first write, not announced by the worker.
    assert "queued credential announcements delivered" not in all_logs.text


def test_replay_with_nothing_queued_touches_nothing(outage):
    go_down, _ = outage
    go_down()  # a timer left over from an earlier outage: the queue was emptied since
    cache_backend._retry_pending(0.5)
    assert cache_backend.pending_writes() == 0
    assert not cache_backend._retry_timer


def test_writes_still_queued_at_exit_are_delivered(outage):
    go_down, come_back = outage
    go_down()
    key = cache_backend.key("announcement")
    cache_backend.write_shared("set", key, "last words", None)
    come_back()
    cache_backend._flush_at_exit()
    assert cache_backend.pending_writes() == 0
    assert cache_backend.shared().get(key) == "last words"


def test_exit_with_the_cache_still_down_does_not_raise(outage):
    go_down, _ = outage
    go_down()
    key = cache_backend.key("announcement")
    cache_backend.write_shared("set", key, "lost", None)
    cache_backend._flush_at_exit()  # must not raise at interpreter shutdown
    assert cache_backend.pending_writes() == 1
    assert cache_backend.get(key) == "lost"  # this process still sees its own write
