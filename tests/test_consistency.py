"""Security review regressions: stale credentials, lost announcements, garbage in the cache.

Each test here failed on the code before the fix (see issue 9); the multi-process versions
of the first findings are in tests/test_cross_process.py.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from django.db import transaction

from django_getpaid_auth import cache_backend, credentials, get_token, service, token_store
from django_getpaid_auth.exceptions import (
    CredentialNotFoundError,
    RateLimitedError,
    TokenWaitTimeoutError,
)
from django_getpaid_auth.models import ClientCredential, Tenant
from django_getpaid_auth.testing import TokenEndpoint
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def commit(django_capture_on_commit_callbacks):
    """``with commit():`` runs what is announced on commit at the end of the block."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def requested_client(endpoint: TokenEndpoint) -> str:
    return json.loads(endpoint.requests[-1].body)["client_id"]


def shared_generation():
    return cache_backend.shared().get(credentials.generation_key())


# --- 1. a tenant key that changes hands --------------------------------------------------


def test_renamed_tenant_key_resolves_to_the_new_holder(endpoint, fake_clock, commit):
    a = make_tenant("acme", "A")
    b = make_tenant("bravo", "B")
    make_credential(a, client_id="client-of-a")
    make_credential(b, client_id="client-of-b")
    get_token("acme")
    assert requested_client(endpoint) == "client-of-a"
    with commit():
        a.slug = "acme-old"
        a.save()
    with commit():
        b.slug = "acme"
        b.save()
    fake_clock.advance(1.5)  # past LOCAL_CACHE_TIMEOUT, as in any other process
    token = get_token("acme")
    assert requested_client(endpoint) == "client-of-b"
    assert token.value == endpoint.issued[-1]


def test_tenant_key_change_reaches_a_process_that_did_not_save(endpoint, fake_clock, commit):
    """Another process only sees the shared generation; it must change with the key."""
    a = make_tenant("acme", "A")
    make_credential(a, client_id="client-of-a")
    get_token("acme")
    before = shared_generation()
    with commit():
        a.slug = "acme-gone"
        a.save()
    assert shared_generation() != before


def test_tenant_save_that_keeps_the_key_announces_nothing(commit):
    tenant = make_tenant("steady", "Steady")
    with commit():
        credentials.bump_generation()
    before = shared_generation()
    with commit():
        tenant.name = "Renamed, same key"
        tenant.save()
    with commit():
        tenant.save(update_fields=["name"])
    assert shared_generation() == before


def test_deleted_tenant_is_announced(commit):
    tenant = make_tenant("short-lived", "Short")
    before = shared_generation()
    with commit():
        tenant.delete()
    assert shared_generation() != before


# --- 2. announced only after the commit ----------------------------------------------------


def test_credential_change_is_announced_only_after_commit(endpoint, commit):
    tenant = make_tenant()
    credential = make_credential(tenant)
    get_token(tenant)
    token_key = token_store.token_key(credentials.resolve(tenant))
    before = shared_generation()
    with commit():
        credential.is_active = False
        credential.save()
        # Not committed yet: another process reading now would see the old row.
        assert shared_generation() == before
        assert cache_backend.get(token_key) is not None
    assert shared_generation() != before
    assert cache_backend.get(token_key) is None
    with pytest.raises(CredentialNotFoundError):
        get_token(tenant)


def test_rolled_back_change_announces_nothing(endpoint, commit):
    tenant = make_tenant()
    credential = make_credential(tenant)
    get_token(tenant)
    before = shared_generation()
    with commit() as callbacks:
        try:
            with transaction.atomic():
                credential.client_secret = "never-committed"
                credential.save()
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
    assert callbacks == []
    assert shared_generation() == before
    get_token(tenant)
    assert endpoint.count == 1  # the cached token was not thrown away


# --- 3. generations that never repeat, announcements that are never lost ----------------


def test_generation_lost_with_the_cache_cannot_come_back_at_an_old_value(
    endpoint, fake_clock, commit
):
    tenant = make_tenant()
    credential = make_credential(tenant)
    get_token(tenant)  # this process now holds the current generation
    cache_backend.shared().delete(credentials.generation_key())  # Redis restarted empty
    # Another process changes the credential (no signal reaches us) and announces it.
    ClientCredential.objects.filter(pk=credential.pk).update(scopes="accounts:read")
    snapshots = dict(credentials._snapshots)
    credentials.bump_generation()
    credentials._snapshots.update(snapshots)  # the other process's bump clears nothing here
    fake_clock.advance(1.5)
    get_token(tenant)
    assert json.loads(endpoint.requests[-1].body)["scope"] == "accounts:read"


class BrokenCache:
    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("cache is down")

        return fail


def test_announcement_made_during_a_cache_outage_is_replayed(monkeypatch, all_logs):
    real_shared = cache_backend.shared
    with monkeypatch.context() as patch:
        patch.setattr(cache_backend, "shared", lambda: BrokenCache())
        before = real_shared().get(credentials.generation_key())
        credentials.bump_generation()
        assert cache_backend.pending_writes() == 1
        assert real_shared().get(credentials.generation_key()) == before
    assert "retrying in the background" in all_logs.text
    deadline = time.monotonic() + 10
    while cache_backend.pending_writes() and time.monotonic() < deadline:
        time.sleep(0.05)  # the background replay runs RETRY_SHARED_AFTER later
    assert cache_backend.pending_writes() == 0
    after = real_shared().get(credentials.generation_key())
    assert after != before and credentials.parse_generation(after) == after


def test_queued_writes_are_replayed_in_order_by_the_next_cache_call(monkeypatch):
    real_shared = cache_backend.shared
    key = cache_backend.key("probe")
    with monkeypatch.context() as patch:
        patch.setattr(cache_backend, "shared", lambda: BrokenCache())
        cache_backend.write_shared("set", key, "first", None)
        cache_backend.write_shared("set", key, "second", None)
        assert cache_backend.pending_writes() == 2
    cache_backend._down_until = 0.0  # the outage is over
    cache_backend.get("anything")
    assert cache_backend.pending_writes() == 0
    assert real_shared().get(key) == "second"


def test_unannounced_change_is_seen_after_the_recheck_interval(endpoint, fake_clock, settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "CREDENTIAL_RECHECK_INTERVAL": 30}
    tenant = make_tenant()
    credential = make_credential(tenant)
    get_token(tenant)
    ClientCredential.objects.filter(pk=credential.pk).update(is_active=False)  # no signal
    fake_clock.advance(5)
    get_token(tenant)  # within the interval: the snapshot is still trusted
    fake_clock.advance(30)
    with pytest.raises(CredentialNotFoundError):
        get_token(tenant)


def test_unannounced_tenant_rename_is_seen_after_the_recheck_interval(endpoint, fake_clock):
    a = make_tenant("acme", "A")
    b = make_tenant("bravo", "B")
    make_credential(a, client_id="client-of-a")
    make_credential(b, client_id="client-of-b")
    get_token("acme")
    Tenant.objects.filter(pk=a.pk).update(slug="acme-old")  # QuerySet.update: no signal
    Tenant.objects.filter(pk=b.pk).update(slug="acme")
    fake_clock.advance(61)  # CREDENTIAL_RECHECK_INTERVAL defaults to 60 s
    get_token("acme")
    assert requested_client(endpoint) == "client-of-b"


# --- 13. garbage under our cache keys --------------------------------------------------------

NOW = time.time()
GARBAGE_ENTRIES = [
    "not a dict",
    ["ct", "exp"],
    {"ct": "é" * 40, "exp": NOW + 999, "refresh": NOW + 900, "until": NOW + 990},
    {"ct": "gAAAA", "exp": "soon", "refresh": NOW + 900, "until": NOW + 990},
    {"ct": "gAAAA", "exp": NOW + 999, "refresh": None, "until": NOW + 990},
    {"ct": "gAAAA", "exp": 1e300, "refresh": 1e300, "until": 1e300},
    {"ct": "gAAAA", "exp": float("nan"), "refresh": NOW, "until": float("inf")},
    {"ct": "gAAAA", "exp": True, "refresh": True, "until": True},
    {"ct": 12345, "exp": NOW + 999, "refresh": NOW + 900, "until": NOW + 990},
    {"ct": "gAAAA-not-fernet", "exp": NOW + 999, "refresh": NOW + 900, "until": NOW + 990},
]


@pytest.mark.parametrize("garbage", GARBAGE_ENTRIES, ids=range(len(GARBAGE_ENTRIES)))
def test_garbage_token_entry_reads_as_absent(endpoint, garbage):
    tenant = make_tenant()
    make_credential(tenant)
    snapshot = credentials.resolve(tenant)
    cache_backend.set(token_store.token_key(snapshot), garbage, timeout=60)
    token = get_token(tenant)
    assert endpoint.count == 1 and token.value == endpoint.issued[0]


GARBAGE_FAILURES = [
    "x",
    {"until": "later", "error": {"class": "InvalidClientError"}},
    {"until": NOW + 100, "error": "InvalidClientError"},
    {"until": NOW + 100, "error": {"class": "InvalidClientError", "message": 5}},
    {"until": NOW + 100, "error": {"class": "InvalidClientError", "status": "401"}},
    {"until": NOW + 100, "error": {"class": ["x"], "message": "m"}},
    {"until": NOW + 100, "error": {"class": "RateLimitedError", "quota": 5}},
    {"until": float("nan"), "error": {"class": "InvalidClientError"}},
]


@pytest.mark.parametrize("garbage", GARBAGE_FAILURES, ids=range(len(GARBAGE_FAILURES)))
def test_garbage_failure_memory_reads_as_absent(endpoint, garbage):
    tenant = make_tenant()
    make_credential(tenant)
    snapshot = credentials.resolve(tenant)
    cache_backend.set(token_store.failure_key(snapshot), garbage, timeout=60)
    assert get_token(tenant).value == endpoint.issued[0]


def test_huge_failure_time_is_bounded(endpoint):
    tenant = make_tenant()
    make_credential(tenant)
    snapshot = credentials.resolve(tenant)
    planted = {
        "until": 1.6e10,  # the year 2477
        "error": {"class": "RateLimitedError", "message": "slow down", "quota": ""},
    }
    cache_backend.set(token_store.failure_key(snapshot), planted, timeout=60)
    with pytest.raises(RateLimitedError) as excinfo:
        get_token(tenant)
    assert excinfo.value.retry_after <= token_store.MAX_FAILURE_MEMORY


@pytest.mark.parametrize("garbage", ["f" * 31, "g" * 32, 7, "é" * 32, None, {"a": 1}])
def test_garbage_generation_reads_as_unknown(endpoint, fake_clock, garbage):
    tenant = make_tenant()
    make_credential(tenant)
    get_token(tenant)
    cache_backend.set(credentials.generation_key(), garbage, timeout=60)
    fake_clock.advance(1.5)
    assert get_token(tenant).value == endpoint.issued[0]
    assert credentials.read_generation() is None


@pytest.mark.parametrize("memo_warm", [True, False])
def test_entry_copied_under_another_credentials_key_is_refused(endpoint, memo_warm):
    victim, attacker = make_tenant(), make_tenant()
    make_credential(victim, client_id="victim-client")
    make_credential(attacker, client_id="attacker-client")
    victim_token = get_token(victim)
    attacker_snapshot = credentials.resolve(attacker)
    victim_entry = cache_backend.get(token_store.token_key(credentials.resolve(victim)))
    cache_backend.set(token_store.token_key(attacker_snapshot), victim_entry, timeout=600)
    if not memo_warm:
        token_store.clear_decrypted()
    service.clear_memo()
    token = get_token(attacker)
    assert token.value != victim_token.value
    assert requested_client(endpoint) == "attacker-client"


def test_remembered_rate_limit_with_an_endless_wait_is_bounded():
    tenant = make_tenant()
    make_credential(tenant)
    snapshot = credentials.resolve(tenant)
    for retry_after in (float("inf"), float("nan"), 1e12):
        error = RateLimitedError("429", retry_after=retry_after)
        token_store._remember(snapshot, error)
        remembered = token_store.remembered_failure(snapshot)
        assert isinstance(remembered, RateLimitedError)
        assert 0 < remembered.retry_after <= token_store.MAX_FAILURE_MEMORY
        assert not cache_backend.is_degraded()


# --- 7 and 9: background refreshes, waits -------------------------------------------------


def refresh_threads() -> int:
    return sum(t.name.startswith("getpaid-token-refresh") for t in threading.enumerate())


def test_background_refreshes_are_capped_per_process(rsps, fake_clock, settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "MAX_BACKGROUND_REFRESHES": 3}
    endpoint = TokenEndpoint(rsps)
    tenants = [make_tenant() for _ in range(12)]
    for tenant in tenants:
        make_credential(tenant)
        get_token(tenant)
    fake_clock.advance(3600 - 200)  # every token is due for refresh, all still valid
    endpoint.delay = 0.5
    seen = 0
    for tenant in tenants:
        get_token(tenant)
        seen = max(seen, refresh_threads())
    assert 1 <= seen <= 3
    token_store.wait_for_background_refreshes()
    assert endpoint.count == 12 + seen


def test_one_background_refresh_per_credential_even_when_leases_expire(rsps, fake_clock, settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "LEASE_TIMEOUT": 0.05}
    endpoint = TokenEndpoint(rsps)
    tenant = make_tenant()
    make_credential(tenant)
    get_token(tenant)
    fake_clock.advance(3600 - 200)
    endpoint.delay = 1.0  # slower than the lease: the lease expires while it runs
    seen = 0
    for _ in range(8):
        get_token(tenant)
        seen = max(seen, refresh_threads())
        time.sleep(0.08)
    token_store.wait_for_background_refreshes()
    assert seen == 1
    assert endpoint.count == 2


def test_waiting_for_another_threads_fetch_times_out_with_a_typed_error(rsps, settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "WAIT_TIMEOUT": 0.3}
    endpoint = TokenEndpoint(rsps, delay=1.5)
    tenant = make_tenant()
    make_credential(tenant)
    credentials.resolve(tenant)
    leader = threading.Thread(target=get_token, args=(tenant,))
    leader.start()
    deadline = time.monotonic() + 5
    while endpoint.count == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # the leader's request is in flight
    started = time.monotonic()
    with pytest.raises(TokenWaitTimeoutError):
        get_token(tenant)
    assert time.monotonic() - started < 1.2
    leader.join(5)


@pytest.mark.parametrize("field", ["exp", "until", "refresh"])
def test_readable_expiry_cannot_be_extended(endpoint, fake_clock, field):
    """Someone with write access to the cache pushes an old token's times into the future."""
    tenant = make_tenant()
    make_credential(tenant)
    old = get_token(tenant)
    key = token_store.token_key(credentials.resolve(tenant))
    entry = cache_backend.get(key)
    fake_clock.advance(3600 + 60)  # the token has expired
    entry = {**entry, field: entry[field] + 7200}
    if field == "exp":
        entry = {**entry, "until": entry["until"] + 7200, "refresh": entry["refresh"] + 7200}
    cache_backend.set(key, entry, timeout=600)
    service.clear_memo()
    token = get_token(tenant)
    assert token.value != old.value and endpoint.count == 2


@pytest.mark.parametrize("how", ["explicit-pk", "loaddata"])
def test_key_handed_over_by_an_explicit_pk_save_or_loaddata_is_announced(how, commit):
    from django.core import serializers

    a = make_tenant("acme", "A")
    before = shared_generation()
    with commit():
        if how == "explicit-pk":
            Tenant(pk=a.pk, slug="acme-old", name="A", created_at=a.created_at).save()
        else:
            data = serializers.serialize("json", [a]).replace('"acme"', '"acme-old"')
            for obj in serializers.deserialize("json", data):
                obj.save()
    assert Tenant.objects.get(pk=a.pk).slug == "acme-old"
    assert shared_generation() != before


@pytest.mark.parametrize("where", ["token", "failure"])
def test_huge_integers_under_our_keys_read_as_absent(endpoint, where):
    tenant = make_tenant()
    make_credential(tenant)
    snapshot = credentials.resolve(tenant)
    if where == "token":
        planted = {"ct": "gAAAA", "exp": 10**400, "refresh": 10**400, "until": 10**400}
        cache_backend.set(token_store.token_key(snapshot), planted, timeout=60)
    else:
        planted = {"until": 10**400, "error": {"class": "InvalidClientError"}}
        cache_backend.set(token_store.failure_key(snapshot), planted, timeout=60)
    assert get_token(tenant).value == endpoint.issued[0]
