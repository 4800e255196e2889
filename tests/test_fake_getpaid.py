"""Tests of the fake getpaid server itself, over real loopback HTTP with ``requests``.

No Django needed: these pin down the behaviour the package's own tests rely on
(Auth0-shaped token errors, fault injection, RFC 7807 API errors, counters).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from django_getpaid_auth.testing import (
    KNOWN_SCOPES,
    LIVE_AUDIENCE,
    SANDBOX_AUDIENCE,
    FakeClient,
    FakeGetpaid,
    decode_jwt,
    make_jwt,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake() -> Iterator[FakeGetpaid]:
    with FakeGetpaid() as server:
        server.register_client("client-a", "secret-a")
        yield server


def token_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "client_id": "client-a",
        "client_secret": "secret-a",
        "audience": LIVE_AUDIENCE,
        "grant_type": "client_credentials",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def get_token(fake: FakeGetpaid, **overrides: Any) -> str:
    response = requests.post(fake.token_url, json=token_body(**overrides), timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def query_headers(token: str) -> dict[str, str]:
    return {**bearer(token), "Getpaid-Idempotency-Key": "5c255194-30ec-11ed-a261"}


# --------------------------------------------------------------------------- lifecycle


def test_urls_and_settings_fragment(fake: FakeGetpaid) -> None:
    assert fake.url.startswith("http://127.0.0.1:")
    assert fake.token_url == fake.url + "/oauth/token"
    assert fake.api_url("live") == fake.url + "/live"
    assert fake.api_url("sandbox") == fake.url + "/sandbox"
    assert fake.getpaid_auth_settings() == {
        "TOKEN_URL": fake.token_url,
        "ENVIRONMENTS": {
            "live": {"AUDIENCE": LIVE_AUDIENCE, "API_URL": fake.url + "/live"},
            "sandbox": {"AUDIENCE": SANDBOX_AUDIENCE, "API_URL": fake.url + "/sandbox"},
        },
    }
    with pytest.raises(ValueError):
        fake.api_url("staging")


def test_url_requires_running_server() -> None:
    with pytest.raises(RuntimeError):
        _ = FakeGetpaid().url


def test_stop_closes_listening_socket_promptly() -> None:
    server = FakeGetpaid().start()
    port = int(server.url.rsplit(":", 1)[1])
    server.register_client("c", "s")
    server.fault_timeout_sleep = 30
    server.fail_next_token_requests("timeout")
    errors: list[BaseException] = []

    def slow_request() -> None:
        try:
            requests.post(server.token_url, json={}, timeout=10)
        except requests.RequestException as exc:
            errors.append(exc)

    thread = threading.Thread(target=slow_request, daemon=True)
    thread.start()
    time.sleep(0.2)  # the handler is now sleeping inside the timeout fault
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_keep_alive_serves_several_requests_on_one_connection(fake: FakeGetpaid) -> None:
    host, port = fake.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        for _ in range(3):
            body = json.dumps(token_body())
            conn.request("POST", "/oauth/token", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            assert response.status == 200
            assert response.version == 11
            assert int(response.getheader("Content-Length")) == len(payload)
            assert not response.will_close
    finally:
        conn.close()
    assert fake.token_request_count() == 3


def test_concurrent_token_requests_are_served_in_parallel(fake: FakeGetpaid) -> None:
    fake.token_latency = 0.3
    results: list[int] = []
    lock = threading.Lock()

    def fetch() -> None:
        status = requests.post(fake.token_url, json=token_body(), timeout=10).status_code
        with lock:
            results.append(status)

    threads = [threading.Thread(target=fetch) for _ in range(20)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert results == [200] * 20
    assert elapsed < 3  # serial handling would take >= 6 s
    assert fake.token_request_count("client-a") == 20


# --------------------------------------------------------------------------- token endpoint


def test_token_success_client_secret_post_json(fake: FakeGetpaid) -> None:
    before = int(time.time())
    response = requests.post(fake.token_url, json=token_body(), timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    data = response.json()
    assert data["token_type"] == "Bearer"
    assert data["expires_in"] == 3600
    assert data["scope"] == " ".join(KNOWN_SCOPES)
    header, claims = decode_jwt(data["access_token"])
    assert header["alg"] == "HS256"
    assert header["typ"] == "JWT"
    assert header["kid"]
    assert claims["iss"] == fake.url + "/"
    assert claims["sub"] == "client-a@clients"
    assert claims["azp"] == "client-a"
    assert claims["aud"] == LIVE_AUDIENCE
    assert claims["gty"] == "client-credentials"
    assert claims["scope"] == data["scope"]
    assert before <= claims["iat"] <= time.time()
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["jti"]
    assert fake.verify_token(data["access_token"])["azp"] == "client-a"
    assert "." not in data["access_token"].split(".")[2]
    assert "=" not in data["access_token"]


def test_token_form_body_with_basic_auth_and_requested_scope(fake: FakeGetpaid) -> None:
    response = requests.post(
        fake.token_url,
        data={
            "grant_type": "client_credentials",
            "audience": SANDBOX_AUDIENCE,
            "scope": "payments:read accounts:read",
        },
        auth=("client-a", "secret-a"),
        timeout=5,
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["scope"] == "payments:read accounts:read"
    _, claims = decode_jwt(data["access_token"])
    assert claims["aud"] == SANDBOX_AUDIENCE
    assert claims["scope"] == "payments:read accounts:read"
    assert fake.token_requests[-1]["client_id"] == "client-a"


def test_basic_auth_with_wrong_secret_is_rejected(fake: FakeGetpaid) -> None:
    response = requests.post(
        fake.token_url,
        data={"grant_type": "client_credentials", "audience": LIVE_AUDIENCE},
        auth=("client-a", "nope"),
        timeout=5,
    )
    assert response.status_code == 401
    assert response.json() == {"error": "access_denied", "error_description": "Unauthorized"}


def test_every_token_is_unique(fake: FakeGetpaid) -> None:
    tokens = {get_token(fake) for _ in range(5)}
    assert len(tokens) == 5
    assert len({decode_jwt(t)[1]["jti"] for t in tokens}) == 5


@pytest.mark.parametrize(
    "overrides",
    [{"client_secret": "wrong"}, {"client_id": "nobody"}],
    ids=["wrong-secret", "unknown-client"],
)
def test_bad_credentials_give_auth0_401(fake: FakeGetpaid, overrides: dict[str, str]) -> None:
    response = requests.post(fake.token_url, json=token_body(**overrides), timeout=5)
    assert response.status_code == 401
    assert response.json() == {"error": "access_denied", "error_description": "Unauthorized"}


def test_grant_type_not_allowed_for_client(fake: FakeGetpaid) -> None:
    response = requests.post(fake.token_url, json=token_body(grant_type="password"), timeout=5)
    assert response.status_code == 403
    assert response.json() == {
        "error": "unauthorized_client",
        "error_description": "Grant type 'password' not allowed for the client.",
    }


def test_unsupported_grant_type(fake: FakeGetpaid) -> None:
    response = requests.post(fake.token_url, json=token_body(grant_type="magic"), timeout=5)
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_audience_unknown_or_not_allowed(fake: FakeGetpaid) -> None:
    fake.register_client("live-only", "s", audiences=(LIVE_AUDIENCE,))
    response = requests.post(
        fake.token_url,
        json=token_body(client_id="live-only", client_secret="s", audience=SANDBOX_AUDIENCE),
        timeout=5,
    )
    assert response.status_code == 403
    assert response.json() == {
        "error": "access_denied",
        "error_description": f"Service not enabled within domain: {SANDBOX_AUDIENCE}",
    }
    response = requests.post(
        fake.token_url, json=token_body(audience="https://evil.example"), timeout=5
    )
    assert response.status_code == 403
    assert response.json()["error_description"].endswith("https://evil.example")


def test_scope_not_granted(fake: FakeGetpaid) -> None:
    fake.register_client("reader", "s", scopes=("payments:read",))
    response = requests.post(
        fake.token_url,
        json=token_body(
            client_id="reader",
            client_secret="s",
            scope="payments:read payments:read_write invoices:read_write",
        ),
        timeout=5,
    )
    assert response.status_code == 403
    assert response.json() == {
        "error": "access_denied",
        "error_description": (
            "Client has not been granted scopes: payments:read_write invoices:read_write"
        ),
    }


@pytest.mark.parametrize("missing", ["grant_type", "client_id", "client_secret", "audience"])
def test_missing_fields_are_invalid_request(fake: FakeGetpaid, missing: str) -> None:
    response = requests.post(fake.token_url, json=token_body(**{missing: None}), timeout=5)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert missing in response.json()["error_description"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"{not json", "application/json"), (b"[1, 2]", "application/json"), (b"x", "text/plain")],
)
def test_bad_bodies_are_invalid_request(fake: FakeGetpaid, body: bytes, content_type: str) -> None:
    response = requests.post(
        fake.token_url, data=body, headers={"Content-Type": content_type}, timeout=5
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_non_post_is_405(fake: FakeGetpaid) -> None:
    response = requests.get(fake.token_url, timeout=5)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_token_lifetime_is_settable(fake: FakeGetpaid) -> None:
    fake.token_lifetime = 7
    response = requests.post(fake.token_url, json=token_body(), timeout=5)
    assert response.json()["expires_in"] == 7
    _, claims = decode_jwt(response.json()["access_token"])
    assert claims["exp"] - claims["iat"] == 7


def test_token_latency_delays_answers(fake: FakeGetpaid) -> None:
    fake.token_latency = 0.3
    started = time.monotonic()
    get_token(fake)
    assert time.monotonic() - started >= 0.3


def test_counters_and_log(fake: FakeGetpaid) -> None:
    fake.register_client("client-b", "secret-b")
    get_token(fake)
    get_token(fake, client_id="client-b", client_secret="secret-b", scope="payments:read")
    requests.post(fake.token_url, json=token_body(client_secret="bad"), timeout=5)
    assert fake.token_request_count() == 3
    assert fake.token_request_count("client-a") == 2
    assert fake.token_request_count("client-b") == 1
    assert fake.token_request_count("nobody") == 0
    assert [entry["status"] for entry in fake.token_requests] == [200, 200, 401]
    entry = fake.token_requests[1]
    assert entry["client_id"] == "client-b"
    assert entry["audience"] == LIVE_AUDIENCE
    assert entry["scope"] == "payments:read"
    assert isinstance(entry["time"], float)
    assert "secret" not in json.dumps(fake.token_requests)
    fake.reset_counters()
    assert fake.token_request_count() == 0
    assert fake.token_requests == []


# --------------------------------------------------------------------------- faults


def test_fault_500_and_order_then_recovery(fake: FakeGetpaid) -> None:
    fake.fail_next_token_requests("500", count=2)
    fake.fail_next_token_requests("503", retry_after=4)
    statuses = []
    for _ in range(4):
        response = requests.post(fake.token_url, json=token_body(), timeout=5)
        statuses.append(response.status_code)
        if response.status_code == 500:
            assert response.json()["error"] == "server_error"
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "4"
    assert statuses == [500, 500, 503, 200]
    assert fake.token_request_count("client-a") == 4


def test_faults_are_served_before_validation(fake: FakeGetpaid) -> None:
    fake.fail_next_token_requests("500")
    response = requests.post(fake.token_url, json=token_body(client_secret="bad"), timeout=5)
    assert response.status_code == 500


def test_fault_502_html(fake: FakeGetpaid) -> None:
    fake.fail_next_token_requests("502_html")
    response = requests.post(fake.token_url, json=token_body(), timeout=5)
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<h1>502 Bad Gateway</h1>" in response.text


def test_fault_429_rate_limit_headers(fake: FakeGetpaid) -> None:
    fake.fail_next_token_requests("429")
    response = requests.post(fake.token_url, json=token_body(), timeout=5)
    assert response.status_code == 429
    assert response.json() == {
        "error": "too_many_requests",
        "error_description": "Global limit has been reached",
    }
    assert response.headers["Retry-After"] == "2"
    assert int(response.headers["x-ratelimit-limit"]) > 0
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert abs(int(response.headers["x-ratelimit-reset"]) - (time.time() + 2)) < 3


def test_fault_429_custom_retry_after(fake: FakeGetpaid) -> None:
    fake.fail_next_token_requests("429", retry_after=9)
    response = requests.post(fake.token_url, json=token_body(), timeout=5)
    assert response.headers["Retry-After"] == "9"


def test_fault_quota_429(fake: FakeGetpaid) -> None:
    fake.fail_next_token_requests("quota_429")
    response = requests.post(fake.token_url, json=token_body(), timeout=5)
    assert response.status_code == 429
    assert response.headers["Auth0-Client-Quota-Limit"] == "b=per_hour;q=10;r=0;t=3540"
    assert response.json() == {"error": "too_many_requests", "error_description": "Quota exceeded"}


def test_fault_malformed_json(fake: FakeGetpaid) -> None:
    fake.fail_next_token_requests("malformed_json")
    response = requests.post(fake.token_url, json=token_body(), timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    with pytest.raises(ValueError):
        response.json()


def test_fault_missing_fields(fake: FakeGetpaid) -> None:
    fake.fail_next_token_requests("missing_fields")
    response = requests.post(fake.token_url, json=token_body(), timeout=5)
    assert response.status_code == 200
    assert "access_token" not in response.json()


def test_fault_negative_expires(fake: FakeGetpaid) -> None:
    fake.fail_next_token_requests("negative_expires")
    response = requests.post(fake.token_url, json=token_body(), timeout=5)
    assert response.status_code == 200
    assert response.json()["expires_in"] == -5
    token = response.json()["access_token"]
    api = requests.get(fake.api_url("live") + "/v2/ping", headers=bearer(token), timeout=5)
    assert api.status_code == 401


def test_fault_reset_gives_connection_error(fake: FakeGetpaid) -> None:
    fake.fail_next_token_requests("reset")
    with pytest.raises(requests.ConnectionError):
        requests.post(fake.token_url, json=token_body(), timeout=5)
    assert fake.token_request_count() == 1
    assert requests.post(fake.token_url, json=token_body(), timeout=5).status_code == 200


def test_fault_timeout_trips_client_read_timeout(fake: FakeGetpaid) -> None:
    fake.fault_timeout_sleep = 3
    fake.fail_next_token_requests("timeout")
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        requests.post(fake.token_url, json=token_body(), timeout=(2, 0.3))
    assert time.monotonic() - started < 2


def test_fault_timeout_eventually_answers_500(fake: FakeGetpaid) -> None:
    fake.fault_timeout_sleep = 0.2
    fake.fail_next_token_requests("timeout")
    started = time.monotonic()
    response = requests.post(fake.token_url, json=token_body(), timeout=5)
    assert response.status_code == 500
    assert time.monotonic() - started >= 0.2


def test_unknown_fault_kind_is_rejected(fake: FakeGetpaid) -> None:
    with pytest.raises(ValueError):
        fake.fail_next_token_requests("418")


# --------------------------------------------------------------------------- API


def test_get_payment_returns_spec_shaped_payment(fake: FakeGetpaid) -> None:
    token = get_token(fake)
    response = requests.get(
        fake.api_url("live") + "/v2/payments/pay_client-a_1", headers=bearer(token), timeout=5
    )
    assert response.status_code == 200
    assert len(response.headers["Getpaid-Trace-Id"]) == 32
    payment = response.json()
    assert payment["id"] == "pay_client-a_1"
    for field in (
        "status",
        "reference",
        "created_at",
        "updated_at",
        "amount",
        "currency",
        "origin",
        "method",
        "splits",
        "refunds",
        "totals",
        "events",
    ):
        assert field in payment, field
    assert isinstance(payment["amount"], int)
    assert len(payment["currency"]) == 3
    assert len(payment["created_at"]) == 24 and payment["created_at"].endswith("Z")


def test_demo_payments_are_deterministic() -> None:
    with FakeGetpaid() as one, FakeGetpaid() as two:
        one.register_client("same", "x")
        two.register_client("same", "y")
        assert one.payments("same") == two.payments("same")
        assert [p["id"] for p in one.payments("same")] == [
            "pay_same_1",
            "pay_same_2",
            "pay_same_3",
        ]


def test_trace_ids_are_unique(fake: FakeGetpaid) -> None:
    token = get_token(fake)
    ids = {
        requests.get(fake.api_url("live") + "/v2/ping", headers=bearer(token), timeout=5).headers[
            "Getpaid-Trace-Id"
        ]
        for _ in range(3)
    }
    assert len(ids) == 3


def test_payment_of_another_client_is_404(fake: FakeGetpaid) -> None:
    fake.register_client("client-b", "secret-b")
    token = get_token(fake)
    for payment_id in ("pay_client-b_1", "pay_nope"):
        response = requests.get(
            fake.api_url("live") + f"/v2/payments/{payment_id}", headers=bearer(token), timeout=5
        )
        assert response.status_code == 404
        assert response.headers["Content-Type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == 404
        assert problem["type"].startswith("https://docs.getpaid.io/ref/error-types#")
        assert problem["title"] == "Not Found"
        assert problem["instance"] == f"/live/v2/payments/{payment_id}"
        assert "Getpaid-Trace-Id" in response.headers


def test_unknown_path_is_404(fake: FakeGetpaid) -> None:
    token = get_token(fake)
    for path in ("/live/v2/nothing", "/elsewhere"):
        response = requests.get(fake.url + path, headers=bearer(token), timeout=5)
        assert response.status_code == 404
        assert response.json()["status"] == 404


def test_ping_variants(fake: FakeGetpaid) -> None:
    live = get_token(fake, scope="accounts:read")
    sandbox = get_token(fake, audience=SANDBOX_AUDIENCE)
    for url, token in (
        (fake.api_url("live") + "/v2/ping", live),
        (fake.api_url("live") + "/", live),
        (fake.api_url("sandbox") + "/v2/ping", sandbox),
        (fake.url + "/v2/ping", sandbox),
        (fake.url + "/v2/ping", live),
    ):
        response = requests.get(url, headers=bearer(token), timeout=5)
        assert response.status_code == 200, url
        assert response.json() == {"status": "ok"}


def _assert_401(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert "Getpaid-Trace-Id" in response.headers
    problem = response.json()
    assert set(problem) >= {"type", "title", "status", "detail", "instance"}
    assert problem["status"] == 401
    return problem


def test_api_rejects_missing_and_malformed_tokens(fake: FakeGetpaid) -> None:
    url = fake.api_url("live") + "/v2/ping"
    _assert_401(requests.get(url, timeout=5))
    _assert_401(requests.get(url, headers={"Authorization": "Basic abc"}, timeout=5))
    _assert_401(requests.get(url, headers=bearer("not-a-jwt"), timeout=5))
    _assert_401(requests.get(url, headers=bearer("a.b.c"), timeout=5))


def test_api_rejects_bad_signature(fake: FakeGetpaid) -> None:
    _, claims = decode_jwt(get_token(fake))
    forged = make_jwt(claims, b"some other key")
    unsigned = make_jwt(claims, alg="none")
    url = fake.api_url("live") + "/v2/ping"
    _assert_401(requests.get(url, headers=bearer(forged), timeout=5))
    _assert_401(requests.get(url, headers=bearer(unsigned), timeout=5))


def test_api_rejects_expired_token(fake: FakeGetpaid) -> None:
    fake.token_lifetime = 2
    token = get_token(fake)
    url = fake.api_url("live") + "/v2/ping"
    assert requests.get(url, headers=bearer(token), timeout=5).status_code == 200
    _, claims = decode_jwt(token)
    time.sleep(max(0.0, claims["exp"] - time.time()) + 0.05)
    assert "expired" in _assert_401(requests.get(url, headers=bearer(token), timeout=5))["detail"]


def test_api_rejects_wrong_audience(fake: FakeGetpaid) -> None:
    sandbox_token = get_token(fake, audience=SANDBOX_AUDIENCE)
    _assert_401(
        requests.get(fake.api_url("live") + "/v2/ping", headers=bearer(sandbox_token), timeout=5)
    )


def test_revoke_tokens_only_affects_existing_tokens(fake: FakeGetpaid) -> None:
    old = get_token(fake)
    url = fake.api_url("live") + "/v2/payments/pay_client-a_1"
    assert requests.get(url, headers=bearer(old), timeout=5).status_code == 200
    fake.revoke_tokens()
    _assert_401(requests.get(url, headers=bearer(old), timeout=5))
    new = get_token(fake)
    assert requests.get(url, headers=bearer(new), timeout=5).status_code == 200


def test_insufficient_scope_is_403(fake: FakeGetpaid) -> None:
    token = get_token(fake, scope="accounts:read")
    response = requests.get(
        fake.api_url("live") + "/v2/payments/pay_client-a_1", headers=bearer(token), timeout=5
    )
    assert response.status_code == 403
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 403
    read_write = get_token(fake, scope="payments:read_write")
    response = requests.get(
        fake.api_url("live") + "/v2/payments/pay_client-a_1", headers=bearer(read_write), timeout=5
    )
    assert response.status_code == 200


def test_query_requires_idempotency_key(fake: FakeGetpaid) -> None:
    token = get_token(fake)
    response = requests.post(
        fake.api_url("live") + "/v2/payments/query",
        json={"type": "payments"},
        headers=bearer(token),
        timeout=5,
    )
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "Getpaid-Idempotency-Key" in response.json()["detail"]


def test_query_payments_pages_and_filters(fake: FakeGetpaid) -> None:
    token = get_token(fake)
    url = fake.api_url("live") + "/v2/payments/query"
    response = requests.post(
        url, json={"type": "payments"}, headers=query_headers(token), timeout=5
    )
    assert response.status_code == 200
    page = response.json()
    assert page["type"] == "payments"
    assert [p["id"] for p in page["data"]] == ["pay_client-a_3", "pay_client-a_2", "pay_client-a_1"]
    assert "cursor" not in page
    item = page["data"][0]
    assert set(item) >= {
        "id",
        "reference",
        "status",
        "amount",
        "currency",
        "created_at",
        "updated_at",
        "method",
        "seller",
        "parties",
    }

    first = requests.post(url, json={"first": 2}, headers=query_headers(token), timeout=5).json()
    assert len(first["data"]) == 2
    second = requests.post(
        url, json={"first": 2, "after": first["cursor"]}, headers=query_headers(token), timeout=5
    ).json()
    assert [p["id"] for p in second["data"]] == ["pay_client-a_1"]
    assert "cursor" not in second

    captured = requests.post(
        url,
        json={
            "filters": {"statuses": ["captured"]},
            "sorts": [{"field": "amount", "direction": "ascending"}],
        },
        headers=query_headers(token),
        timeout=5,
    ).json()
    assert [p["status"] for p in captured["data"]] == ["captured"]


def test_add_payment_is_visible_through_the_api(fake: FakeGetpaid) -> None:
    stored = fake.add_payment("client-a", {"amount": 12345, "status": "failed"})
    assert stored["id"] == "pay_client-a_4"
    assert stored["amount"] == 12345
    token = get_token(fake)
    response = requests.get(
        fake.api_url("live") + f"/v2/payments/{stored['id']}", headers=bearer(token), timeout=5
    )
    assert response.json()["status"] == "failed"
    query = requests.post(
        fake.api_url("live") + "/v2/payments/query",
        json={"filters": {"statuses": ["failed"]}},
        headers=query_headers(token),
        timeout=5,
    ).json()
    assert [p["id"] for p in query["data"]] == ["pay_client-a_4"]
    with pytest.raises(KeyError):
        fake.add_payment("nobody", {})


def test_api_request_count_per_client(fake: FakeGetpaid) -> None:
    fake.register_client("client-b", "secret-b")
    token_a = get_token(fake)
    token_b = get_token(fake, client_id="client-b", client_secret="secret-b")
    url = fake.api_url("live") + "/v2/ping"
    requests.get(url, headers=bearer(token_a), timeout=5)
    requests.get(url, headers=bearer(token_a), timeout=5)
    requests.get(url, headers=bearer(token_b), timeout=5)
    requests.get(url, timeout=5)
    assert fake.api_request_count() == 4
    assert fake.api_request_count("client-a") == 2
    assert fake.api_request_count("client-b") == 1
    assert [r["status"] for r in fake.api_requests] == [200, 200, 200, 401]
    fake.reset_counters()
    assert fake.api_request_count() == 0


def test_api_latency(fake: FakeGetpaid) -> None:
    token = get_token(fake)
    fake.api_latency = 0.3
    started = time.monotonic()
    requests.get(fake.api_url("live") + "/v2/ping", headers=bearer(token), timeout=5)
    assert time.monotonic() - started >= 0.3


def test_register_client_returns_fake_client(fake: FakeGetpaid) -> None:
    client = fake.register_client(
        "x", "y", scopes="payments:read", grant_types=["client_credentials"]
    )
    assert client == FakeClient(
        "x",
        "y",
        scopes=("payments:read",),
        audiences=(LIVE_AUDIENCE, SANDBOX_AUDIENCE),
        grant_types=("client_credentials",),
    )


# --------------------------------------------------------------------------- packaging helpers


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
    )


def test_testing_package_imports_without_responses_or_django_settings() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["responses"] = None  # make `import responses` fail
        import django_getpaid_auth.testing as t
        assert t.FakeGetpaid and t.FakeClient and t.make_jwt
        loaded = [name for name, module in sys.modules.items() if module is not None]
        assert "responses" not in loaded
        helper = t.mock_token_endpoint  # importable; needs `responses` only when called
        try:
            helper(object(), token_url="http://127.0.0.1:9/oauth/token")
        except ImportError:
            print("lazy-ok")
        """
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "lazy-ok"


def test_pytest_plugin_fixtures(tmp_path: Path) -> None:
    test_file = tmp_path / "test_plugin_usage.py"
    test_file.write_text(
        textwrap.dedent(
            """
            import types
            import pytest
            import requests

            @pytest.fixture
            def settings():  # stand-in for pytest-django's fixture
                return types.SimpleNamespace(
                    GETPAID_AUTH={"CACHE": "x", "ENVIRONMENTS": {"live": {"CLIENT_ID": "c"}}}
                )

            def test_fixture(fake_getpaid):
                assert requests.get(fake_getpaid.token_url, timeout=5).status_code == 405

            def test_settings(fake_getpaid_settings, settings):
                conf = settings.GETPAID_AUTH
                assert conf["CACHE"] == "x"
                assert conf["TOKEN_URL"] == fake_getpaid_settings.token_url
                assert conf["ENVIRONMENTS"]["live"]["CLIENT_ID"] == "c"
                assert conf["ENVIRONMENTS"]["live"]["API_URL"].endswith("/live")
                assert conf["ENVIRONMENTS"]["sandbox"]["AUDIENCE"].endswith("sandbox.getpaid.io")
            """
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:django",
            "-p",
            "django_getpaid_auth.testing.pytest_plugin",
            "-c",
            "/dev/null",
            "--rootdir",
            str(tmp_path),
            str(test_file),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO_ROOT),
            # the installed package's pytest11 entry point would register the plugin a
            # second time next to -p; load it only explicitly
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


# --------------------------------------------------------------------------- responses helper


def test_mock_token_endpoint_returns_fresh_tokens() -> None:
    responses = pytest.importorskip("responses")
    from django_getpaid_auth.testing import mock_token_endpoint

    url = "https://auth.example.test/oauth/token"
    with responses.RequestsMock() as rsps:
        mocked = mock_token_endpoint(rsps, token_url=url, expires_in=120, scope="payments:read")
        first = requests.post(
            url, json={"client_id": "cid", "audience": SANDBOX_AUDIENCE}, timeout=5
        )
        second = requests.post(url, data={"client_id": "cid"}, timeout=5)
        assert mocked.call_count == 2
    one, two = first.json(), second.json()
    assert one["access_token"] != two["access_token"]
    assert one["expires_in"] == 120
    assert one["token_type"] == "Bearer"
    _, claims = decode_jwt(one["access_token"])
    assert claims["aud"] == SANDBOX_AUDIENCE
    assert claims["azp"] == "cid"
    assert abs(claims["exp"] - (time.time() + 120)) < 5


def test_mock_token_endpoint_errors_and_fixed_bodies() -> None:
    responses = pytest.importorskip("responses")
    from django_getpaid_auth.testing import mock_token_endpoint

    url = "https://auth.example.test/oauth/token"
    with responses.RequestsMock() as rsps:
        mock_token_endpoint(rsps, token_url=url, status=401)
        response = requests.post(url, json={}, timeout=5)
        assert response.status_code == 401
        assert response.json()["error"] == "access_denied"
    with responses.RequestsMock() as rsps:
        mock_token_endpoint(rsps, token_url=url, access_token="fixed")
        assert requests.post(url, json={}, timeout=5).json()["access_token"] == "fixed"
    with responses.RequestsMock() as rsps:
        mock_token_endpoint(rsps, token_url=url, json_body={"weird": True}, status=200)
        assert requests.post(url, json={}, timeout=5).json() == {"weird": True}
