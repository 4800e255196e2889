"""Calling the getpaid API (issue 12), package side: automatic idempotency keys, safe
retries and typed problem+json errors, with ``responses`` (and TokenEndpoint for tokens).

The end-to-end tests over real HTTP against FakeGetpaid live elsewhere; this file checks
each rule of ``api_rules`` as ``GetpaidSession`` applies it, plus a few real sockets for
the transport failures requests raises.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
import sys
import threading
import time
import uuid
from email.utils import formatdate
from types import SimpleNamespace

import pytest
import requests
import responses
import urllib3.exceptions
from django.core.checks import run_checks
from django.views.debug import ExceptionReporter

from django_getpaid_auth import api_error, api_rules, get_session, session
from django_getpaid_auth.conf import getpaid_settings
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
from tests.factories import make_credential, make_tenant

pytestmark = pytest.mark.django_db

API = "https://api.sandbox.getpaid.test"
KEY = "Getpaid-Idempotency-Key"
PAYMENT = {"amount": 1000, "currency": "EUR"}


@pytest.fixture
def tenant(endpoint):
    tenant = make_tenant()
    make_credential(tenant)
    return tenant


@pytest.fixture
def sleeps(monkeypatch):
    """The delays the session waits between attempts (recorded, not slept)."""
    waited: list[float] = []
    fake_time = SimpleNamespace(sleep=waited.append, monotonic=time.monotonic)
    monkeypatch.setattr(session, "time", fake_time)
    return waited


def api_calls(rsps) -> list:
    return [c for c in rsps.calls if c.request.url.startswith(API)]


def keys(rsps) -> list[str | None]:
    return [c.request.headers.get(KEY) for c in api_calls(rsps)]


def problem(status: int, title: str = "", detail: str = "", trace: str = "", **headers) -> dict:
    """``responses.add`` arguments for a problem+json answer."""
    document = {"type": "https://docs.getpaid.io/ref/error-types#problem", "status": status}
    if title:
        document["title"] = title
    if detail:
        document["detail"] = detail
    if trace:
        headers["Getpaid-Trace-Id"] = trace
    return {
        "status": status,
        "body": json.dumps(document),
        "content_type": "application/problem+json",
        "headers": headers,
    }


def traced(status: int, trace: str, **headers) -> dict:
    return {"status": status, "headers": {"Getpaid-Trace-Id": trace, **headers}}


def set_retries(settings, retries: int) -> None:
    settings.GETPAID_AUTH = {**settings.GETPAID_AUTH, "API_RETRIES": retries}


# --- idempotency keys ----------------------------------------------------------------


def test_post_gets_a_canonical_uuid4_key(tenant, rsps):
    rsps.add(responses.POST, f"{API}/v2/payments", json={"id": "pay_1"}, status=201)
    get_session(tenant).post("/v2/payments", json=PAYMENT)
    (key,) = keys(rsps)
    assert key == str(uuid.UUID(key)) and uuid.UUID(key).version == 4


def test_every_post_gets_its_own_key(tenant, rsps):
    rsps.add(responses.POST, f"{API}/v2/payments", json={}, status=201)
    session_ = get_session(tenant)
    session_.post("/v2/payments", json=PAYMENT)
    session_.post("/v2/payments", json=PAYMENT)
    first, second = keys(rsps)
    assert first != second


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"])
def test_only_post_gets_an_automatic_key(tenant, rsps, method):
    rsps.add(method, f"{API}/v2/payments/pay_1", status=200)
    get_session(tenant).request(method, "/v2/payments/pay_1")
    assert keys(rsps) == [None]


@pytest.mark.parametrize(
    "name", ["Getpaid-Idempotency-Key", "getpaid-idempotency-key", "GETPAID-IDEMPOTENCY-KEY"]
)
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_the_callers_key_is_kept_in_any_letter_case(tenant, rsps, name, method):
    rsps.add(method, f"{API}/v2/payments", json={}, status=201)
    get_session(tenant).request(
        method, "/v2/payments", json=PAYMENT, headers={name: "order-42-pay"}
    )
    (call,) = api_calls(rsps)
    sent = [v for k, v in call.request.headers.items() if k.lower() == KEY.lower()]
    assert sent == ["order-42-pay"]


def test_a_prepared_post_sent_directly_gets_a_key(tenant, rsps):
    rsps.add(responses.POST, f"{API}/v2/payments", json={}, status=201)
    session_ = get_session(tenant)
    prepared = session_.prepare_request(requests.Request("POST", f"{API}/v2/payments", json={}))
    session_.send(prepared)
    assert keys(rsps)[0] is not None


def test_the_same_key_on_every_transport_retry(tenant, rsps, sleeps):
    url = f"{API}/v2/payments"
    rsps.add(responses.POST, url, body=requests.ConnectionError("reset by peer"))
    rsps.add(responses.POST, url, **traced(503, "t-503"))
    rsps.add(responses.POST, url, json={"id": "pay_1"}, status=201)
    response = get_session(tenant).post("/v2/payments", data=b'{"amount": 1}')
    assert response.status_code == 201
    sent = keys(rsps)
    assert len(sent) == 3 and len(set(sent)) == 1 and sent[0] is not None
    assert [c.request.body for c in api_calls(rsps)] == [b'{"amount": 1}'] * 3
    assert response.getpaid_attempts == 3
    assert response.getpaid_failed_trace_ids == ("t-503",)
    assert len(sleeps) == 2


def test_the_same_key_on_the_401_retry(tenant, rsps, endpoint):
    url = f"{API}/v2/payments"
    rsps.add(responses.POST, url, **traced(401, "t-401"))
    rsps.add(responses.POST, url, json={"id": "pay_1"}, status=201)
    response = get_session(tenant).post("/v2/payments", json=PAYMENT)
    assert response.status_code == 201
    first, second = api_calls(rsps)
    assert first.request.headers[KEY] == second.request.headers[KEY]
    assert [c.request.headers["Authorization"] for c in (first, second)] == [
        f"Bearer {token}" for token in endpoint.issued
    ]
    assert response.getpaid_attempts == 1  # the 401 retry is not an attempt
    assert response.getpaid_failed_trace_ids == ("t-401",)


def test_401_retry_then_a_transport_retry_keep_the_key_and_the_new_token(
    tenant, rsps, endpoint, sleeps
):
    url = f"{API}/v2/payments"
    rsps.add(responses.POST, url, **traced(401, "t-401"))
    rsps.add(responses.POST, url, **traced(503, "t-503"))
    rsps.add(responses.POST, url, json={"id": "pay_1"}, status=201)
    response = get_session(tenant).post("/v2/payments", json=PAYMENT)
    assert response.status_code == 201
    calls = api_calls(rsps)
    assert len(calls) == 3 and len({c.request.headers[KEY] for c in calls}) == 1
    first, second = endpoint.issued
    assert [c.request.headers["Authorization"] for c in calls] == [
        f"Bearer {first}",
        f"Bearer {second}",
        f"Bearer {second}",
    ]
    assert response.getpaid_attempts == 2
    assert response.getpaid_failed_trace_ids == ("t-401", "t-503")


def test_only_one_401_retry_per_call_across_transport_retries(tenant, rsps, endpoint, sleeps):
    url = f"{API}/v2/payments/pay_1"
    rsps.add(responses.GET, url, status=401)
    rsps.add(responses.GET, url, status=503)
    rsps.add(responses.GET, url, status=401)
    rsps.add(responses.GET, url, json={})  # never reached: no second 401 retry
    response = get_session(tenant).get("/v2/payments/pay_1")
    assert response.status_code == 401
    assert len(api_calls(rsps)) == 3
    assert endpoint.count == 2  # the first token, and one replacement


# --- retries: what is retried ----------------------------------------------------------


def _reset() -> requests.ConnectionError:
    cause = urllib3.exceptions.ProtocolError(
        "Connection aborted.", http.client.RemoteDisconnected("closed without response")
    )
    return requests.ConnectionError(cause)


RETRYABLE_FIRST_ANSWERS = {
    "connection refused": {"body": requests.ConnectionError("refused")},
    "reset after sending": {"body": _reset()},
    "body cut": {"body": requests.exceptions.ChunkedEncodingError("cut")},
    "502": {"status": 502},
    "503": {"status": 503},
    "504": {"status": 504},
    "429 short Retry-After": {"status": 429, "headers": {"Retry-After": "0"}},
}


@pytest.mark.parametrize("first", RETRYABLE_FIRST_ANSWERS, ids=str)
@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", {}),
        ("HEAD", {}),
        ("OPTIONS", {}),
        ("POST", {}),
        ("PUT", {KEY: "caller-key-123"}),
        ("DELETE", {KEY: "caller-key-123"}),
    ],
    ids=["GET", "HEAD", "OPTIONS", "POST", "PUT+key", "DELETE+key"],
)
def test_retryable_failures_are_retried(tenant, rsps, sleeps, first, method, headers):
    url = f"{API}/v2/payments/pay_1"
    rsps.add(method, url, **RETRYABLE_FIRST_ANSWERS[first])
    rsps.add(method, url, status=200)
    response = get_session(tenant).request(method, "/v2/payments/pay_1", headers=headers)
    assert response.status_code == 200
    assert len(api_calls(rsps)) == 2
    assert response.getpaid_attempts == 2


@pytest.mark.parametrize(
    ("method", "headers"), [("POST", {}), ("PATCH", {KEY: "caller-key-123"})], ids=str
)
def test_500_is_retried_for_requests_with_a_key(tenant, rsps, sleeps, method, headers):
    url = f"{API}/v2/payments"
    rsps.add(method, url, **problem(500, "Internal Server Error", trace="t-500"))
    rsps.add(method, url, status=201)
    response = get_session(tenant).request(method, "/v2/payments", json={}, headers=headers)
    assert response.status_code == 201
    assert response.getpaid_failed_trace_ids == ("t-500",)


NOT_RETRIED = [
    ("GET", {"status": 500}, "500 without a key"),
    ("GET", {"status": 400}, "400"),
    ("GET", {"status": 404}, "404"),
    ("POST", {"status": 400}, "POST 400"),
    ("POST", {"status": 409}, "POST 409"),
    ("POST", {"status": 422}, "POST 422"),
    ("GET", {"status": 429}, "429 without Retry-After"),
    ("GET", {"status": 429, "headers": {"Retry-After": "soon"}}, "429 unreadable Retry-After"),
    ("PUT", {"status": 503}, "PUT without a key"),
    ("PATCH", {"body": requests.ConnectionError("refused")}, "PATCH without a key"),
    ("DELETE", {"status": 502}, "DELETE without a key"),
    ("GET", {"body": requests.exceptions.ReadTimeout("slow")}, "read timeout"),
    ("GET", {"body": requests.exceptions.SSLError("bad certificate")}, "TLS error"),
]


@pytest.mark.parametrize(
    ("method", "answer", "case"), NOT_RETRIED, ids=[c for *_, c in NOT_RETRIED]
)
def test_non_retryable_failures_are_not_retried(tenant, rsps, sleeps, method, answer, case):
    url = f"{API}/v2/payments/pay_1"
    rsps.add(method, url, **answer)
    rsps.add(method, url, status=200)
    try:
        response = get_session(tenant).request(method, "/v2/payments/pay_1")
    except requests.RequestException as exc:
        assert exc.getpaid_attempts == 1
    else:
        assert response.status_code == answer["status"]
        assert response.getpaid_attempts == 1
    assert len(api_calls(rsps)) == 1
    assert sleeps == []


def test_retries_stop_after_api_retries(tenant, rsps, sleeps):
    url = f"{API}/v2/payments/pay_1"
    for n in range(4):
        rsps.add(responses.GET, url, **traced(503, f"t-{n}"))
    response = get_session(tenant).get("/v2/payments/pay_1")
    assert response.status_code == 503
    assert len(api_calls(rsps)) == 3  # API_RETRIES = 2 by default
    assert response.getpaid_attempts == 3
    assert response.getpaid_failed_trace_ids == ("t-0", "t-1")
    assert len(sleeps) == 2
    base = getpaid_settings.typed.retry_backoff
    assert base / 2 <= sleeps[0] <= base and base <= sleeps[1] <= 2 * base


def test_api_retries_zero_disables_retries(tenant, rsps, sleeps, settings):
    set_retries(settings, 0)
    url = f"{API}/v2/payments"
    rsps.add(responses.POST, url, body=requests.ConnectionError("refused"))
    rsps.add(responses.POST, url, status=201)
    with pytest.raises(requests.ConnectionError) as excinfo:
        get_session(tenant).post("/v2/payments", json=PAYMENT)
    assert excinfo.value.getpaid_attempts == 1
    assert len(api_calls(rsps)) == 1 and sleeps == []


def test_a_connection_error_after_the_retries_is_raised_with_the_attempts(tenant, rsps, sleeps):
    url = f"{API}/v2/payments/pay_1"
    rsps.add(responses.GET, url, **traced(502, "t-502"))
    rsps.add(responses.GET, url, body=requests.ConnectionError("refused"))
    with pytest.raises(requests.ConnectionError) as excinfo:
        get_session(tenant).get("/v2/payments/pay_1")
    assert excinfo.value.getpaid_attempts == 3
    assert excinfo.value.getpaid_failed_trace_ids == ("t-502",)
    frames = [tb.tb_frame.f_code.co_filename for tb in _walk(excinfo.value.__traceback__)]
    assert not [f for f in frames if "urllib3" in f or f.endswith("adapters.py")]


def _walk(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next


def test_429_waits_its_short_retry_after(tenant, rsps, sleeps):
    url = f"{API}/v2/payments/pay_1"
    rsps.add(responses.GET, url, status=429, headers={"Retry-After": "0.15"})
    rsps.add(responses.GET, url, status=200)
    assert get_session(tenant).get("/v2/payments/pay_1").status_code == 200
    assert sleeps == [0.15]


@pytest.mark.parametrize("retry_after", ["1", "3600", formatdate(time.time() + 120, usegmt=True)])
def test_429_with_a_retry_after_over_the_cap_is_not_waited(tenant, rsps, sleeps, retry_after):
    url = f"{API}/v2/payments"
    rsps.add(
        responses.POST, url, **problem(429, "Too Many Requests", **{"Retry-After": retry_after})
    )
    rsps.add(responses.POST, url, status=201)
    with pytest.raises(APIRateLimitedError) as excinfo:
        get_session(tenant, raise_errors=True).post("/v2/payments", json=PAYMENT)
    assert len(api_calls(rsps)) == 1 and sleeps == []
    assert excinfo.value.retry_after > getpaid_settings.typed.max_retry_after


def test_a_file_body_is_sent_whole_on_every_retry(tenant, rsps, sleeps):
    url = f"{API}/v2/payments"
    rsps.add(responses.POST, url, status=503)
    rsps.add(responses.POST, url, status=503)
    rsps.add(responses.POST, url, status=201)
    body = io.BytesIO(b'xx{"amount": 1}')
    body.seek(2)
    get_session(tenant).post("/v2/payments", data=body)
    sent = []
    for call in api_calls(rsps):
        data = call.request.body
        sent.append(data.read() if hasattr(data, "read") else data)
    assert sent[-1] == b'{"amount": 1}' and len(sent) == 3


def test_a_body_that_cannot_be_sent_again_is_not_retried(tenant, rsps, sleeps):
    url = f"{API}/v2/payments"
    rsps.add(responses.POST, url, status=503)
    rsps.add(responses.POST, url, status=201)
    response = get_session(tenant).post("/v2/payments", data=iter([b'{"amount": 1}']))
    assert response.status_code == 503
    assert len(api_calls(rsps)) == 1 and sleeps == []


def test_a_failure_on_the_redirect_target_retries_the_call(tenant, rsps, sleeps):
    rsps.add(responses.GET, f"{API}/v2/old", status=302, headers={"Location": f"{API}/v2/new"})
    rsps.add(responses.GET, f"{API}/v2/new", status=503)
    rsps.add(responses.GET, f"{API}/v2/new", json={"ok": True})
    response = get_session(tenant).get("/v2/old")
    assert response.json() == {"ok": True}
    assert [c.request.url for c in api_calls(rsps)] == [
        f"{API}/v2/{p}" for p in ("old", "new", "old", "new")
    ]
    assert response.getpaid_attempts == 2


# --- typed errors --------------------------------------------------------------------


ERROR_CLASSES = [
    (400, APIBadRequestError),
    (422, APIBadRequestError),
    (401, APIAuthorizationError),
    (403, APIAuthorizationError),
    (404, APINotFoundError),
    (409, APIConflictError),
    (429, APIRateLimitedError),
    (500, APIServerError),
    (501, APIServerError),
    (503, APIServerError),
    (410, GetpaidAPIError),
    (418, GetpaidAPIError),
]


@pytest.mark.parametrize(("status", "cls"), ERROR_CLASSES)
def test_each_error_status_raises_its_class(tenant, rsps, sleeps, status, cls, settings):
    set_retries(settings, 0)
    url = f"{API}/v2/payments"
    rsps.add(responses.POST, url, **problem(status, "Title", "Some detail", trace=f"t-{status}"))
    with pytest.raises(GetpaidAPIError) as excinfo:
        get_session(tenant, raise_errors=True).post(
            "/v2/payments?expand=all", json=PAYMENT, headers={KEY: "order-42-pay"}
        )
    error = excinfo.value
    assert type(error) is cls
    assert isinstance(error, GetpaidAuthError) and isinstance(error, requests.HTTPError)
    assert error.status_code == status
    assert error.problem["title"] == "Title" and error.problem["detail"] == "Some detail"
    assert error.trace_id == f"t-{status}"
    assert error.idempotency_key == "order-42-pay"
    assert (error.method, error.path) == ("POST", "/v2/payments")
    assert error.attempts == 1
    assert error.failed_trace_ids == (("t-401",) if status == 401 else ())  # the 401 retry
    assert error.response.status_code == status and error.request is error.response.request
    assert f"getpaid API {status} " in str(error)
    assert str(error).endswith(f"on POST /v2/payments: Title — Some detail (trace id t-{status})")


def test_conflict_message_reads_as_documented(tenant, rsps):
    rsps.add(
        responses.POST,
        f"{API}/v2/payments",
        **problem(409, "Conflict", "Idempotency key reused with a different body", trace="abc"),
    )
    with pytest.raises(APIConflictError) as excinfo:
        get_session(tenant, raise_errors=True).post("/v2/payments", json=PAYMENT)
    assert str(excinfo.value) == (
        "getpaid API 409 Conflict on POST /v2/payments: Conflict — Idempotency key reused "
        "with a different body (trace id abc)"
    )
    assert uuid.UUID(excinfo.value.idempotency_key).version == 4


def test_server_error_after_retries_carries_attempts_and_failed_trace_ids(tenant, rsps, sleeps):
    url = f"{API}/v2/payments"
    for n in range(3):
        rsps.add(responses.POST, url, **problem(500, "Internal Server Error", trace=f"t-{n}"))
    with pytest.raises(APIServerError) as excinfo:
        get_session(tenant, raise_errors=True).post("/v2/payments", json=PAYMENT)
    error = excinfo.value
    assert error.attempts == 3 and error.failed_trace_ids == ("t-0", "t-1")
    assert error.trace_id == "t-2"
    assert str(error) == (
        "getpaid API 500 Internal Server Error on POST /v2/payments: Internal Server Error "
        "(trace id t-2, 3 attempts)"
    )


def test_rate_limited_error_has_retry_after(tenant, rsps):
    rsps.add(responses.GET, f"{API}/v2/payments", status=429, headers={"Retry-After": "30"})
    with pytest.raises(APIRateLimitedError) as excinfo:
        get_session(tenant, raise_errors=True).get("/v2/payments")
    assert excinfo.value.retry_after == 30.0
    assert excinfo.value.problem is None


def test_rate_limited_error_without_retry_after(tenant, rsps):
    rsps.add(responses.GET, f"{API}/v2/payments", status=429)
    with pytest.raises(APIRateLimitedError) as excinfo:
        get_session(tenant, raise_errors=True).get("/v2/payments")
    assert excinfo.value.retry_after is None


def test_a_body_that_is_not_problem_json_gives_no_problem(tenant, rsps):
    rsps.add(responses.GET, f"{API}/v2/x", json={"title": "not a problem+json"}, status=404)
    with pytest.raises(APINotFoundError) as excinfo:
        get_session(tenant, raise_errors=True).get("/v2/x")
    assert excinfo.value.problem is None
    assert str(excinfo.value) == "getpaid API 404 Not Found on GET /v2/x (no trace id)"


def test_without_raise_errors_the_answer_is_returned(tenant, rsps):
    rsps.add(responses.GET, f"{API}/v2/x", **problem(404, "Not Found"))
    response = get_session(tenant).get("/v2/x")
    assert response.status_code == 404 and response.json()["title"] == "Not Found"


def test_raise_errors_is_keyword_only(tenant):
    with pytest.raises(TypeError):
        get_session(tenant, None, True)
    assert get_session(tenant, raise_errors=True).raise_errors is True
    assert get_session(tenant).raise_errors is False


def test_api_error_on_ok_and_error_answers(tenant, rsps):
    rsps.add(responses.GET, f"{API}/v2/ok", json={})
    rsps.add(responses.POST, f"{API}/v2/payments", **problem(422, "Invalid", "amount", trace="t"))
    session_ = get_session(tenant)
    assert api_error(session_.get("/v2/ok")) is None
    response = session_.post("/v2/payments", json=PAYMENT)
    error = api_error(response)
    assert type(error) is APIBadRequestError and error.response is response
    phrase = api_rules.status_phrase(422)  # "Unprocessable Content" since Python 3.13
    assert (
        str(error)
        == f"getpaid API 422 {phrase} on POST /v2/payments: Invalid — amount (trace id t)"
    )
    with pytest.raises(APIBadRequestError) as excinfo:
        get_session(tenant, raise_errors=True).post("/v2/payments", json=PAYMENT)
    assert str(excinfo.value) == str(error)
    assert excinfo.value.idempotency_key != error.idempotency_key  # two calls, two keys


def test_api_error_on_a_plain_requests_response(rsps):
    rsps.add(responses.GET, "https://elsewhere.test/v2/x", **problem(404, "Gone", trace="t"))
    response = requests.get("https://elsewhere.test/v2/x?q=1", timeout=5)
    error = api_error(response)
    assert type(error) is APINotFoundError
    assert (error.attempts, error.failed_trace_ids, error.path) == (1, (), "/v2/x")


def test_api_error_of_a_streamed_answer_reads_a_bounded_prefix(tenant, rsps):
    huge = b'{"title": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    rsps.add(
        responses.GET, f"{API}/v2/x", body=huge, status=500, content_type="application/problem+json"
    )
    rsps.add(responses.GET, f"{API}/v2/small", **problem(400, "Small", trace="t"))
    session_ = get_session(tenant)
    response = session_.get("/v2/x", stream=True)
    error = api_error(response)
    assert type(error) is APIServerError and error.problem is None
    assert len(response.content) <= api_rules.MAX_PROBLEM_BYTES + 1
    small = session_.get("/v2/small", stream=True)
    assert api_error(small).problem["title"] == "Small"
    assert small.json()["title"] == "Small"  # the body read for the problem stays readable


HOSTILE_BODIES = {
    "huge": b'{"title": "' + b"A" * (2 * 1024 * 1024) + b'"}',
    "huge and deeply nested": b"[" * 200_000 + b"]" * 200_000,
    "deeply nested array": b"[" * 32_000 + b"]" * 32_000,  # within MAX_PROBLEM_BYTES
    "deeply nested object": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "not utf-8": b'{"title": "\xff\xfe\xfa"}',
    "array": b'["title"]',
    "NaN": b'{"title": NaN}',
    "truncated": b'{"title": "cut',
    "empty": b"",
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_hostile_problem_bodies_give_a_typed_error(tenant, rsps, body):
    rsps.add(
        responses.GET, f"{API}/v2/x", body=body, status=400, content_type="application/problem+json"
    )
    with pytest.raises(APIBadRequestError) as excinfo:
        get_session(tenant, raise_errors=True).get("/v2/x")
    assert excinfo.value.problem is None
    assert str(excinfo.value) == "getpaid API 400 Bad Request on GET /v2/x (no trace id)"


def test_a_huge_number_in_a_problem_gives_a_typed_error(tenant, rsps):
    body = b'{"title": "T", "status": ' + b"9" * 50_000 + b"}"  # ValueError from Python 3.11
    rsps.add(
        responses.GET, f"{API}/v2/x", body=body, status=400, content_type="application/problem+json"
    )
    with pytest.raises(APIBadRequestError) as excinfo:
        get_session(tenant, raise_errors=True).get("/v2/x")
    assert len(str(excinfo.value)) < 200


def test_hostile_problem_text_is_escaped_and_bounded(tenant, rsps):
    detail = "line1\nline2\x1b[31m\u202egnp.exe" + "y" * 10_000
    headers = {"Getpaid-Trace-Id": "t\u202e" + "z" * 5000}
    rsps.add(
        responses.GET,
        f"{API}/v2/x",
        status=400,
        content_type="application/problem+json",
        body=json.dumps({"title": {"not": "a string"}, "detail": detail}),
        headers=headers,
    )
    with pytest.raises(APIBadRequestError) as excinfo:
        get_session(tenant, raise_errors=True).get("/v2/x")
    message = str(excinfo.value)
    assert "\n" not in message and "\x1b" not in message and "\u202e" not in message
    assert "line1 line2\\x1b[31m\\u202egnp.exe" in message
    assert len(message) < 1000
    assert excinfo.value.problem["detail"] == detail  # the document itself is as sent
    assert len(excinfo.value.trace_id) <= api_rules.MAX_HEADER_TEXT


def test_no_token_or_body_in_messages_or_logs(tenant, rsps, endpoint, canary, all_logs, sleeps):
    """A server that quotes the token back gets it masked; the request body never shows."""

    def echo(request):
        token = request.headers["Authorization"].partition(" ")[2]
        document = {"title": "Bad", "detail": f"token {token} refused"}
        return 500, {"Content-Type": "application/problem+json"}, json.dumps(document)

    rsps.add_callback(responses.POST, f"{API}/v2/payments", callback=echo)
    with pytest.raises(APIServerError) as excinfo:
        get_session(tenant, raise_errors=True).post(
            f"/v2/payments?secret={canary}", json={"card": canary}, headers={"X-Note": canary}
        )
    token = endpoint.issued[-1]
    shown = [str(excinfo.value), repr(excinfo.value), all_logs.text]
    shown += [str(r.args) for r in all_logs.records]
    for text in shown:
        assert canary not in text and token not in text and "Bearer" not in text
    assert "token [token] refused" in str(excinfo.value)


def _conflict_exc_info(tenant):
    """exc_info of a raise_errors call, from a frame with no token among its locals."""
    try:
        get_session(tenant, raise_errors=True).post("/v2/payments", json=PAYMENT)
    except APIConflictError:
        return sys.exc_info()
    raise AssertionError("no error raised")


@pytest.mark.parametrize("debug", [True, False])
def test_error_reports_of_an_api_error_do_not_show_the_token(
    tenant, rsps, endpoint, settings, rf, debug
):
    """The frames below the session (they hold the Authorization header) are cut. (The
    caller's own frames, requests' ``post()`` included, still show the body it passed.)"""
    settings.DEBUG = debug  # False: what is mailed to ADMINS; True: the DEBUG page
    rsps.add(responses.POST, f"{API}/v2/payments", **problem(409, "Conflict", trace="t"))
    exc_info = _conflict_exc_info(tenant)
    reporter = ExceptionReporter(rf.get("/pay/"), *exc_info)
    text, page = reporter.get_traceback_text(), reporter.get_traceback_html()
    assert "APIConflictError" in text and "_conflict_exc_info" in page
    for report in (text, page):
        assert endpoint.issued[-1] not in report


# --- logging ---------------------------------------------------------------------------


def test_each_call_is_logged_at_debug_without_headers_or_query(tenant, rsps, caplog, sleeps):
    caplog.set_level(logging.DEBUG, logger="django_getpaid_auth.api")
    url = f"{API}/v2/payments/pay_1"
    rsps.add(responses.GET, url, **traced(503, "t-1"))
    rsps.add(responses.GET, url, **traced(200, "t-2"))
    get_session(tenant).get("/v2/payments/pay_1?token=abc")
    lines = [r.getMessage() for r in caplog.records if r.name == "django_getpaid_auth.api"]
    assert lines[-1].startswith(
        "getpaid API GET /v2/payments/pay_1 -> 200 (trace id t-2, 2 attempts, "
    )
    assert lines[-1].endswith(" ms)")
    assert any("503 on attempt 1; retrying" in line for line in lines)
    assert all("abc" not in line and "Authorization" not in line for line in lines)
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name.endswith(".api"))


# --- settings --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, 11, "2", 1.5, True])
def test_bad_api_retries_is_e007(settings, value):
    set_retries(settings, value)
    messages = [m for m in run_checks() if m.id == "django_getpaid_auth.E007"]
    assert len(messages) == 1 and "API_RETRIES" in messages[0].msg


def test_api_retries_default_and_typed(settings):
    assert getpaid_settings.typed.api_retries == 2
    set_retries(settings, 5)
    assert getpaid_settings.typed.api_retries == 5


# --- api_rules: the pure rules -----------------------------------------------------------


def test_idempotency_key_lookup_is_case_insensitive_on_plain_dicts():
    assert api_rules.idempotency_key({"getpaid-IDEMPOTENCY-key": "k-1234567890"}) == "k-1234567890"
    assert (
        api_rules.idempotency_key({b"Getpaid-Idempotency-Key": b"k-1234567890"}) == "k-1234567890"
    )
    assert api_rules.idempotency_key({"Other": "x"}) is None
    headers: dict[str, str] = {}
    key = api_rules.ensure_idempotency_key("post", headers)
    assert headers == {KEY: key}
    assert api_rules.ensure_idempotency_key("GET", {}) is None
    kept = {"GETPAID-IDEMPOTENCY-KEY": "mine-1234567"}
    assert api_rules.ensure_idempotency_key("POST", kept) == "mine-1234567" and len(kept) == 1


def test_retry_after_parsing():
    now = 1_700_000_000.0
    assert api_rules.retry_after_seconds("3", now) == 3.0
    assert api_rules.retry_after_seconds(" 0.5 ", now) == 0.5
    assert api_rules.retry_after_seconds(b"7", now) == 7.0
    assert api_rules.retry_after_seconds(formatdate(now + 90, usegmt=True), now) == 90.0
    assert api_rules.retry_after_seconds(formatdate(now - 90, usegmt=True), now) == 0.0
    assert api_rules.retry_after_seconds("9" * 20, now) == api_rules.MAX_WAIT
    for bad in (None, "", "-1", "soon", "1e3", "inf", "nan", "٣", "Mon, 99 Foo 2024"):
        assert api_rules.retry_after_seconds(bad, now) is None, bad


def test_backoff_delay_is_jittered_exponential_and_capped():
    assert api_rules.backoff_delay(0, 0.5, 8.0, 0.0) == 0.25
    assert api_rules.backoff_delay(0, 0.5, 8.0, 1.0) == 0.5
    assert api_rules.backoff_delay(2, 0.5, 8.0, 1.0) == 2.0
    assert api_rules.backoff_delay(10, 0.5, 8.0, 1.0) == 8.0
    assert api_rules.backoff_delay(10_000, 0.5, 8.0, 0.5) == 6.0


def test_retry_rules_table():
    def retried(method, *, has_key=False, **answer):
        return (
            api_rules.retry_delay(
                method,
                has_key=has_key,
                retry=0,
                retries=2,
                now=0.0,
                backoff=0.1,
                backoff_max=1.0,
                max_retry_after=5.0,
                jitter=0.5,
                **answer,
            )
            is not None
        )

    assert retried("GET", status=503) and retried("POST", has_key=True, status=500)
    assert not retried("GET", status=500) and not retried("PUT", status=503)
    assert retried("DELETE", has_key=True, status=504)
    assert not retried("GET", status=429, headers={"Retry-After": "6"})
    assert retried("GET", status=429, headers={"Retry-After": "5"})
    assert not retried("GET", status=200) and not retried("GET", status=404)
    assert retried("GET", exc=requests.ConnectionError()) and not retried("GET", exc=ValueError())
    assert (
        api_rules.retry_delay(
            "GET",
            has_key=False,
            retry=2,
            retries=2,
            status=503,
            now=0.0,
            backoff=0.1,
            backoff_max=1.0,
            max_retry_after=5.0,
            jitter=0.5,
        )
        is None
    )


def test_error_class_by_status():
    assert api_rules.error_class(599) is APIServerError
    assert api_rules.error_class(451) is GetpaidAPIError
    assert api_rules.build_error(status=302, headers={}, body=None, method="GET", url="/") is None


def test_problem_document_needs_problem_json():
    body = b'{"title": "T"}'
    assert api_rules.problem_document("application/problem+json; charset=utf-8", body) == {
        "title": "T"
    }
    assert api_rules.problem_document("Application/Problem+JSON", body) == {"title": "T"}
    assert api_rules.problem_document("application/json", body) is None
    assert api_rules.problem_document(None, body) is None
    utf16 = json.dumps({"title": "é"}).encode("utf-16")
    assert api_rules.problem_document("application/problem+json", utf16) == {"title": "é"}


# --- transport failures as requests really raises them (real sockets) ---------------------


def _serve_once(behaviour):
    """A one-connection server on localhost; ``behaviour(conn)`` decides the answer."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def run():
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)  # the whole request was sent
            behaviour(conn)
        server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.getsockname()[1]}/v2/payments", thread


def _close(conn):
    pass


def _reset_connection(conn):
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _cut_body(conn):
    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"id":')


def _cut_chunked_body(conn):
    conn.sendall(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"id\r\n')


@pytest.mark.parametrize("behaviour", [_close, _reset_connection, _cut_body, _cut_chunked_body])
def test_real_resets_after_the_request_was_sent_are_transport_failures(behaviour):
    url, thread = _serve_once(behaviour)
    with pytest.raises(requests.RequestException) as excinfo:
        requests.post(url, data=b"{}", timeout=5)
    thread.join(5)
    assert api_rules.is_transport_failure(excinfo.value), repr(excinfo.value)


def test_connection_refused_is_a_transport_failure():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(requests.ConnectionError) as excinfo:
        requests.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert api_rules.is_transport_failure(excinfo.value)
