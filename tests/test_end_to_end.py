"""End to end over real HTTP: the package against the fake getpaid server on loopback."""

from __future__ import annotations

import uuid

import pytest

from django_getpaid_auth import get_session, get_token
from django_getpaid_auth.exceptions import (
    AudienceNotEnabledError,
    InvalidClientError,
    InvalidScopeError,
    MalformedTokenResponseError,
    RateLimitedError,
    TokenEndpointUnavailableError,
    UnauthorizedClientError,
)
from django_getpaid_auth.testing import decode_jwt
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db


def idempotency() -> dict[str, str]:
    return {"Getpaid-Idempotency-Key": uuid.uuid4().hex}


@pytest.fixture
def tenant(fake_getpaid_settings, canary):
    tenant = make_tenant(slug="e2e")
    make_credential(tenant, client_id="e2e-client", client_secret=canary, scopes="payments:read")
    fake_getpaid_settings.register_client("e2e-client", canary)
    return tenant


def test_token_fetch_is_a_real_signed_jwt(tenant, fake_getpaid_settings):
    token = get_token(tenant)
    claims = fake_getpaid_settings.verify_token(token.value)  # signature, expiry, revocation
    assert claims["sub"] == "e2e-client@clients"
    assert claims["aud"] == "https://api.sandbox.getpaid.io"
    assert token.scopes == {"payments:read"}
    assert abs(token.expires_at.timestamp() - claims["exp"]) <= 1


def test_get_session_calls_the_api_with_one_token_request(tenant, fake_getpaid_settings):
    for _ in range(20):
        response = get_session("e2e").post("/v2/payments/query", json={}, headers=idempotency())
        assert response.status_code == 200
        assert {p["id"] for p in response.json()["data"]} == {
            f"pay_e2e-client_{i}" for i in (1, 2, 3)
        }
    one = get_session(tenant).get("/v2/payments/pay_e2e-client_1")
    assert one.status_code == 200 and one.json()["id"] == "pay_e2e-client_1"
    assert "Getpaid-Trace-Id" in one.headers
    assert fake_getpaid_settings.token_request_count("e2e-client") == 1


def test_api_problem_details_come_through(tenant):
    response = get_session(tenant).get("/v2/payments/pay_nope")
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["status"] == 404


def test_expired_or_revoked_token_is_renewed_by_the_401_retry(tenant, fake_getpaid_settings):
    first = get_token(tenant)
    fake_getpaid_settings.revoke_tokens()  # the API now answers 401 to the cached token
    response = get_session(tenant).post("/v2/payments/query", json={}, headers=idempotency())
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert fake_getpaid_settings.token_request_count("e2e-client") == 2
    assert get_token(tenant).value != first.value


@pytest.mark.parametrize(
    ("kind", "count", "error_class"),
    [
        ("500", 3, TokenEndpointUnavailableError),
        ("502_html", 3, TokenEndpointUnavailableError),
        ("503", 3, TokenEndpointUnavailableError),
        ("reset", 3, TokenEndpointUnavailableError),
        ("429", 1, RateLimitedError),
        ("quota_429", 1, RateLimitedError),
        ("malformed_json", 1, MalformedTokenResponseError),
        ("missing_fields", 1, MalformedTokenResponseError),
        ("negative_expires", 1, MalformedTokenResponseError),
    ],
)
def test_each_injected_fault_gives_its_typed_error(
    tenant, fake_getpaid_settings, kind, count, error_class, canary, all_logs
):
    fake_getpaid_settings.fail_next_token_requests(kind, count, retry_after=30)
    with pytest.raises(error_class) as excinfo:
        get_token(tenant)
    assert canary not in str(excinfo.value) and canary not in all_logs.text
    assert (
        fake_getpaid_settings.token_request_count("e2e-client")
        + (
            fake_getpaid_settings.token_requests_received("e2e-client")
            - fake_getpaid_settings.token_request_count("e2e-client")
        )
        == count
    )
    if kind == "quota_429":
        assert "b=per_hour" in excinfo.value.quota


def test_transient_faults_are_retried_to_success(tenant, fake_getpaid_settings):
    fake_getpaid_settings.fail_next_token_requests("502_html", 2)
    assert get_token(tenant)
    assert fake_getpaid_settings.token_request_count("e2e-client") == 3


def test_timeout_fault(tenant, fake_getpaid_settings, settings):
    settings.GETPAID_AUTH = {
        **settings.GETPAID_AUTH,
        "TOKEN_REQUEST_TIMEOUT": (1.0, 0.3),
        "TOKEN_REQUEST_RETRIES": 0,
    }
    fake_getpaid_settings.fault_timeout_sleep = 1.0
    fake_getpaid_settings.fail_next_token_requests("timeout", 1)
    with pytest.raises(TokenEndpointUnavailableError, match="timed out"):
        get_token(tenant)


def test_wrong_secret(fake_getpaid_settings):
    tenant = make_tenant()
    make_credential(tenant, client_id="wrong", client_secret="not-it")
    fake_getpaid_settings.register_client("wrong", "the-real-one")
    with pytest.raises(InvalidClientError):
        get_token(tenant)


def test_audience_not_enabled(fake_getpaid_settings):
    tenant = make_tenant()
    make_credential(tenant, client_id="live-only", client_secret="s")
    fake_getpaid_settings.register_client("live-only", "s", audiences=("https://api.getpaid.io",))
    with pytest.raises(AudienceNotEnabledError):
        get_token(tenant)


def test_scope_not_granted(fake_getpaid_settings):
    tenant = make_tenant()
    make_credential(
        tenant, client_id="narrow", client_secret="narrow-secret-1", scopes="accounts:read"
    )
    fake_getpaid_settings.register_client("narrow", "narrow-secret-1", scopes=("payments:read",))
    with pytest.raises(InvalidScopeError, match="accounts:read"):
        get_token(tenant)


def test_grant_type_not_allowed(fake_getpaid_settings):
    tenant = make_tenant()
    make_credential(tenant, client_id="no-cc", client_secret="s")
    fake_getpaid_settings.register_client("no-cc", "s", grant_types=("authorization_code",))
    with pytest.raises(UnauthorizedClientError):
        get_token(tenant)


def test_form_body_and_basic_auth_against_the_fake(fake_getpaid_settings, settings):
    settings.GETPAID_AUTH = {
        **settings.GETPAID_AUTH,
        "TOKEN_REQUEST_FORMAT": "form",
        "CLIENT_AUTH_METHOD": "client_secret_basic",
    }
    tenant = make_tenant()
    make_credential(tenant, client_id="basic+form", client_secret="p+ss%word")
    fake_getpaid_settings.register_client("basic+form", "p+ss%word")
    claims = decode_jwt(get_token(tenant).value)[1]
    assert claims["azp"] == "basic+form"
