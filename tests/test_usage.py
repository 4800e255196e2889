"""Quota figures, token request counts and last use, through real token requests to the fake."""

from __future__ import annotations

import logging
import time

import pytest
from django.dispatch import receiver

from django_getpaid_auth import get_session, get_token, invalidate_token, service
from django_getpaid_auth.exceptions import RateLimitedError
from django_getpaid_auth.quota import QuotaReport
from django_getpaid_auth.signals import token_obtained, token_request_failed
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def tenant(fake_getpaid_settings, canary):
    tenant = make_tenant(slug="quota")
    make_credential(tenant, client_id="quota-client", client_secret=canary)
    fake_getpaid_settings.register_client("quota-client", canary)
    return tenant


def state_of(tenant):
    snapshot = service.credential_for(tenant, None)
    return service.cached_states([snapshot])[snapshot.pk]


def test_figures_of_the_last_answer_are_kept_per_credential(tenant, fake_getpaid_settings):
    fake_getpaid_settings.set_token_quota({"per_hour": 10, "per_day": 100})
    before = time.time()
    get_token(tenant)
    usage = state_of(tenant).usage
    assert usage.quota is not None
    assert usage.quota.status == 200
    assert before <= usage.quota.seen_at <= time.time()
    hour, day = usage.quota.bucket("per_hour"), usage.quota.bucket("per_day")
    assert (hour.limit, hour.remaining) == (10, 9)
    assert (day.limit, day.remaining) == (100, 99)
    assert hour.describe() == "9 of 10 left this hour"
    assert usage.requests_this_hour == 1

    invalidate_token(tenant)
    get_token(tenant)
    usage = state_of(tenant).usage
    assert usage.quota.bucket("per_hour").remaining == 8
    assert usage.requests_this_hour == 2


def test_a_429_answer_updates_the_figures_and_the_count(tenant, fake_getpaid_settings, settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TOKEN_REQUEST_RETRIES": 0}
    fake_getpaid_settings.set_token_quota({"per_hour": 1})
    get_token(tenant)
    invalidate_token(tenant)
    with pytest.raises(RateLimitedError):
        get_token(tenant)
    usage = state_of(tenant).usage
    assert usage.quota.status == 429
    assert usage.quota.bucket("per_hour").remaining == 0
    assert usage.requests_this_hour == 2


def test_rate_limit_headers_are_kept(tenant, fake_getpaid_settings):
    fake_getpaid_settings.set_token_rate_limit(30, window=60)
    get_token(tenant)
    limit = state_of(tenant).usage.quota.rate_limit
    assert (limit.limit, limit.remaining) == (30, 29)
    assert time.time() <= limit.resets_at <= time.time() + 61


def test_malformed_headers_are_ignored_and_requests_still_counted(
    tenant, fake_getpaid_settings, caplog
):
    fake_getpaid_settings.set_token_response_headers(
        {
            "Auth0-Client-Quota-Limit": "b=per_hour;q=ten;r=7;t=3540",
            "x-ratelimit-limit": "-1",
            "x-ratelimit-remaining": "5",
        }
    )
    with caplog.at_level(logging.DEBUG, logger="django_getpaid_auth.quota"):
        token = get_token(tenant)
    assert token.value
    usage = state_of(tenant).usage
    assert usage.quota is None
    assert usage.requests_this_hour == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "django_getpaid_auth.quota"]
    assert any("quota header" in m for m in messages)
    assert any("rate-limit" in m for m in messages)
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name.endswith("quota"))


def test_one_warning_per_bucket_window_when_under_20_percent(tenant, fake_getpaid_settings, caplog):
    fake_getpaid_settings.set_token_quota({"per_hour": 10, "per_day": 1000})
    with caplog.at_level(logging.WARNING, logger="django_getpaid_auth.usage"):
        for _ in range(9):  # remaining 9 .. 1: under 20 % from remaining=1
            invalidate_token(tenant)
            get_token(tenant)
    warnings = [r for r in caplog.records if r.name == "django_getpaid_auth.usage"]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "tenant=" in message and "quota" in message
    assert "environment=sandbox" in message
    assert "per_hour" in message
    assert "1 of 10 left this hour" in message
    assert "per_day" not in message

    # Above 20 % nothing is logged.
    fake_getpaid_settings.reset_token_quota()
    fake_getpaid_settings.set_token_quota({"per_hour": 2})
    with caplog.at_level(logging.WARNING, logger="django_getpaid_auth.usage"):
        caplog.clear()
        invalidate_token(tenant)
        get_token(tenant)  # 1 of 2 left: 50 %, no warning
        assert not [r for r in caplog.records if r.name == "django_getpaid_auth.usage"]


def test_warning_names_the_bucket_of_each_low_bucket_once(tenant, fake_getpaid_settings, caplog):
    fake_getpaid_settings.set_token_quota({"per_hour": 5, "per_day": 5})
    with caplog.at_level(logging.WARNING, logger="django_getpaid_auth.usage"):
        for _ in range(4):  # 4 .. 1 left: under 20 % only at 0? 1 of 5 = 20 %: not under
            invalidate_token(tenant)
            get_token(tenant)
        assert not [r for r in caplog.records if r.name == "django_getpaid_auth.usage"]
        invalidate_token(tenant)
        get_token(tenant)  # 0 of 5 left in both buckets
        invalidate_token(tenant)
        with pytest.raises(RateLimitedError):
            get_token(tenant)  # a 429: still the same windows, no new warning
    warnings = [r.getMessage() for r in caplog.records if r.name == "django_getpaid_auth.usage"]
    assert len(warnings) == 2
    assert sum("per_hour" in w for w in warnings) == 1
    assert sum("per_day" in w for w in warnings) == 1


def test_signals_carry_quota_and_hourly_count(tenant, fake_getpaid_settings, settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "TOKEN_REQUEST_RETRIES": 0}
    fake_getpaid_settings.set_token_quota({"per_hour": 1})
    seen = []

    @receiver(token_obtained, weak=False)
    def on_obtained(sender, **kwargs):
        seen.append(("obtained", kwargs["quota"], kwargs["token_requests_this_hour"]))

    @receiver(token_request_failed, weak=False)
    def on_failed(sender, **kwargs):
        seen.append(("failed", kwargs["quota"], kwargs["token_requests_this_hour"]))

    try:
        get_token(tenant)
        invalidate_token(tenant)
        with pytest.raises(RateLimitedError):
            get_token(tenant)
    finally:
        token_obtained.disconnect(on_obtained)
        token_request_failed.disconnect(on_failed)
    assert [(kind, count) for kind, _, count in seen] == [("obtained", 1), ("failed", 2)]
    assert isinstance(seen[0][1], QuotaReport) and seen[0][1].bucket("per_hour").remaining == 0
    assert seen[1][1].status == 429


def test_last_use_is_written_at_most_once_a_minute_per_process(tenant, fake_getpaid_settings):
    from django_getpaid_auth import usage

    assert state_of(tenant).usage.last_used is None
    get_session(tenant)  # resolves the credential only: not a use of a token
    assert state_of(tenant).usage.last_used is None
    before = time.time()
    get_token(tenant)
    first = state_of(tenant).usage.last_used
    assert first is not None and before <= first <= time.time()

    from django.core.cache import cache

    snapshot = service.credential_for(tenant, None)
    cache.delete(usage.used_key(snapshot))  # so the next write shows
    for _ in range(200):
        get_token(tenant)  # warm path: no write within the minute
    assert state_of(tenant).usage.last_used is None
    usage._used_written[snapshot.pk] -= usage.USED_WRITE_EVERY  # a minute later here...
    get_token(tenant)
    assert state_of(tenant).usage.last_used is None  # ...but another process wrote < 1 min ago
    usage._used_written[snapshot.pk] -= usage.USED_WRITE_EVERY
    cache.delete(usage.used_marker_key(snapshot))  # a minute later for everyone
    get_token(tenant)
    assert state_of(tenant).usage.last_used >= first


def test_api_calls_through_the_session_mark_the_credential_used(tenant, fake_getpaid_settings):
    response = get_session(tenant).get("/v2/payments/pay_quota-client_1")
    assert response.status_code == 200
    assert state_of(tenant).usage.last_used is not None


def test_garbage_in_the_cache_reads_as_nothing_known(tenant, fake_getpaid_settings):
    from django.core.cache import cache

    from django_getpaid_auth import usage

    snapshot = service.credential_for(tenant, None)
    now = time.time()
    for value in [
        "x",
        {"seen_at": "now"},
        {"seen_at": now, "status": 200, "buckets": [{}]},
        [1, 2],
        10**30,
        10**400,
        {"seen_at": 10**400, "status": 200, "buckets": [], "rate_limit": None},
        float("nan"),
        -5,
        True,
    ]:
        for key in usage.keys_of(snapshot, now).values():
            cache.set(key, value)
        state = service.cached_states([snapshot])[snapshot.pk]
        assert state.usage.quota is None
        assert state.usage.requests_this_hour is None
        assert state.usage.last_used is None
    # The counter recovers from garbage: the next request counts from scratch.
    cache.set(usage.count_key(snapshot, time.time()), "garbage")
    get_token(tenant)
    assert state_of(tenant).usage.requests_this_hour == 1


def test_secret_never_reaches_the_stored_figures(tenant, fake_getpaid_settings, canary):
    from django.core.cache import cache

    from django_getpaid_auth import usage

    fake_getpaid_settings.set_token_quota({"per_hour": 10})
    fake_getpaid_settings.set_token_response_headers({"x-ratelimit-limit": canary})
    get_token(tenant)
    snapshot = service.credential_for(tenant, None)
    stored = [cache.get(k) for k in usage.keys_of(snapshot, time.time()).values()]
    assert canary not in repr(stored)
    assert canary not in repr(state_of(tenant))


def test_async_calls_count_and_mark_use_too(tenant, fake_getpaid_settings):
    import asyncio

    from django_getpaid_auth import aget_token

    fake_getpaid_settings.set_token_quota({"per_hour": 10})
    get_session(tenant)  # credential loaded here (SQLite in-memory is not for threads)

    async def main():
        await aget_token(tenant)
        await asyncio.sleep(0)
        await aget_token(tenant)

    asyncio.run(main())
    for _ in range(100):  # the "last used" write runs in a worker thread, not awaited
        if state_of(tenant).usage.last_used is not None:
            break
        time.sleep(0.01)
    usage = state_of(tenant).usage
    assert usage.last_used is not None
    assert usage.requests_this_hour == 1
    assert usage.quota.bucket("per_hour").remaining == 9


def test_garbage_under_the_counter_does_not_degrade_the_cache(tenant, fake_getpaid_settings):
    """On Redis, INCRBY on a pickled value is an error of its own: the counter restarts,
    the cache stays shared (this runs on Redis in CI's PostgreSQL + Redis step)."""
    from django.core.cache import cache

    from django_getpaid_auth import cache_backend, usage

    snapshot = service.credential_for(tenant, None)
    cache.set(usage.count_key(snapshot, time.time()), {"not": "a number"})
    get_token(tenant)
    assert not cache_backend.is_degraded()
    assert state_of(tenant).usage.requests_this_hour == 1


def test_refresh_if_due_never_renews_a_young_token(tenant, fake_getpaid_settings, fake_clock):
    snapshot = service.credential_for(tenant, None)
    first = get_token(tenant)
    assert service.refresh_if_due(snapshot, due_within=3600) is None  # a whole lifetime
    assert fake_getpaid_settings.token_request_count("quota-client") == 1
    fake_clock.advance(first.lifetime / 2 + 1)  # past half its life: now it is due
    renewed = service.refresh_if_due(snapshot, due_within=3600)
    assert renewed is not None and renewed.value != first.value
    assert fake_getpaid_settings.token_request_count("quota-client") == 2
    assert service.refresh_if_due(snapshot, due_within=60) is None  # the new one is fresh


def test_async_warm_call_survives_a_closing_loop(tenant, fake_getpaid_settings):
    import asyncio

    from django_getpaid_auth import aget_token, usage

    get_session(tenant)  # credential loaded here (SQLite in-memory is not for threads)
    snapshot = service.credential_for(tenant, None)

    async def main():
        first = await aget_token(tenant)
        await asyncio.get_running_loop().shutdown_default_executor()
        usage._used_written[snapshot.pk] -= usage.USED_WRITE_EVERY  # the write is due
        second = await aget_token(tenant)  # cannot schedule the write: still served
        return first, second

    first, second = asyncio.run(main())
    assert first.value == second.value
    assert usage.used_write_due(snapshot)  # the lost write is tried again next time
