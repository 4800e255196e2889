"""The fake getpaid's idempotency keys, payment creation and API faults, over real HTTP.

No Django needed. These pin down what the package's end-to-end tests rely on: the same
key with the same request replays the first answer (trace id included) and creates
nothing; a different request gets a 409 problem; ``commit_then_reset`` creates the
payment and drops the connection; every API error is problem+json with a trace id.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from django_getpaid_auth.testing import (
    API_FAULT_KINDS,
    FAULT_KINDS,
    LIVE_AUDIENCE,
    SANDBOX_AUDIENCE,
    FakeGetpaid,
)
from django_getpaid_auth.testing._idempotency import (
    Answer,
    IdempotencyConflict,
    IdempotencyStore,
    request_fingerprint,
)
from django_getpaid_auth.testing.api import PROBLEM_TYPE_BASE

PAYMENT = {
    "reference": "ORD-202510-0232",
    "amount": 10000,
    "currency": "EUR",
    "method": {"type": "card", "dynamic_descriptor": "TITAN*202510-0232"},
    "splits": {
        "type": "per_transaction",
        "accounts": [
            {
                "type": "seller",
                "id": "acc_4f5zanqzxfg9w9jj5e81bm6bc9",
                "split": {"type": "fixed", "amount": 9000},
            },
            {
                "type": "platform",
                "id": "acc_4q90qx2kdczs59yqfq34p09qx6",
                "split": {"type": "fixed", "amount": 1000},
                "processing_fee": {"percentage": 100},
            },
        ],
    },
    "standing_instruction": {"id": "sti_4tbftjwzxja1h71nzas1g0g1xm"},
}


@pytest.fixture
def fake() -> Iterator[FakeGetpaid]:
    with FakeGetpaid() as server:
        server.register_client("client-a", "secret-a")
        server.register_client("client-b", "secret-b")
        server.fault_timeout_sleep = 0.05
        yield server


def token(fake: FakeGetpaid, client_id: str = "client-a", scope: str = "") -> str:
    return fake.issue_token(client_id, LIVE_AUDIENCE, scope or "payments:read_write")


def key() -> str:
    return str(uuid.uuid4())


def create(
    fake: FakeGetpaid,
    body: Any = PAYMENT,
    *,
    idempotency_key: str | None = None,
    client_id: str = "client-a",
    environment: str = "live",
    bearer: str | None = None,
) -> requests.Response:
    headers = {"Authorization": f"Bearer {bearer or token(fake, client_id)}"}
    if environment == "sandbox" and bearer is None:
        sandbox = fake.issue_token(client_id, SANDBOX_AUDIENCE, "payments:read_write")
        headers["Authorization"] = f"Bearer {sandbox}"
    if idempotency_key is not None:
        headers["Getpaid-Idempotency-Key"] = idempotency_key
    url = fake.api_url(environment) + "/v2/payments"
    return requests.post(url, json=body, headers=headers, timeout=5)


def assert_problem(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert len(response.headers["Getpaid-Trace-Id"]) == 32
    problem = response.json()
    assert problem["status"] == status
    assert problem["type"].startswith(PROBLEM_TYPE_BASE + "#")
    assert problem["title"] and problem["detail"]
    return problem


# --------------------------------------------------------------------------- creating payments


def test_create_payment_answers_201_with_a_create_payment_response(fake: FakeGetpaid) -> None:
    response = create(fake, idempotency_key=key())
    assert response.status_code == 201, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert len(response.headers["Getpaid-Trace-Id"]) == 32
    payment = response.json()
    assert set(payment) == {
        "id",
        "status",
        "reference",
        "created_at",
        "updated_at",
        "statement_descriptor",
        "method",
        "splits",
        "totals",
    }
    assert payment["id"] == "pay_client-a_4"
    assert payment["status"] == "captured"
    assert payment["reference"] == "ORD-202510-0232"
    assert payment["statement_descriptor"] == "GPD*TITAN*202510-0232"
    assert payment["totals"]["captured"] == 10000
    assert [a["legal_name"] for a in payment["splits"]["accounts"]] == [
        "AutoZentrum Düsseldorf GmbH",
        "Titan Auto Parts GmbH",
    ]
    assert payment["splits"]["accounts"][0]["processing_fee"] == {"percentage": 0}
    stored = fake.payments("client-a")[-1]
    assert stored["id"] == payment["id"]
    assert (stored["amount"], stored["currency"]) == (10000, "EUR")
    got = requests.get(
        fake.api_url("live") + f"/v2/payments/{payment['id']}",
        headers={"Authorization": f"Bearer {token(fake)}"},
        timeout=5,
    )
    assert got.json()["reference"] == "ORD-202510-0232"


def test_create_payment_needs_the_read_write_scope(fake: FakeGetpaid) -> None:
    read_only = fake.issue_token("client-a", LIVE_AUDIENCE, "payments:read")
    response = create(fake, idempotency_key=key(), bearer=read_only)
    assert_problem(response, 403)
    assert len(fake.payments("client-a")) == 3


def test_create_payment_refuses_other_methods(fake: FakeGetpaid) -> None:
    response = requests.get(
        fake.api_url("live") + "/v2/payments",
        headers={"Authorization": f"Bearer {token(fake)}"},
        timeout=5,
    )
    assert_problem(response, 405)
    assert response.headers["Allow"] == "POST"


@pytest.mark.parametrize(
    ("change", "errors"),
    [
        ({"reference": None, "amount": None}, {"reference": ["required"], "amount": ["required"]}),
        ({"reference": ""}, {"reference": ["invalid_type"]}),
        ({"amount": "10"}, {"amount": ["invalid_type"]}),
        ({"amount": True}, {"amount": ["invalid_type"]}),
        ({"amount": 0}, {"amount": ["out_of_range"]}),
        ({"currency": "eur"}, {"currency": ["invalid_option"]}),
        ({"currency": None}, {"currency": ["required"]}),
        ({"splits": None}, {"splits": ["required"]}),
        ({"splits": {"accounts": []}}, {"splits": ["invalid_type"]}),
        ({"standing_instruction": None}, {"standing_instruction": ["required"]}),
        ({"standing_instruction": {}}, {"standing_instruction": ["invalid_type"]}),
        ({"method": "card"}, {"method": ["invalid_type"]}),
    ],
)
def test_invalid_create_payment_requests_are_422(
    fake: FakeGetpaid, change: dict[str, Any], errors: dict[str, list[str]]
) -> None:
    body = copy.deepcopy(PAYMENT)
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    problem = assert_problem(create(fake, body, idempotency_key=key()), 422)
    assert problem["errors"] == errors
    assert len(fake.payments("client-a")) == 3


@pytest.mark.parametrize("body", [[1, 2], "text"])
def test_create_payment_bodies_that_are_not_objects_are_400(fake: FakeGetpaid, body: Any) -> None:
    assert_problem(create(fake, body, idempotency_key=key()), 400)


# --------------------------------------------------------------------------- idempotency keys


def test_a_post_without_a_key_is_a_400_problem(fake: FakeGetpaid) -> None:
    problem = assert_problem(create(fake), 400)
    assert "Getpaid-Idempotency-Key" in problem["detail"]
    assert len(fake.payments("client-a")) == 3


def test_a_malformed_key_is_a_422_problem(fake: FakeGetpaid) -> None:
    problem = assert_problem(create(fake, idempotency_key="short"), 422)
    assert problem["errors"] == {"Getpaid-Idempotency-Key": ["invalid_format"]}


def test_the_same_key_and_body_replays_the_first_answer(fake: FakeGetpaid) -> None:
    the_key = key()
    first = create(fake, idempotency_key=the_key)
    # The same JSON, written differently, is the same request.
    reordered = dict(reversed(list(PAYMENT.items())))
    second = create(fake, reordered, idempotency_key=the_key)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["Getpaid-Trace-Id"] == first.headers["Getpaid-Trace-Id"]
    assert len(fake.payments("client-a")) == 4
    assert [r["replayed"] for r in fake.api_requests] == [False, True]
    assert [r["trace_id"] for r in fake.api_requests] == [first.headers["Getpaid-Trace-Id"]] * 2


def test_the_same_key_with_another_body_is_a_409_conflict(fake: FakeGetpaid) -> None:
    the_key = key()
    assert create(fake, idempotency_key=the_key).status_code == 201
    changed = {**PAYMENT, "amount": 20000}
    problem = assert_problem(create(fake, changed, idempotency_key=the_key), 409)
    assert problem["type"] == f"{PROBLEM_TYPE_BASE}#conflict"
    assert problem["title"] == "Conflict"
    assert "different request" in problem["detail"]
    assert problem["instance"] == "/live/v2/payments"
    assert len(fake.payments("client-a")) == 4


def test_keys_are_per_client_and_environment(fake: FakeGetpaid) -> None:
    the_key = key()
    assert create(fake, idempotency_key=the_key).status_code == 201
    assert create(fake, idempotency_key=the_key, client_id="client-b").status_code == 201
    assert create(fake, idempotency_key=the_key, environment="sandbox").status_code == 201
    assert len(fake.payments("client-a")) == 5
    assert len(fake.payments("client-b")) == 4


def test_an_error_is_not_remembered_so_a_retry_with_the_key_runs_again(fake: FakeGetpaid) -> None:
    the_key = key()
    invalid = {k: v for k, v in PAYMENT.items() if k != "amount"}
    assert create(fake, invalid, idempotency_key=the_key).status_code == 422
    assert create(fake, idempotency_key=the_key).status_code == 201
    fake.fail_next_api_requests("500")
    other = key()
    assert_problem(create(fake, idempotency_key=other), 500)
    assert create(fake, idempotency_key=other).status_code == 201
    assert len(fake.payments("client-a")) == 5


def test_queries_require_a_key_but_are_never_replayed(fake: FakeGetpaid) -> None:
    url = fake.api_url("live") + "/v2/payments/query"
    headers = {"Authorization": f"Bearer {token(fake)}", "Getpaid-Idempotency-Key": key()}
    first = requests.post(url, json={"first": 1}, headers=headers, timeout=5)
    second = requests.post(url, json={"first": 2}, headers=headers, timeout=5)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (len(first.json()["data"]), len(second.json()["data"])) == (1, 2)
    assert first.headers["Getpaid-Trace-Id"] != second.headers["Getpaid-Trace-Id"]
    del headers["Getpaid-Idempotency-Key"]
    assert_problem(requests.post(url, json={}, headers=headers, timeout=5), 400)


def test_idempotency_keys_lists_every_attempt_per_client(fake: FakeGetpaid) -> None:
    k1, k2, k3 = key(), key(), key()
    create(fake, idempotency_key=k1)
    create(fake, idempotency_key=k1)
    create(fake, idempotency_key=k2, client_id="client-b")
    fake.fail_next_api_requests("reset")
    with pytest.raises(requests.ConnectionError):
        create(fake, idempotency_key=k3)
    create(fake)  # no key: not listed
    requests.get(
        fake.api_url("live") + "/v2/ping", headers={"Getpaid-Idempotency-Key": "x"}, timeout=5
    )
    assert fake.idempotency_keys() == [k1, k1, k2, k3, "x"]
    assert fake.idempotency_keys("client-a") == [k1, k1, k3]
    assert fake.idempotency_keys("client-b") == [k2]
    fake.reset_counters()
    assert fake.idempotency_keys() == []


def test_a_key_still_running_is_a_conflict() -> None:
    store = IdempotencyStore()
    scope = ("live", "client-a", "key-0000001")
    fingerprint = request_fingerprint("POST", "/live/v2/payments", b"{}")
    assert store.begin(scope, fingerprint) is None
    with pytest.raises(IdempotencyConflict, match="still being processed"):
        store.begin(scope, fingerprint)
    answer = Answer(201, {"id": "p"}, "application/json", "t" * 32)
    store.finish(scope, answer)
    assert store.begin(scope, fingerprint) is answer
    store.clear()
    assert store.begin(scope, fingerprint) is None


def test_concurrent_requests_with_one_key_create_one_payment(fake: FakeGetpaid) -> None:
    the_key = key()
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def post() -> None:
        barrier.wait()
        statuses.append(create(fake, idempotency_key=the_key).status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(statuses) <= {201, 409}
    assert 201 in statuses
    assert len(fake.payments("client-a")) == 4


def test_fingerprints_compare_json_by_value_and_other_bodies_by_bytes() -> None:
    assert request_fingerprint("POST", "/p", b'{"a":1,"b":2}') == request_fingerprint(
        "POST", "/p", b'{ "b": 2, "a": 1 }'
    )
    assert request_fingerprint("POST", "/p", b"{}") != request_fingerprint("POST", "/q", b"{}")
    assert request_fingerprint("POST", "/p", b"a=1") != request_fingerprint("POST", "/p", b"a=2")


# --------------------------------------------------------------------------- API faults


def test_commit_then_reset_creates_the_payment_and_answers_nothing(fake: FakeGetpaid) -> None:
    the_key = key()
    fake.fail_next_api_requests("commit_then_reset")
    with pytest.raises(requests.ConnectionError):
        create(fake, idempotency_key=the_key)
    assert len(fake.payments("client-a")) == 4
    entry = fake.api_requests[-1]
    assert (entry["fault"], entry["status"], entry["committed_status"]) == (
        "commit_then_reset",
        None,
        201,
    )
    assert entry["client_id"] == "client-a"
    retry = create(fake, idempotency_key=the_key)
    assert retry.status_code == 201
    assert retry.json()["id"] == "pay_client-a_4"
    assert fake.api_requests[-1]["replayed"] is True
    assert len(fake.payments("client-a")) == 4
    assert fake.idempotency_keys("client-a") == [the_key, the_key]


def test_reset_before_answering_creates_nothing(fake: FakeGetpaid) -> None:
    fake.fail_next_api_requests("reset")
    with pytest.raises(requests.ConnectionError):
        create(fake, idempotency_key=key())
    assert len(fake.payments("client-a")) == 3
    assert fake.api_requests[-1]["fault"] == "reset"


@pytest.mark.parametrize(
    ("kind", "status"), [("500", 500), ("503", 503), ("429", 429), ("timeout", 500)]
)
def test_answered_api_faults_are_problems_with_a_trace_id(
    fake: FakeGetpaid, kind: str, status: int
) -> None:
    fake.fail_next_api_requests(kind)
    problem = assert_problem(create(fake, idempotency_key=key()), status)
    assert problem["instance"] == "/live/v2/payments"
    assert len(fake.payments("client-a")) == 3
    entry = fake.api_requests[-1]
    assert (entry["fault"], entry["status"]) == (kind, status)


def test_api_fault_retry_after_headers(fake: FakeGetpaid) -> None:
    fake.fail_next_api_requests("429")
    fake.fail_next_api_requests("429", retry_after=0)
    fake.fail_next_api_requests("503", retry_after=7)
    fake.fail_next_api_requests("503")
    answers = [create(fake, idempotency_key=key()) for _ in range(4)]
    assert [a.headers.get("Retry-After") for a in answers] == ["2", "0", "7", None]
    assert [a.status_code for a in answers] == [429, 429, 503, 503]


def test_a_502_html_fault_is_a_proxy_page_without_a_trace_id(fake: FakeGetpaid) -> None:
    fake.fail_next_api_requests("502_html")
    response = create(fake, idempotency_key=key())
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Getpaid-Trace-Id" not in response.headers
    assert fake.api_requests[-1]["trace_id"] is None


def test_api_faults_are_served_in_order_then_cleared(fake: FakeGetpaid) -> None:
    fake.fail_next_api_requests("503", count=2)
    fake.fail_next_api_requests("500")
    url = fake.api_url("live") + "/v2/ping"
    headers = {"Authorization": f"Bearer {token(fake)}"}
    assert [requests.get(url, headers=headers, timeout=5).status_code for _ in range(4)] == [
        503,
        503,
        500,
        200,
    ]
    fake.fail_next_api_requests("503")
    fake.fail_next_token_requests("503")
    fake.clear_faults()
    assert requests.get(url, headers=headers, timeout=5).status_code == 200


def test_api_faults_refuse_token_only_kinds_and_negative_counts(fake: FakeGetpaid) -> None:
    assert set(API_FAULT_KINDS) < set(FAULT_KINDS)
    for kind in set(FAULT_KINDS) - set(API_FAULT_KINDS):
        with pytest.raises(ValueError, match="unknown API fault kind"):
            fake.fail_next_api_requests(kind)
    with pytest.raises(ValueError, match="count"):
        fake.fail_next_api_requests("500", -1)


def test_faulted_requests_without_a_valid_token_log_no_client(fake: FakeGetpaid) -> None:
    fake.fail_next_api_requests("500", count=3)
    url = fake.api_url("live") + "/v2/ping"
    requests.get(url, timeout=5)
    requests.get(url, headers={"Authorization": "Bearer not-a-jwt"}, timeout=5)
    requests.get(url, headers={"Authorization": "Basic eDp5"}, timeout=5)
    assert [r["client_id"] for r in fake.api_requests] == [None, None, None]


def test_commit_then_reset_on_the_token_endpoint_issues_a_token(fake: FakeGetpaid) -> None:
    fake.fail_next_token_requests("commit_then_reset", count=2)
    body = {
        "client_id": "client-a",
        "client_secret": "secret-a",
        "audience": LIVE_AUDIENCE,
        "grant_type": "client_credentials",
    }
    with pytest.raises(requests.ConnectionError):
        requests.post(fake.token_url, json=body, timeout=5)
    with pytest.raises(requests.ConnectionError):
        requests.post(fake.token_url, json={**body, "client_secret": "wrong"}, timeout=5)
    assert [(r["fault"], r["status"], r["committed_status"]) for r in fake.token_requests] == [
        ("commit_then_reset", None, 200),
        ("commit_then_reset", None, 401),
    ]
    assert requests.post(fake.token_url, json=body, timeout=5).status_code == 200


# --------------------------------------------------------------------------- every error


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/live/v2/ping", {}, 401),
        ("GET", "/live/v2/nowhere", "token", 404),
        ("GET", "/nowhere", {}, 404),
        ("GET", "/live/v2/payments/pay_missing", "token", 404),
        ("DELETE", "/live/v2/payments/query", "token", 405),
        ("POST", "/live/v2/payments/query", "token", 400),
        ("GET", "/live/v2/payments/pay_client-a_1", "accounts", 403),
    ],
)
def test_every_api_error_is_problem_json_with_a_trace_id(
    fake: FakeGetpaid, method: str, path: str, headers: Any, status: int
) -> None:
    if headers == "token":
        headers = {"Authorization": f"Bearer {token(fake)}"}
    elif headers == "accounts":
        headers = {"Authorization": f"Bearer {token(fake, scope='accounts:read')}"}
    response = requests.request(method, fake.url + path, headers=headers, json={}, timeout=5)
    problem = assert_problem(response, status)
    assert problem["instance"] == path
    assert fake.api_requests[-1]["trace_id"] == response.headers["Getpaid-Trace-Id"]
