"""The token service: fetch once, cache, refresh, single flight, errors, isolation."""

from __future__ import annotations

import json
import threading

import pytest
import requests
import responses
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from django_getpaid_auth import cache_backend, get_session, get_token, invalidate_token
from django_getpaid_auth.exceptions import (
    AmbiguousEnvironmentError,
    AudienceNotEnabledError,
    ClientGrantMissingError,
    CredentialNotFoundError,
    ForeignHostError,
    GetpaidAuthError,
    InvalidClientError,
    InvalidScopeError,
    MalformedTokenResponseError,
    RateLimitedError,
    TenantNotFoundError,
    TokenEndpointUnavailableError,
    UnauthorizedClientError,
)
from django_getpaid_auth.models import ClientCredential
from django_getpaid_auth.signals import token_obtained, token_request_failed
from django_getpaid_auth.testing import TokenEndpoint, auth0_error
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db

API = "https://api.sandbox.getpaid.test"


@pytest.fixture
def api(rsps):
    rsps.add(responses.GET, f"{API}/v2/payments/pay_1", json={"id": "pay_1"})
    return rsps


def bearer(call) -> str:
    return call.request.headers["Authorization"]


# --- fetch once, reuse, refresh -------------------------------------------------------


def test_200_calls_make_one_token_request(endpoint, api):
    tenant = make_tenant()
    make_credential(tenant)
    for _ in range(200):
        assert get_session(tenant).get("/v2/payments/pay_1").json() == {"id": "pay_1"}
    assert endpoint.count == 1
    api_calls = [c for c in api.calls if c.request.url.startswith(API)]
    assert len(api_calls) == 200
    assert {bearer(c) for c in api_calls} == {f"Bearer {endpoint.issued[0]}"}


def test_token_request_body_is_getpaid_shaped(endpoint, canary):
    tenant = make_tenant()
    make_credential(
        tenant, client_id="cid", client_secret=canary, scopes="payments:read accounts:read"
    )
    get_token(tenant)
    body = json.loads(endpoint.requests[0].body)
    assert body == {
        "grant_type": "client_credentials",
        "audience": "https://api.sandbox.getpaid.io",
        "scope": "payments:read accounts:read",
        "client_id": "cid",
        "client_secret": canary,
    }
    assert endpoint.requests[0].headers["Content-Type"] == "application/json"


def test_form_body_and_basic_auth_settings(settings, endpoint, canary):
    settings.GETPAID_AUTH = {
        **settings.GETPAID_AUTH,
        "TOKEN_REQUEST_FORMAT": "form",
        "CLIENT_AUTH_METHOD": "client_secret_basic",
    }
    tenant = make_tenant()
    make_credential(tenant, client_id="cid", client_secret=canary)
    with pytest.raises(MalformedTokenResponseError):  # our helper only speaks JSON bodies: fine
        endpoint.fail_next((200, {"Content-Type": "text/plain"}, "nope"))
        get_token(tenant)
    request = endpoint.requests[0]
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Authorization"].startswith("Basic ")
    assert "client_secret" not in request.body
    assert "grant_type=client_credentials" in request.body


def test_new_token_after_expiry(endpoint, fake_clock):
    tenant = make_tenant()
    make_credential(tenant)
    first = get_token(tenant)
    fake_clock.advance(3000)
    assert get_token(tenant) == first and endpoint.count == 1
    fake_clock.advance(3600)
    second = get_token(tenant)
    assert second.value != first.value
    assert endpoint.count == 2


def test_stale_margin_default_is_larger_of_60s_and_10_percent(endpoint, fake_clock):
    tenant = make_tenant()
    make_credential(tenant)
    get_token(tenant)
    fake_clock.advance(3600 - 360 - 10 - 1)  # just before the refresh window
    get_token(tenant)
    assert endpoint.count == 1
    fake_clock.advance(2)  # inside it: refreshed now (in the background)
    get_token(tenant)
    from django_getpaid_auth import token_store

    token_store.wait_for_background_refreshes()
    assert endpoint.count == 2


def test_never_hands_out_a_token_within_clock_skew_of_expiry(rsps, fake_clock, settings):
    endpoint = TokenEndpoint(rsps, expires_in=3600)
    tenant = make_tenant()
    make_credential(tenant)
    first = get_token(tenant)
    endpoint.fail_next((503, {}, "down"), (503, {}, "down"), (503, {}, "down"))
    fake_clock.advance(3600 - 10)  # within CLOCK_SKEW of expiry; refresh fails
    with pytest.raises(TokenEndpointUnavailableError):
        get_token(tenant)
    assert first.expires_in(fake_clock()) <= 10


def test_new_token_after_secret_change(endpoint, django_capture_on_commit_callbacks):
    tenant = make_tenant()
    credential = make_credential(tenant)
    first = get_token(tenant)
    credential.client_secret = "rotated-secret"
    with django_capture_on_commit_callbacks(execute=True):
        credential.save()
    second = get_token(tenant)
    assert endpoint.count == 2 and second.value != first.value
    assert json.loads(endpoint.requests[1].body)["client_secret"] == "rotated-secret"


def test_deactivated_credential_is_not_used(endpoint, django_capture_on_commit_callbacks):
    tenant = make_tenant()
    credential = make_credential(tenant)
    get_token(tenant)
    credential.is_active = False
    with django_capture_on_commit_callbacks(execute=True):
        credential.save()
    with pytest.raises(CredentialNotFoundError):
        get_token(tenant)


def test_jwt_exp_earlier_than_expires_in_wins(rsps, fake_clock):
    TokenEndpoint(rsps, expires_in=3600, jwt_exp_offset=600)
    tenant = make_tenant()
    make_credential(tenant)
    token = get_token(tenant)
    assert token.expires_in(fake_clock()) == pytest.approx(600, abs=1)


def test_force_refresh_and_invalidate(endpoint):
    tenant = make_tenant()
    make_credential(tenant)
    first = get_token(tenant)
    forced = get_token(tenant, force_refresh=True)
    assert forced.value != first.value and endpoint.count == 2
    assert get_token(tenant) == forced
    invalidate_token(tenant)
    assert get_token(tenant).value != forced.value and endpoint.count == 3


def test_token_is_stored_encrypted_in_the_cache(endpoint):
    import pickle

    from django.core.cache import caches
    from django.core.cache.backends.locmem import LocMemCache

    from django_getpaid_auth import credentials, token_store

    tenant = make_tenant()
    make_credential(tenant)
    token = get_token(tenant)
    key = token_store.token_key(credentials.resolve(tenant))
    cache = caches["default"]
    entry = cache.get(key)
    assert entry is not None
    if isinstance(cache, LocMemCache):
        raw = cache._cache[cache.make_and_validate_key(key)]
    else:  # Redis: the exact bytes stored on the server
        raw = cache._cache.get_client(key).get(cache.make_and_validate_key(key))
    assert raw and token.value.encode() not in raw
    assert token.value not in repr(entry) and token.value.encode() not in pickle.dumps(entry)


# --- tenant and environment resolution ------------------------------------------------


def test_tenant_by_key_string(endpoint):
    tenant = make_tenant(slug="acme")
    make_credential(tenant)
    assert get_token("acme") == get_token(tenant)
    assert endpoint.count == 1


def test_unknown_tenant_key():
    with pytest.raises(TenantNotFoundError, match="nope"):
        get_session("nope")


def test_tenant_without_credential():
    make_tenant(slug="empty")
    with pytest.raises(CredentialNotFoundError, match="no active getpaid credential"):
        get_session("empty")


def test_two_environments_need_an_explicit_choice(endpoint):
    tenant = make_tenant()
    make_credential(tenant, environment="live")
    make_credential(tenant, environment="sandbox")
    with pytest.raises(AmbiguousEnvironmentError, match="live and sandbox"):
        get_session(tenant)
    assert get_session(tenant, "live").api_url == "https://api.getpaid.test"
    body = json.loads(endpoint.requests[0].body) if endpoint.requests else None
    assert body is None
    get_token(tenant, "live")
    assert json.loads(endpoint.requests[0].body)["audience"] == "https://api.getpaid.io"


def test_missing_environment_names_the_ones_that_exist():
    tenant = make_tenant()
    make_credential(tenant, environment="sandbox")
    with pytest.raises(
        CredentialNotFoundError, match=r"no active live credential \(active: sandbox\)"
    ):
        get_session(tenant, "live")


# --- warm path: no SQL ----------------------------------------------------------------


def test_warm_path_runs_no_sql(endpoint, api, django_assert_num_queries):
    tenant = make_tenant(slug="warm")
    make_credential(tenant)
    get_session("warm").get("/v2/payments/pay_1")
    get_session(tenant).get("/v2/payments/pay_1")
    with django_assert_num_queries(0):
        for _ in range(20):
            get_session("warm").get("/v2/payments/pay_1")
            get_session(tenant).get("/v2/payments/pay_1")
            get_token(tenant)


def test_credential_change_in_another_process_is_seen(endpoint, fake_clock):
    """A save elsewhere bumps the shared generation; our snapshot is then reloaded."""
    from django_getpaid_auth import credentials

    tenant = make_tenant()
    credential = make_credential(tenant)
    get_token(tenant)
    # simulate the other process: change the row without our signal, then bump
    ClientCredential.objects.filter(pk=credential.pk).update(scopes="accounts:read")
    assert get_token(tenant).scopes == {"payments:read"}  # still the old snapshot
    credentials.bump_generation()
    fake_clock.advance(1.5)  # past LOCAL_CACHE_TIMEOUT: the shared cache is read again
    get_token(tenant)
    assert json.loads(endpoint.requests[-1].body)["scope"] == "accounts:read"


# --- single flight --------------------------------------------------------------------


def test_32_threads_make_one_token_request(rsps):
    endpoint = TokenEndpoint(rsps, delay=0.3)
    tenant = make_tenant()
    make_credential(tenant)
    get_session(tenant)  # credential loaded once (SQLite in-memory is not for threads)
    assert endpoint.count == 0
    barrier = threading.Barrier(32)
    results, errors = [], []

    def worker():
        barrier.wait()
        try:
            results.append(get_token(tenant).value)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert endpoint.count == 1
    assert set(results) == {endpoint.issued[0]} and len(results) == 32


def test_refresh_window_one_refresher_nobody_waits(rsps, fake_clock):
    import time as _time

    from django_getpaid_auth import token_store

    endpoint = TokenEndpoint(rsps)
    tenant = make_tenant()
    make_credential(tenant)
    old = get_token(tenant)
    fake_clock.advance(3600 - 200)  # inside the refresh window, still valid
    endpoint.delay = 0.5  # a slow token endpoint
    started = _time.monotonic()
    during = [get_token(tenant) for _ in range(20)]
    waited = _time.monotonic() - started
    assert all(t == old for t in during)  # everyone, the caller that started it included
    assert waited < 0.4  # nobody waited for the 0.5 s refresh
    token_store.wait_for_background_refreshes()
    assert endpoint.count == 2  # exactly one refresh
    new = get_token(tenant)
    assert new.value != old.value and new.value == endpoint.issued[1]


def test_failed_refresh_keeps_serving_the_current_token(endpoint, fake_clock, all_logs):
    tenant = make_tenant()
    make_credential(tenant)
    old = get_token(tenant)
    fake_clock.advance(3600 - 200)
    endpoint.fail_next(*[(503, {}, "down")] * 3)
    assert get_token(tenant) == old
    from django_getpaid_auth import token_store

    token_store.wait_for_background_refreshes()
    assert "stays in use" in all_logs.text
    count = endpoint.count
    assert count == 4  # the first token + 3 attempts of the failed refresh
    assert get_token(tenant) == old  # refresh paused briefly: no hammering
    token_store.wait_for_background_refreshes()
    assert endpoint.count == count


# --- 401 retry ----------------------------------------------------------------------


def test_401_refreshes_and_retries_once(endpoint, rsps):
    tenant = make_tenant()
    make_credential(tenant)
    rsps.add(responses.GET, f"{API}/v2/payments/pay_1", status=401)
    rsps.add(responses.GET, f"{API}/v2/payments/pay_1", json={"id": "pay_1"})
    response = get_session(tenant).get("/v2/payments/pay_1")
    assert response.status_code == 200
    assert endpoint.count == 2
    calls = [c for c in rsps.calls if c.request.url.startswith(API)]
    assert [bearer(c) for c in calls] == [f"Bearer {t}" for t in endpoint.issued]
    assert len(response.history) == 1 and response.history[0].status_code == 401


def test_second_401_is_returned_without_looping(endpoint, rsps):
    tenant = make_tenant()
    make_credential(tenant)
    rsps.add(responses.GET, f"{API}/v2/payments/pay_1", status=401)
    response = get_session(tenant).get("/v2/payments/pay_1")
    assert response.status_code == 401
    assert endpoint.count == 2
    assert len([c for c in rsps.calls if c.request.url.startswith(API)]) == 2


# --- URLs, hosts, timeouts ------------------------------------------------------------


def test_relative_urls_resolve_against_the_api_url(endpoint, api):
    tenant = make_tenant()
    make_credential(tenant)
    session = get_session(tenant)
    assert session.get("v2/payments/pay_1").status_code == 200
    assert session.get(f"{API}/v2/payments/pay_1").status_code == 200
    urls = [c.request.url for c in api.calls if "/v2/" in c.request.url]
    assert urls == [f"{API}/v2/payments/pay_1"] * 2


def test_token_is_never_sent_to_a_foreign_host(endpoint, rsps):
    tenant = make_tenant()
    make_credential(tenant)
    rsps.add(responses.GET, "https://evil.example/steal", body="x")
    with pytest.raises(ForeignHostError, match=r"evil\.example"):
        get_session(tenant).get("https://evil.example/steal")
    with pytest.raises(ForeignHostError):  # the other environment's host is foreign too
        get_session(tenant).get("https://api.getpaid.test/v2/payments/pay_1")
    assert not [c for c in rsps.calls if "evil" in c.request.url]


def test_allowed_hosts_setting(settings, endpoint, rsps):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ALLOWED_API_HOSTS": ["files.getpaid.test"]}
    tenant = make_tenant()
    make_credential(tenant)
    rsps.add(responses.GET, "https://files.getpaid.test/x", body="ok")
    assert get_session(tenant).get("https://files.getpaid.test/x").text == "ok"


def test_default_timeout_and_user_agent(endpoint, api):
    from django_getpaid_auth import __version__

    tenant = make_tenant()
    make_credential(tenant)
    session = get_session(tenant)
    session.get("/v2/payments/pay_1")
    call = next(c for c in api.calls if "/v2/" in c.request.url)
    assert call.request.req_kwargs["timeout"] == (5.0, 30.0)
    assert f"django-getpaid-auth/{__version__}" in call.request.headers["User-Agent"]
    assert "Authorization" not in repr(session) and "Bearer" not in repr(session)


# --- errors -------------------------------------------------------------------------

HTML_502 = (
    502,
    {"Content-Type": "text/html"},
    "<html><body><h1>502 Bad Gateway</h1></body></html>",
)

ERROR_CASES = [
    ("wrong secret", [auth0_error(401, "access_denied", "Unauthorized")], InvalidClientError),
    (
        "invalid_client",
        [auth0_error(401, "invalid_client", "Client authentication failed")],
        InvalidClientError,
    ),
    (
        "audience",
        [
            auth0_error(
                403,
                "access_denied",
                "Service not enabled within domain: https://api.sandbox.getpaid.io",
            )
        ],
        AudienceNotEnabledError,
    ),
    (
        "client grant",
        [
            auth0_error(
                403,
                "access_denied",
                'Client is not authorized to access "https://api.sandbox.getpaid.io". You need to create a "client-grant" associated to this API.',
            )
        ],
        ClientGrantMissingError,
    ),
    (
        "scope",
        [auth0_error(403, "access_denied", "Client has not been granted scopes: payments:read")],
        InvalidScopeError,
    ),
    ("invalid_scope", [auth0_error(400, "invalid_scope", "bad scope")], InvalidScopeError),
    (
        "grant type",
        [
            auth0_error(
                403,
                "unauthorized_client",
                "Grant type 'client_credentials' not allowed for the client.",
            )
        ],
        UnauthorizedClientError,
    ),
    (
        "429",
        [
            auth0_error(
                429, "too_many_requests", "Global limit has been reached", **{"Retry-After": "30"}
            )
        ],
        RateLimitedError,
    ),
    ("html 502", [HTML_502] * 3, TokenEndpointUnavailableError),
    ("500", [auth0_error(500, "server_error", "oops")] * 3, TokenEndpointUnavailableError),
    (
        "invalid json",
        [(200, {"Content-Type": "application/json"}, "{not json")],
        MalformedTokenResponseError,
    ),
    (
        "missing token",
        [(200, {}, json.dumps({"token_type": "Bearer", "expires_in": 60}))],
        MalformedTokenResponseError,
    ),
    (
        "negative expiry",
        [
            (
                200,
                {},
                json.dumps({"access_token": "a.b.c", "token_type": "Bearer", "expires_in": -5}),
            )
        ],
        MalformedTokenResponseError,
    ),
    (
        "not bearer",
        [(200, {}, json.dumps({"access_token": "abc", "token_type": "mac", "expires_in": 60}))],
        MalformedTokenResponseError,
    ),
]


@pytest.mark.parametrize(
    ("name", "answers", "error_class"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES]
)
def test_each_error_class_nothing_cached_nothing_leaked(
    name, answers, error_class, endpoint, canary, all_logs
):
    tenant = make_tenant(slug=f"t-{name.replace(' ', '-')}")
    make_credential(tenant, client_secret=canary)
    failures = []
    token_request_failed.connect(lambda **kw: failures.append(kw), weak=False, dispatch_uid=name)
    try:
        endpoint.fail_next(*answers)
        with pytest.raises(error_class) as excinfo:
            get_token(tenant)
    finally:
        token_request_failed.disconnect(dispatch_uid=name)
    error = excinfo.value
    assert isinstance(error, GetpaidAuthError)
    message = str(error)
    assert tenant.name in message and "sandbox" in message
    assert error.hint and error.hint in message
    for text in (message, repr(error), all_logs.text, repr(failures)):
        assert canary not in text
    assert failures and failures[0]["error"] is error
    # nothing bad was cached: the next call asks again (or fails fast from failure memory)
    from django_getpaid_auth import credentials, token_store

    snapshot = credentials.resolve(tenant)
    assert cache_backend.get(token_store.token_key(snapshot)) is None


def test_rate_limit_carries_retry_after_and_quota(endpoint):
    tenant = make_tenant()
    make_credential(tenant)
    endpoint.fail_next(
        auth0_error(
            429,
            "too_many_requests",
            "Quota exceeded",
            **{"Retry-After": "30", "Auth0-Client-Quota-Limit": "b=per_hour;q=10;r=0;t=3540"},
        )
    )
    with pytest.raises(RateLimitedError) as excinfo:
        get_token(tenant)
    assert excinfo.value.retry_after == 30
    assert excinfo.value.quota == "b=per_hour;q=10;r=0;t=3540"
    assert excinfo.value.status == 429


def test_short_retry_after_is_waited_out_once(endpoint):
    tenant = make_tenant()
    make_credential(tenant)
    endpoint.fail_next(auth0_error(429, "too_many_requests", "slow down", **{"Retry-After": "0"}))
    assert get_token(tenant)
    assert endpoint.count == 2


def test_5xx_is_retried_with_backoff_then_succeeds(endpoint):
    tenant = make_tenant()
    make_credential(tenant)
    endpoint.fail_next(HTML_502, (500, {}, "x"))
    assert get_token(tenant)
    assert endpoint.count == 3


def test_4xx_is_not_retried(endpoint):
    tenant = make_tenant()
    make_credential(tenant)
    endpoint.fail_next(auth0_error(401, "access_denied", "Unauthorized"))
    with pytest.raises(InvalidClientError):
        get_token(tenant)
    assert endpoint.count == 1


def test_timeout_and_connection_error(rsps, endpoint):
    tenant = make_tenant()
    make_credential(tenant)

    def timeout():
        raise requests.ReadTimeout("read timed out")

    rsps.replace(responses.POST, endpoint_url(), body=requests.ReadTimeout("slow"))
    with pytest.raises(TokenEndpointUnavailableError, match="timed out") as excinfo:
        get_token(tenant)
    assert isinstance(excinfo.value, requests.RequestException)  # either except works
    rsps.replace(responses.POST, endpoint_url(), body=requests.ConnectionError("refused"))
    with pytest.raises(TokenEndpointUnavailableError, match="Cannot reach"):
        get_token(tenant)


def endpoint_url():
    from django_getpaid_auth.conf import getpaid_settings

    return getpaid_settings.TOKEN_URL


def test_failure_memory_fails_fast_until_credential_saved(
    endpoint, django_capture_on_commit_callbacks
):
    tenant = make_tenant()
    credential = make_credential(tenant)
    endpoint.fail_next(auth0_error(401, "access_denied", "Unauthorized"))
    with pytest.raises(InvalidClientError):
        get_token(tenant)
    with pytest.raises(InvalidClientError):
        get_token(tenant)  # from memory
    assert endpoint.count == 1
    credential.client_secret = "fixed"
    with django_capture_on_commit_callbacks(execute=True):
        credential.save()
    assert get_token(tenant)
    assert endpoint.count == 2


def test_rate_limit_memory_expires_with_retry_after(endpoint, fake_clock):
    tenant = make_tenant()
    make_credential(tenant)
    endpoint.fail_next(auth0_error(429, "too_many_requests", "limit", **{"Retry-After": "20"}))
    with pytest.raises(RateLimitedError):
        get_token(tenant)
    fake_clock.advance(10)
    with pytest.raises(RateLimitedError) as excinfo:
        get_token(tenant)
    assert excinfo.value.retry_after == pytest.approx(10, abs=1)
    assert endpoint.count == 1
    fake_clock.advance(11)
    assert get_token(tenant)
    assert endpoint.count == 2


def test_missing_granted_scope_is_logged(rsps, all_logs):
    TokenEndpoint(rsps, scope="payments:read")
    tenant = make_tenant()
    make_credential(tenant, scopes="payments:read accounts:read")
    token = get_token(tenant)
    assert token.scopes == {"payments:read"}
    assert "missing: accounts:read" in all_logs.text


def test_signals_and_logs_never_carry_the_token(endpoint, canary, all_logs):
    tenant = make_tenant()
    make_credential(tenant, client_secret=canary)
    seen = []
    token_obtained.connect(lambda **kw: seen.append(kw), weak=False, dispatch_uid="t")
    try:
        token = get_token(tenant)
        get_session(tenant)
    finally:
        token_obtained.disconnect(dispatch_uid="t")
    assert seen[0]["expires_at"] == token.expires_at and seen[0]["environment"] == "sandbox"
    assert seen[0]["duration"] >= 0
    for text in (all_logs.text, repr(seen), repr(token), str(token)):
        assert token.value not in text
        assert canary not in text
    assert token.fingerprint in all_logs.text


# --- cache failure ------------------------------------------------------------------


class BrokenCache:
    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("cache is down")

        return fail


def test_broken_cache_degrades_to_per_process(endpoint, api, monkeypatch, all_logs):
    tenant = make_tenant()
    make_credential(tenant)
    monkeypatch.setattr(cache_backend, "shared", lambda: BrokenCache())
    for _ in range(5):
        assert get_session(tenant).get("/v2/payments/pay_1").status_code == 200
    assert endpoint.count == 1  # the per-process fallback still caches
    assert "fetching getpaid tokens per process" in all_logs.text


# --- tenant isolation -----------------------------------------------------------------


@pytest.fixture(scope="module")
def twenty_tenants(django_db_blocker, django_db_setup):
    with django_db_blocker.unblock():
        tenants = [make_tenant(slug=f"iso-{i}") for i in range(20)]
        for t in tenants:
            make_credential(t, client_id=f"client-iso-{i}" if (i := t.slug) else "")
    yield tenants
    with django_db_blocker.unblock():
        for t in tenants:
            t.delete()


@hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    order=st.lists(st.integers(min_value=0, max_value=19), min_size=1, max_size=60),
    use_key=st.booleans(),
)
def test_tenants_never_get_each_others_tokens(twenty_tenants, order, use_key):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        endpoint = TokenEndpoint(mock)
        for i in order:
            tenant = twenty_tenants[i]
            token = get_token(tenant.slug if use_key else tenant)
            from django_getpaid_auth.testing import decode_jwt

            claims = decode_jwt(token.value)[1]
            assert claims["sub"] == f"client-iso-{tenant.slug}@clients"
        assert endpoint.count <= len(set(order))


def test_undecryptable_credential_is_a_typed_error_and_no_request(settings, endpoint):
    from django_getpaid_auth.exceptions import CredentialDecryptionError
    from tests.settings import TEST_KEY_B

    tenant = make_tenant()
    credential = make_credential(tenant)
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "ENCRYPTION_KEYS": [TEST_KEY_B]}
    with pytest.raises(CredentialDecryptionError, match=f"pk={credential.pk}"):
        get_token(tenant)
    assert endpoint.count == 0


def test_short_lived_tokens_are_reused_before_refresh(rsps, fake_clock):
    """A 20 s token: margin capped at half the lifetime, skew at a quarter."""
    endpoint = TokenEndpoint(rsps, expires_in=20)
    tenant = make_tenant()
    make_credential(tenant)
    first = get_token(tenant)
    fake_clock.advance(4)
    assert get_token(tenant) == first and endpoint.count == 1
    fake_clock.advance(6)  # 10 s: half the lifetime, refresh due
    from django_getpaid_auth import token_store

    assert get_token(tenant) == first  # still valid: served while the refresh runs
    token_store.wait_for_background_refreshes()
    assert get_token(tenant) != first and endpoint.count == 2


def test_token_never_sent_over_plain_http_to_an_https_api(endpoint, rsps):
    tenant = make_tenant()
    make_credential(tenant)
    rsps.add(responses.GET, "http://api.sandbox.getpaid.test/v2/payments/pay_1", body="x")
    with pytest.raises(ForeignHostError, match="http://"):
        get_session(tenant).get("http://api.sandbox.getpaid.test/v2/payments/pay_1")
    assert not [c for c in rsps.calls if c.request.url.startswith("http://api")]


def test_basic_auth_form_encodes_id_and_secret(settings, endpoint):
    import base64

    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "CLIENT_AUTH_METHOD": "client_secret_basic"}
    tenant = make_tenant()
    make_credential(tenant, client_id="id:with+chars", client_secret="p+ss/w%rd:x")
    get_token(tenant)
    header = endpoint.requests[0].headers["Authorization"].split()[1]
    assert base64.b64decode(header).decode() == "id%3Awith%2Bchars:p%2Bss%2Fw%25rd%3Ax"


def test_a_model_that_is_not_the_tenant_model_is_refused(endpoint):
    from tests.testapp.models import Organization

    make_credential(make_tenant())
    org = Organization.objects.create(code="x", title="X")
    with pytest.raises(TypeError, match=r"django_getpaid_auth\.Tenant"):
        get_session(org)
    assert endpoint.count == 0


def test_cache_outage_warning_is_not_repeated_every_retry(
    endpoint, monkeypatch, all_logs, settings
):
    tenant = make_tenant()
    make_credential(tenant)
    monkeypatch.setattr(cache_backend, "shared", lambda: BrokenCache())
    monkeypatch.setattr(cache_backend, "RETRY_SHARED_AFTER", 0.0)  # retry the cache every call
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "LOCAL_CACHE_TIMEOUT": 0}
    for _ in range(5):
        get_token(tenant)
    assert all_logs.text.count("fetching getpaid tokens per process") == 1


def test_a_secret_echoed_by_the_server_is_masked(endpoint, canary, all_logs):
    tenant = make_tenant()
    make_credential(tenant, client_secret=canary)
    endpoint.fail_next(auth0_error(401, "access_denied", f"Unauthorized secret {canary}"))
    with pytest.raises(InvalidClientError) as excinfo:
        get_token(tenant)
    assert canary not in str(excinfo.value) and canary not in all_logs.text
    assert "Unauthorized secret ***" in str(excinfo.value)


def test_changing_the_secret_deletes_the_old_cached_token(
    endpoint, django_capture_on_commit_callbacks
):
    from django_getpaid_auth import credentials, token_store

    tenant = make_tenant()
    make_credential(tenant)
    credential = ClientCredential.objects.get(tenant=tenant)
    get_token(tenant)
    old_key = token_store.token_key(credentials.resolve(tenant))
    assert cache_backend.get(old_key) is not None
    credential.client_secret = "a-new-secret-value"
    with django_capture_on_commit_callbacks(execute=True):
        credential.save()
    assert cache_backend.get(old_key) is None  # deleted, not merely unreachable
