"""aget_token / ainvalidate_token against the fake getpaid over real HTTP: one token for
sync and async callers, single flight among coroutines, threads and their loops, the warm
path without SQL or cache round trips, cancellation, and a loop that never stalls."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_getpaid_auth import (
    aget_token,
    ainvalidate_token,
    cache_backend,
    get_token,
    service,
    token_store,
)
from django_getpaid_auth.exceptions import InvalidClientError, RateLimitedError
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tenant(fake_getpaid_settings, canary):
    tenant = make_tenant(slug="async")
    make_credential(tenant, client_id="async-client", client_secret=canary)
    fake_getpaid_settings.register_client("async-client", canary)
    return tenant


def count(fake) -> int:
    return fake.token_request_count("async-client")


def test_aget_token_is_the_sync_token(tenant, fake_getpaid_settings):
    token = asyncio.run(aget_token("async"))
    assert fake_getpaid_settings.verify_token(token.value)["sub"] == "async-client@clients"
    service.clear_memo()  # the sync call reads the shared cache entry, not the memo
    assert get_token("async").value == token.value
    assert count(fake_getpaid_settings) == 1


def test_sync_token_is_used_by_async(tenant, fake_getpaid_settings):
    token = get_token(tenant)
    service.reset()
    assert asyncio.run(aget_token(tenant)).value == token.value
    assert count(fake_getpaid_settings) == 1


def test_500_coroutines_on_a_cold_cache_make_one_token_request(tenant, fake_getpaid_settings):
    fake_getpaid_settings.token_latency = 0.2

    async def main():
        return await asyncio.gather(*(aget_token("async") for _ in range(500)))

    tokens = asyncio.run(main())
    assert len({t.value for t in tokens}) == 1
    print(f"500 coroutines: {count(fake_getpaid_settings)} token request(s)")
    assert count(fake_getpaid_settings) == 1


def test_threads_with_their_own_loops_and_sync_threads_share_one_fetch(
    tenant, fake_getpaid_settings
):
    fake_getpaid_settings.token_latency = 0.3
    results, errors = [], []
    barrier = threading.Barrier(12)

    def async_worker():
        barrier.wait()

        async def many():
            return await asyncio.gather(*(aget_token("async") for _ in range(20)))

        try:
            results.extend(t.value for t in asyncio.run(many()))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def sync_worker():
        barrier.wait()
        try:
            results.append(get_token("async").value)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=async_worker) for _ in range(8)]
    threads += [threading.Thread(target=sync_worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert len(results) == 8 * 20 + 4 and len(set(results)) == 1
    print(f"8 loops x 20 coroutines + 4 sync threads: {count(fake_getpaid_settings)} request(s)")
    assert count(fake_getpaid_settings) == 1


def test_warm_path_runs_no_sql_and_no_cache_round_trip(tenant, fake_getpaid_settings, monkeypatch):
    first = asyncio.run(aget_token("async"))
    calls = []
    for name in ("get", "get_many", "set", "add", "delete", "delete_many"):
        original = getattr(cache_backend, name)
        monkeypatch.setattr(
            cache_backend,
            name,
            lambda *a, _n=name, _o=original, **k: calls.append(_n) or _o(*a, **k),
        )
    threads_before = set(threading.enumerate())

    async def warm():
        loop_thread = threading.get_ident()
        for _ in range(200):
            token = await aget_token("async")
            assert token.value == first.value
            assert threading.get_ident() == loop_thread

    with CaptureQueriesContext(connection) as queries:
        asyncio.run(warm())
    assert len(queries) == 0
    assert calls == []
    assert count(fake_getpaid_settings) == 1
    assert not {t for t in threading.enumerate() if t.name.startswith("asyncio")} - threads_before


def test_ainvalidate_token_fetches_a_new_one(tenant, fake_getpaid_settings):
    async def main():
        first = await aget_token("async")
        await ainvalidate_token("async")
        second = await aget_token("async")
        forced = await aget_token("async", force_refresh=True)
        return first, second, forced

    first, second, forced = asyncio.run(main())
    assert len({first.value, second.value, forced.value}) == 3
    assert count(fake_getpaid_settings) == 3


def test_cancelled_waiters_do_not_cancel_the_fetch_and_leave_no_lease(
    tenant, fake_getpaid_settings
):
    fake_getpaid_settings.token_latency = 0.3

    async def main():
        leader = asyncio.ensure_future(aget_token("async"))
        waiters = [asyncio.ensure_future(aget_token("async")) for _ in range(20)]
        await asyncio.sleep(0.1)
        leader.cancel()  # the caller that started the fetch
        for waiter in waiters[:10]:
            waiter.cancel()
        done = await asyncio.gather(*waiters[10:])
        with pytest.raises(asyncio.CancelledError):
            await leader
        return done

    tokens = asyncio.run(main())
    assert len({t.value for t in tokens}) == 1
    assert count(fake_getpaid_settings) == 1
    snapshot = service.credential_for("async", None)
    assert cache_backend.get(token_store.lease_key(snapshot)) is None


def test_loop_shutdown_during_the_fetch_leaves_no_lease(tenant, fake_getpaid_settings):
    fake_getpaid_settings.token_latency = 0.3

    async def main():
        pending = asyncio.ensure_future(aget_token("async"))
        await asyncio.sleep(0.1)  # asyncio.run now cancels the pending fetch
        assert not pending.done()

    asyncio.run(main())
    snapshot = service.credential_for("async", None)
    assert cache_backend.get(token_store.lease_key(snapshot)) is None
    assert not token_store._flights


def test_the_event_loop_never_stalls_while_100_coroutines_wait(
    tenant, fake_getpaid_settings, canary
):
    # One-time set-up per process (imports, the SSL context, the thread pool's database
    # connection) may run on a loop; warm it with another credential, in another loop.
    other = make_tenant(slug="warm-up")
    make_credential(other, client_id="warm-client", client_secret=canary)
    fake_getpaid_settings.register_client("warm-client", canary)
    asyncio.run(aget_token("warm-up"))
    fake_getpaid_settings.token_latency = 0.3
    lateness: list[float] = []

    async def heartbeat(stop):
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            planned = loop.time() + 0.005
            await asyncio.sleep(0.005)
            lateness.append(loop.time() - planned)

    async def main():
        stop = asyncio.Event()
        beat = asyncio.ensure_future(heartbeat(stop))
        await asyncio.sleep(0.02)
        started = time.monotonic()
        tokens = await asyncio.gather(*(aget_token("async") for _ in range(100)))
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.02)
        stop.set()
        await beat
        return tokens, elapsed

    # A full collection of the test process's heap (pytest, Django) pauses every thread
    # for ~70 ms whatever the code: move what exists now out of the collector's way.
    gc.collect()
    gc.freeze()
    try:
        tokens, elapsed = asyncio.run(main())  # a new loop, a cold credential
    finally:
        gc.unfreeze()
    worst = max(lateness)
    print(
        f"heartbeat max lateness: {worst * 1000:.1f} ms over {len(lateness)} ticks; "
        f"100 waiters took {elapsed * 1000:.0f} ms"
    )
    assert len({t.value for t in tokens}) == 1 and count(fake_getpaid_settings) == 1
    assert elapsed >= 0.3
    assert worst < 0.05


def test_typed_errors_failure_memory_and_no_secret(tenant, fake_getpaid_settings, canary, all_logs):
    fake_getpaid_settings.register_client("async-client", "another-secret")  # ours is refused

    async def twice():
        errors = []
        for _ in range(2):
            try:
                await aget_token("async")
            except InvalidClientError as exc:
                errors.append(exc)
        return errors

    errors = asyncio.run(twice())
    assert len(errors) == 2  # the second from failure memory
    assert fake_getpaid_settings.token_requests_received("async-client") == 1
    for error in errors:
        assert canary not in str(error) and canary not in repr(error.to_dict())
    assert canary not in all_logs.text


def test_rate_limit_is_remembered_for_sync_and_async(tenant, fake_getpaid_settings, settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "MAX_RETRY_AFTER": 0}
    fake_getpaid_settings.fail_next_token_requests("429", retry_after=30)
    with pytest.raises(RateLimitedError):
        asyncio.run(aget_token("async"))
    with pytest.raises(RateLimitedError):
        get_token("async")
    assert fake_getpaid_settings.token_requests_received("async-client") == 1


def test_coroutines_share_one_reread_when_the_memo_expires(
    tenant, fake_getpaid_settings, monkeypatch
):
    first = asyncio.run(aget_token("async"))
    reads = []
    original = service.read_cached
    monkeypatch.setattr(service, "read_cached", lambda *args: reads.append(args) or original(*args))
    service.clear_memo()  # what LOCAL_CACHE_TIMEOUT's expiry does

    async def main():
        tokens = await asyncio.gather(*(aget_token("async") for _ in range(100)))
        again = await aget_token("async")  # the memo is back: no further read
        return tokens, again

    tokens, again = asyncio.run(main())
    assert {t.value for t in tokens} == {again.value} == {first.value}
    assert len(reads) == 1  # one cache re-read for 100 coroutines, not one each
    assert count(fake_getpaid_settings) == 1


def test_a_failed_reread_reaches_every_waiter_and_is_not_kept(
    tenant, fake_getpaid_settings, monkeypatch
):
    asyncio.run(aget_token("async"))
    fail = [True]
    original = service.read_cached

    def read_cached(*args):
        if fail[0]:
            raise ConnectionRefusedError("simulated")  # not a cache error: it propagates
        return original(*args)

    monkeypatch.setattr(service, "read_cached", read_cached)
    service.clear_memo()

    async def main():
        results = await asyncio.gather(
            *(aget_token("async") for _ in range(10)), return_exceptions=True
        )
        fail[0] = False
        return results, await aget_token("async")  # a new re-read, not the failed one

    results, token = asyncio.run(main())
    assert all(isinstance(r, ConnectionRefusedError) for r in results)
    assert token.value
