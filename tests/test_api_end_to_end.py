"""Calling the getpaid API end to end over real HTTP, against the fake getpaid on loopback.

What issue 12 promises, seen from a view's side: every POST carries an idempotency key
(a fresh UUID4 unless the caller set one), a retried POST creates exactly one payment
even when the connection dropped after getpaid committed it, errors are typed and carry
the trace ids, a 400 is not retried, and no message or log line holds a token or a body.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
import requests

from django_getpaid_auth import api_error, get_session, get_token
from django_getpaid_auth.exceptions import (
    APIAuthorizationError,
    APIBadRequestError,
    APIConflictError,
    APINotFoundError,
    APIRateLimitedError,
    APIServerError,
    GetpaidAPIError,
    GetpaidAuthError,
)
from django_getpaid_auth.testing import FakeGetpaid
from django_getpaid_auth.testing.jwt import InvalidTokenError
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db

CLIENT = "e2e-api-client"
ORDERS = uuid.UUID("6f1c1a52-8f1e-4d8e-9a43-0e6f3c1d2b7a")


def payment(reference: str = "ORD-202510-0232", amount: int = 10000) -> dict[str, Any]:
    """A CreatePaymentRequest (the spec's CreateSubsequentPayment example)."""
    return {
        "reference": reference,
        "amount": amount,
        "currency": "EUR",
        "splits": {
            "type": "per_transaction",
            "accounts": [
                {"type": "seller", "id": "acc_4f5zanqzxfg9w9jj5e81bm6bc9", "split": {"amount": 1}}
            ],
        },
        "standing_instruction": {"id": "sti_4tbftjwzxja1h71nzas1g0g1xm"},
    }


@pytest.fixture
def fake(fake_getpaid_settings: FakeGetpaid) -> FakeGetpaid:
    return fake_getpaid_settings


@pytest.fixture
def tenant(fake, canary):
    """A tenant whose client secret is the canary: it must show up nowhere."""
    tenant = make_tenant(slug="e2e-api")
    make_credential(tenant, client_id=CLIENT, client_secret=canary, scopes="payments:read_write")
    fake.register_client(CLIENT, canary)
    return tenant


def created(fake: FakeGetpaid) -> int:
    """Payments created through the API (each client starts with three demo payments)."""
    return len(fake.payments(CLIENT)) - 3


# --------------------------------------------------------------------------- idempotency keys


def test_a_post_without_a_key_gets_a_fresh_uuid4(tenant, fake):
    session = get_session(tenant)
    first = session.post("/v2/payments", json=payment())
    second = session.post("/v2/payments", json=payment())
    assert (first.status_code, second.status_code) == (201, 201)
    keys = fake.idempotency_keys(CLIENT)
    assert len(keys) == 2 and keys[0] != keys[1]
    for key in keys:
        assert str(uuid.UUID(key)) == key  # canonical form
        assert uuid.UUID(key).version == 4
    assert first.request.headers["Getpaid-Idempotency-Key"] == keys[0]
    assert created(fake) == 2


@pytest.mark.parametrize("header", ["Getpaid-Idempotency-Key", "getpaid-idempotency-key"])
def test_the_callers_key_is_kept(tenant, fake, header):
    key = str(uuid.uuid5(ORDERS, "order-42-pay"))
    session = get_session(tenant)
    first = session.post("/v2/payments", json=payment(), headers={header: key})
    # The same operation again later (a double click, a task retried by the queue):
    again = get_session(tenant).post("/v2/payments", json=payment(), headers={header: key})
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Getpaid-Trace-Id"] == first.headers["Getpaid-Trace-Id"]
    assert fake.idempotency_keys(CLIENT) == [key, key]
    assert created(fake) == 1


def test_gets_carry_no_key(tenant, fake):
    assert get_session(tenant).get("/v2/payments/pay_e2e-api-client_1").status_code == 200
    assert fake.idempotency_keys() == []


def test_the_key_is_kept_on_the_401_retry(tenant, fake):
    get_token(tenant)
    fake.revoke_tokens()  # the cached token now gets a 401, then a new one is fetched
    response = get_session(tenant).post("/v2/payments", json=payment())
    assert response.status_code == 201
    assert [r.status_code for r in response.history] == [401]
    key = response.request.headers["Getpaid-Idempotency-Key"]
    assert fake.idempotency_keys(CLIENT) == [key, key]
    assert response.getpaid_failed_trace_ids == (fake.api_requests[0]["trace_id"],)
    assert created(fake) == 1


# --------------------------------------------------------------------------- retries


def test_a_dropped_connection_after_the_commit_creates_exactly_one_payment(tenant, fake):
    fake.fail_next_api_requests("commit_then_reset")
    response = get_session(tenant, raise_errors=True).post("/v2/payments", json=payment())
    assert response.status_code == 201
    assert response.getpaid_attempts == 2
    assert created(fake) == 1
    key = response.request.headers["Getpaid-Idempotency-Key"]
    assert fake.idempotency_keys(CLIENT) == [key, key]
    first, retry = fake.api_requests
    assert (first["fault"], first["committed_status"]) == ("commit_then_reset", 201)
    assert retry["replayed"] is True
    assert response.json()["id"] == fake.payments(CLIENT)[-1]["id"]


def test_a_500_is_retried_with_the_same_key(tenant, fake):
    fake.fail_next_api_requests("500")
    response = get_session(tenant).post("/v2/payments", json=payment())
    assert response.status_code == 201
    assert response.getpaid_attempts == 2
    assert response.getpaid_failed_trace_ids == (fake.api_requests[0]["trace_id"],)
    assert len(set(fake.idempotency_keys(CLIENT))) == 1
    assert created(fake) == 1


@pytest.mark.parametrize("kind", ["reset", "502_html", "503", "429"])
def test_a_get_is_retried_after_transient_failures(tenant, fake, kind):
    fake.fail_next_api_requests(kind, count=2, retry_after=0 if kind == "429" else None)
    response = get_session(tenant).get("/v2/payments/pay_e2e-api-client_1")
    assert response.status_code == 200
    assert response.getpaid_attempts == 3
    assert fake.api_request_count(CLIENT) == 3


def test_connection_failures_after_the_retries_raise_with_the_attempts(tenant, fake):
    fake.fail_next_api_requests("reset", count=3)
    with pytest.raises(requests.ConnectionError) as raised:
        get_session(tenant).post("/v2/payments", json=payment())
    assert raised.value.getpaid_attempts == 3
    assert created(fake) == 0
    assert len(set(fake.idempotency_keys(CLIENT))) == 1


def test_a_400_is_not_retried(tenant, fake):
    session = get_session(tenant, raise_errors=True)
    with pytest.raises(APIBadRequestError) as raised:
        session.post("/v2/payments", data=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert raised.value.status_code == 400
    assert raised.value.attempts == 1
    assert raised.value.failed_trace_ids == ()
    assert fake.api_request_count() == 1


def test_api_retries_zero_turns_retries_off(tenant, fake, settings):
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "API_RETRIES": 0}
    fake.fail_next_api_requests("503")
    response = get_session(tenant).get("/v2/payments/pay_e2e-api-client_1")
    assert response.status_code == 503
    assert response.getpaid_attempts == 1


# --------------------------------------------------------------------------- typed errors


class _RefusingTokens:
    """Token checks that refuse every token: the API answers 401 even after the retry."""

    def __init__(self, fake: FakeGetpaid) -> None:
        self.fake = fake

    def read_token(self, token: str) -> dict[str, Any]:
        return self.fake.read_token(token)

    def verify_token(self, token: str) -> dict[str, Any]:
        raise InvalidTokenError("The access token has been revoked")


def _bad_request(session, fake):
    return session.post("/v2/payments", data=b"[]", headers={"Content-Type": "application/json"})


def _invalid(session, fake):
    return session.post("/v2/payments", json={"amount": "ten"})


def _unauthorized(session, fake):
    fake.api.tokens = _RefusingTokens(fake)
    return session.get("/v2/payments/pay_e2e-api-client_1")


def _forbidden(session, fake):
    reader = make_tenant(slug="e2e-api-reader")
    make_credential(reader, client_id="e2e-api-reader", scopes="payments:read")
    fake.register_client("e2e-api-reader", "s3cret-value", scopes="payments:read")
    return get_session(reader, raise_errors=True).post("/v2/payments", json=payment())


def _not_found(session, fake):
    return session.get("/v2/payments/pay_nope", params={"expand": "refunds"})


def _conflict(session, fake):
    key = str(uuid.uuid5(ORDERS, "order-7-pay"))
    session.post("/v2/payments", json=payment(), headers={"Getpaid-Idempotency-Key": key})
    fake.reset_counters()
    changed = payment(amount=20000)
    return session.post("/v2/payments", json=changed, headers={"Getpaid-Idempotency-Key": key})


def _rate_limited_long(session, fake):
    fake.fail_next_api_requests("429", retry_after=3600)
    return session.get("/v2/payments/pay_e2e-api-client_1")


def _rate_limited_short(session, fake):
    fake.fail_next_api_requests("429", count=3, retry_after=0)
    return session.post("/v2/payments", json=payment())


def _server_error(session, fake):
    fake.fail_next_api_requests("500", count=3)
    return session.post("/v2/payments", json=payment())


def _unavailable(session, fake):
    fake.fail_next_api_requests("503", count=3)
    return session.get("/v2/payments/pay_e2e-api-client_1")


ERRORS = [
    # (provoke, status, class, method, path, attempts)
    (_bad_request, 400, APIBadRequestError, "POST", "/v2/payments", 1),
    (_invalid, 422, APIBadRequestError, "POST", "/v2/payments", 1),
    (_unauthorized, 401, APIAuthorizationError, "GET", "/v2/payments/pay_e2e-api-client_1", 1),
    (_forbidden, 403, APIAuthorizationError, "POST", "/v2/payments", 1),
    (_not_found, 404, APINotFoundError, "GET", "/v2/payments/pay_nope", 1),
    (_conflict, 409, APIConflictError, "POST", "/v2/payments", 1),
    (_rate_limited_long, 429, APIRateLimitedError, "GET", "/v2/payments/pay_e2e-api-client_1", 1),
    (_rate_limited_short, 429, APIRateLimitedError, "POST", "/v2/payments", 3),
    (_server_error, 500, APIServerError, "POST", "/v2/payments", 3),
    (_unavailable, 503, APIServerError, "GET", "/v2/payments/pay_e2e-api-client_1", 3),
]


@pytest.mark.parametrize(
    ("provoke", "status", "error_class", "method", "path", "attempts"),
    ERRORS,
    ids=[e[0].__name__.strip("_") for e in ERRORS],
)
def test_each_error_class_carries_its_trace_ids(
    tenant, fake, provoke, status, error_class, method, path, attempts
):
    with pytest.raises(error_class) as raised:
        provoke(get_session(tenant, raise_errors=True), fake)
    error = raised.value
    assert isinstance(error, GetpaidAPIError)
    assert isinstance(error, GetpaidAuthError)
    assert isinstance(error, requests.HTTPError)
    assert error.status_code == status == error.response.status_code
    last = fake.api_requests[-1]
    assert error.trace_id == last["trace_id"] == error.response.headers["Getpaid-Trace-Id"]
    assert error.problem is not None and error.problem["status"] == status
    assert error.method == method
    assert error.path.endswith(path)
    assert "?" not in error.path
    assert error.attempts == attempts
    # Every earlier answer of this call failed: retried ones, or a retried 401.
    assert error.failed_trace_ids == tuple(r["trace_id"] for r in fake.api_requests[:-1])
    assert error.trace_id not in error.failed_trace_ids
    if method == "POST":
        assert error.idempotency_key == last["idempotency_key"] is not None
    else:
        assert error.idempotency_key is None
    assert f"getpaid API {status}" in str(error)
    assert f"on {method} " in str(error)
    assert error.trace_id in str(error)
    if error_class is APIRateLimitedError:
        assert error.retry_after == (3600 if attempts == 1 else 0)


def test_api_error_returns_the_same_error_without_raise_errors(tenant, fake):
    session = get_session(tenant)
    response = session.get("/v2/payments/pay_nope")
    assert response.status_code == 404  # requests' behaviour: no exception
    error = api_error(response)
    assert isinstance(error, APINotFoundError)
    assert error.trace_id == response.headers["Getpaid-Trace-Id"]
    assert error.problem["title"] == "Not Found"
    assert api_error(session.get("/v2/payments/pay_e2e-api-client_1")) is None


# --------------------------------------------------------------------------- no secrets


def test_no_token_or_body_in_any_message_or_log_line(tenant, fake, canary, caplog):
    caplog.set_level(logging.DEBUG, logger="django_getpaid_auth")
    caplog.set_level(logging.DEBUG, logger="django_getpaid_auth.api")
    session = get_session(tenant, raise_errors=True)
    body = payment(reference=canary)
    key = str(uuid.uuid5(ORDERS, "order-1-pay"))
    errors: list[BaseException] = []

    ok = session.post("/v2/payments", json=body, headers={"Getpaid-Idempotency-Key": key})
    assert ok.status_code == 201
    tokens = [get_token(tenant).value]

    def expect(error_class: type[BaseException], call) -> None:
        with pytest.raises(error_class) as raised:
            call()
        errors.append(raised.value)

    # 409: the same key, another body (the canary is in both bodies).
    expect(
        APIConflictError,
        lambda: session.post(
            "/v2/payments", json={**body, "amount": 1}, headers={"Getpaid-Idempotency-Key": key}
        ),
    )
    # 422 and 400 with the canary in the body.
    expect(APIBadRequestError, lambda: session.post("/v2/payments", json={"reference": canary}))
    expect(
        APIBadRequestError,
        lambda: session.post(
            "/v2/payments",
            data=f'["{canary}"]'.encode(),
            headers={"Content-Type": "application/json"},
        ),
    )
    # 500 after the retries, then a dropped connection after the retries.
    fake.fail_next_api_requests("500", count=3)
    expect(APIServerError, lambda: session.post("/v2/payments", json=body))
    fake.fail_next_api_requests("reset", count=3)
    expect(requests.ConnectionError, lambda: session.post("/v2/payments", json=body))
    # 404 with the canary in the query string (not part of the path shown).
    expect(APINotFoundError, lambda: session.get("/v2/payments/pay_nope", params={"q": canary}))
    # 401 after the 401 retry: a new token was fetched, and must not show either.
    fake.api.tokens = _RefusingTokens(fake)
    expect(APIAuthorizationError, lambda: session.post("/v2/payments", json=body))
    tokens.append(get_token(tenant).value)

    texts = [str(e) for e in errors] + [repr(e) for e in errors]
    texts += [repr(a) for e in errors for a in e.args]
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.args) for record in caplog.records]
    assert any(r.name == "django_getpaid_auth.api" for r in caplog.records)
    for text in texts:
        assert canary not in text
        for token in tokens:
            assert token not in text
        assert "Bearer " not in text


def test_each_call_is_logged_once_at_debug_without_headers_or_bodies(tenant, fake, caplog):
    caplog.set_level(logging.DEBUG, logger="django_getpaid_auth.api")
    fake.fail_next_api_requests("503")
    response = get_session(tenant).post("/v2/payments", json=payment(reference="REF-LOGGED"))
    assert response.status_code == 201
    lines = [r.getMessage() for r in caplog.records if r.name == "django_getpaid_auth.api"]
    final = [line for line in lines if response.headers["Getpaid-Trace-Id"] in line]
    assert len(final) == 1
    line = final[0]
    assert "POST" in line and "/v2/payments" in line and "201" in line
    assert "2 attempt" in line
    assert " ms" in line
    assert len(lines) == 2  # the retry of the 503, then the call
    for text in lines:
        assert "REF-LOGGED" not in text
        assert response.request.headers["Getpaid-Idempotency-Key"] not in text
        assert "Authorization" not in text
